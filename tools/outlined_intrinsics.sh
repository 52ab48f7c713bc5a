#!/usr/bin/env bash
# Fails if a SIMD intrinsic survives as a function of its own in a release binary.
#
# Intrinsics are target-feature functions: code compiled without the feature (a trait
# method, a closure inside `array::from_fn`) cannot inline them, so they stay calls that
# pass every vector through memory. The kernels are written so that each is inlined into
# a function compiled with its features; an outlined one is a silent slowdown (one cost
# A0 FP32 7-17% before this check existed). `_xgetbv` is the CPU-feature probe's, run
# once per process.
#
# Usage: tools/outlined_intrinsics.sh [BINARY]   (default target/release/repvgg)
set -euo pipefail
binary=${1:-target/release/repvgg}
[ -x "$binary" ] || { echo "no binary at $binary (build it with cargo build --release)"; exit 2; }
outlined=$(nm -C --defined-only "$binary" | grep 'core::core_arch::' | grep -v '::_xgetbv$' || true)
if [ -n "$outlined" ]; then
  echo "intrinsics compiled as functions of their own in $binary (called through memory):"
  echo "$outlined"
  exit 1
fi
echo "no outlined intrinsics in $binary"
