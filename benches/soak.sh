#!/usr/bin/env bash
# Memory of the gateway binary under repeated bursts of 16 simultaneous 25 MB multipart
# edits: one line per round with the server's peak (VmHWM) and current (VmRSS) memory.
# Usage: bash benches/soak.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
key=pk_live_soak_0123456789abcdef0123
addr=127.0.0.1:18484
cargo build --release --bin image-gateway --example loadgen >/dev/null 2>&1
data=$(mktemp -d)
GATEWAY_ADDR=$addr GATEWAY_DATA_DIR=$data GATEWAY_API_KEYS=load:$key RUST_LOG=warn \
  target/release/image-gateway >"$data.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
sleep 1
end=$((SECONDS + seconds))
round=0
while [ $SECONDS -lt $end ]; do
  round=$((round + 1))
  target/release/examples/loadgen --addr $addr --key $key --mix multipart-25m \
    --concurrency 16 --requests 16 --duration 60 --server-pid $server | tr '\n' ' '
  echo "round=$round t=$SECONDS"
  # Each round's uploads are stored; clear them so the disk does not fill.
  rm -rf "$data/files"
done
