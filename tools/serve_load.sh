#!/usr/bin/env bash
# Starts `repvgg serve` on free ports with the given flags (default: synthetic A0), runs
# the load generator against it (crates/serve/examples/loadgen.rs; LOADGEN_ARGS, default
# HTTP binary and gRPC at concurrency 1, 2, 4, 8, 16, 32), prints its table, then stops the
# server with SIGTERM and checks that it drained and exited 0.
#
#   tools/serve_load.sh                                  # defaults
#   tools/serve_load.sh --streams 2 --max-batch 4        # other server knobs
#   LOADGEN_ARGS="--protocols http --rate 100" tools/serve_load.sh --max-queue 8
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --bin repvgg && cargo build -q --release -p repvgg-serve --example loadgen
[ $# -gt 0 ] || set -- --synthetic
log=$(mktemp)
trap 'rm -f "$log"' EXIT
target/release/repvgg serve "$@" --http-port 0 --grpc-port 0 --log-level info 2>"$log" &
server=$!
for _ in $(seq 600); do
    grep -q '"msg":"listening"' "$log" && break
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
listening=$(grep -m1 '"msg":"listening"' "$log")
field() { sed -E "s/.*\"$1\":\"?([^\",}]*).*/\1/" <<<"$listening"; }
echo "server: $(field streams) streams x $(field threads_per_stream) threads, max batch $(field max_batch), \
max queue delay $(field max_queue_delay_us) us, max queue $(field max_queue_images) images" >&2
# shellcheck disable=SC2086
target/release/examples/loadgen --http "$(field http)" --grpc "$(field grpc)" --model "$(field model)" \
    ${LOADGEN_ARGS:---protocols http,grpc --concurrency 1,2,4,8,16,32 --seconds 10}
kill -TERM $server
wait $server || { echo "serve exited with status $?" >&2; exit 1; }
grep -q '"msg":"stopped"' "$log" || { echo "serve did not report a drained stop" >&2; exit 1; }
