#!/usr/bin/env bash
# Runs the unsafe-heavy test suites under valgrind memcheck (invalid reads/writes, use of
# uninitialised memory, leaks): uninitialised reads are what AddressSanitizer
# (tools/sanitizers.sh) does not see. Valgrind does not decode AVX-512 (and hides it from
# CPUID, so the kernel-level tests, which cover every set the CPU reports, skip it); the
# suites run with REPVGG_ISA set to each other kernel set this CPU runs.
#
# Usage: tools/valgrind.sh            (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
# package, test target (lib for unit tests), optional name filter
suites=(
  "repvgg-simd lib"
  "repvgg-winograd twins"
  "repvgg-winograd layer"
  "repvgg-runtime lib --skip cpu::"   # valgrind does not emulate flush-to-zero (MXCSR FTZ/DAZ)
  "repvgg-runtime golden"
  "repvgg-runtime hostile"
  "repvgg-runtime weights"
  "repvgg-runtime fast odd_widths"
  "repvgg-runtime fast squeeze_excitation"
)
for suite in "${suites[@]}"; do
  read -r package target filter <<<"$suite"
  if [ "$target" = lib ]; then selector=(--lib); else selector=(--test "$target"); fi
  bin=$(cargo test --release -p "$package" "${selector[@]}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
  for isa in $(tools/isas.sh 2>/dev/null | grep -v avx512); do
  echo "== valgrind $package $target ${filter:-} (REPVGG_ISA=$isa)"
  # shellcheck disable=SC2086
  REPVGG_ISA=$isa PROPTEST_CASES=40 valgrind --quiet --error-exitcode=99 --leak-check=full --show-possibly-lost=no \
    --errors-for-leak-kinds=definite "$bin" ${filter:-} --test-threads=1 -q
  done
done
echo "valgrind: no errors"
