#!/usr/bin/env bash
# Runs the three cargo-fuzz targets (weights, input, image) for SECONDS each (default 60),
# starting from the committed seeds in fuzz/seeds/ and a scratch corpus, and fails if any
# finds a crash (the reproducer lands in fuzz/artifacts/<target>/).
#
# Stable toolchain: cargo-fuzz runs libFuzzer with coverage but without a sanitizer
# (`-s none`; AddressSanitizer needs nightly). Install with `cargo install cargo-fuzz --locked`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
export RUSTFLAGS="-C target-cpu=native"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo fuzz build -s none -O
for target in weights input image; do
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s"
  cargo fuzz run -s none -O "$target" "$scratch/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added|==|ERROR|SUMMARY)|panicked" || true
  # libFuzzer exits non-zero on a crash; the pipe above hides that, the artifact does not.
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz $target found a crash: $(ls artifacts/$target)"
    exit 1
  fi
done
