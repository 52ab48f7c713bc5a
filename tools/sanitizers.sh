#!/usr/bin/env bash
# The unsafe-heavy suites under sanitizers, on the nightly toolchain (no rust-src, so the
# standard library itself is not instrumented):
#
# - AddressSanitizer with LeakSanitizer: the files, simd, winograd and runtime crates' tests
#   and the C ABI's unit tests,
#   once per kernel set this CPU runs (REPVGG_ISA; the kernel-level tests cover every
#   set in each run, the network-level ones follow the variable). Doctests are left out:
#   rustdoc does not link them with the sanitizer runtime;
# - ThreadSanitizer: the fork-join team's tests and the concurrency stress test.
#   Uninstrumented std makes TSan report races inside the test harness and in Arc's
#   drop that are not there; tools/tsan.supp suppresses exactly those, and the stress
#   test joins its threads explicitly so that TSan sees the join.
#
# Usage: tools/sanitizers.sh          (about 6 minutes on 2 cores, most of it building)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
unset RUSTFLAGS
# Release builds carry no debug info, but a sanitizer report needs its inlined frames named:
# the TSan suppressions match frames of std's test harness that are inlined. These builds
# have target directories of their own, so the main build is untouched.
export CARGO_PROFILE_RELEASE_DEBUG=1

echo "== AddressSanitizer"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for isa in $(tools/isas.sh); do
  if ! REPVGG_ISA=$isa RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan ASAN_OPTIONS=detect_leaks=1 \
    cargo +nightly test --release --target "$target" --lib --tests -p repvgg-files -p repvgg-simd -p repvgg-winograd -p repvgg-runtime \
    >"$log" 2>&1; then
    tail -60 "$log"
    echo "AddressSanitizer: the suites failed with REPVGG_ISA=$isa"
    exit 1
  fi
  echo "REPVGG_ISA=$isa: $(grep -c '^test result: ok' "$log") test binaries passed, no reports"
done
# The C ABI's own tests (its C example links the uninstrumented way, so it stays out).
if ! RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan ASAN_OPTIONS=detect_leaks=1 \
  cargo +nightly test --release --target "$target" --lib -p repvgg-capi >"$log" 2>&1; then
  tail -60 "$log"
  echo "AddressSanitizer: the C ABI's tests failed"
  exit 1
fi
echo "C ABI: $(grep -c '^test result: ok' "$log") test binary passed, no reports"

echo "== ThreadSanitizer"
export TSAN_OPTIONS="suppressions=$PWD/tools/tsan.supp halt_on_error=1"
tsan() {
  RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer" CARGO_TARGET_DIR=target/tsan \
    cargo +nightly test --release --target "$target" -q -p repvgg-runtime "$@"
}
tsan --lib team
tsan --test stress
echo "sanitizers: no reports"
