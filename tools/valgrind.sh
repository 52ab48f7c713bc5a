#!/usr/bin/env bash
# Runs the unsafe-heavy test suites under valgrind memcheck (invalid reads/writes, use of
# uninitialised memory, leaks) -- the stable-toolchain stand-in for AddressSanitizer,
# which needs a nightly compiler this project's machines do not have.
#
# Valgrind does not decode AVX-512, so this builds a separate copy for x86-64-v3 (AVX2 +
# FMA): `wide` then runs its 8-lane paths and the microkernel its portable form, with
# the same pointer arithmetic and slice bounds as the AVX-512 build.
#
# Usage: tools/valgrind.sh            (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-C target-cpu=x86-64-v3"
export CARGO_TARGET_DIR=target/valgrind
# package, test target, optional name filter
suites=(
  "repvgg-winograd twins"
  "repvgg-winograd layer"
  "repvgg-runtime golden"
  "repvgg-runtime hostile"
  "repvgg-runtime weights"
  "repvgg-runtime fast odd_widths"
  "repvgg-runtime fast squeeze_excitation"
)
for suite in "${suites[@]}"; do
  read -r package target filter <<<"$suite"
  bin=$(cargo test --release -p "$package" --test "$target" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
  echo "== valgrind $package $target ${filter:-}"
  # shellcheck disable=SC2086
  PROPTEST_CASES=40 valgrind --quiet --error-exitcode=99 --leak-check=full --show-possibly-lost=no \
    --errors-for-leak-kinds=definite "$bin" ${filter:-} --test-threads=1 -q
done
echo "valgrind: no errors"
