#!/usr/bin/env bash
# Prints the kernel sets this CPU runs, best first, one per line, as the runtime itself
# detects them (`repvgg-simd`'s example `isas`); the sets it lacks go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
exec env -u RUSTFLAGS cargo run -q --release -p repvgg-simd --example isas
