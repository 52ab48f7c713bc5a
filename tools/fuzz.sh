#!/usr/bin/env bash
# Runs the four cargo-fuzz targets (weights, pth, input, image) for SECONDS each (default 60)
# under AddressSanitizer (cargo-fuzz's default, on the nightly toolchain), starting from
# the committed seeds in fuzz/seeds/ and a scratch corpus, and fails if any finds a crash
# or a sanitizer report (the reproducer lands in fuzz/artifacts/<target>/). The forward
# passes run the best kernel set this CPU has (REPVGG_ISA chooses another).
#
# Install cargo-fuzz with `cargo install cargo-fuzz --locked`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
unset RUSTFLAGS
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build -O
for target in weights pth input image; do
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s (AddressSanitizer)"
  cargo +nightly fuzz run -O "$target" "$scratch/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added|==|ERROR|SUMMARY)|panicked" || true
  # libFuzzer exits non-zero on a crash; the pipe above hides that, the artifact does not.
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz $target found a crash: $(ls artifacts/$target)"
    exit 1
  fi
done
