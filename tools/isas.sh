#!/usr/bin/env bash
# Prints the kernel sets (`--isa` / REPVGG_ISA values) this x86-64 Linux CPU runs, best
# first, one per line: what the suites are run under in CI. Sets the CPU lacks cannot be
# run here at all (no emulator in reach executes AVX-512), and are named on stderr.
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f && has avx2 && has fma; then echo avx512; else echo "isas: this CPU lacks avx512f: the avx512 kernels are compiled and linted, not run" >&2; fi
if has avx2 && has fma; then echo avx2; else echo "isas: this CPU lacks avx2/fma: the avx2 kernels are not run" >&2; fi
echo portable
