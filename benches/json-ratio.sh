#!/usr/bin/env bash
# The gateway's JSON-by-key throughput as a share of bare hyper's: three alternating runs of
# each (the machine's speed drifts, so neither side gets all the quiet moments), medians.
# Usage: bash benches/json-ratio.sh [seconds per run] [pairs]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
pairs=${2:-3}
cargo build --release --example loadgen >/dev/null 2>&1
loadgen=target/release/examples/loadgen
out=$(mktemp)
for _ in $(seq "$pairs"); do
  for target in gateway bare; do
    "$loadgen" --target "$target" --mix json --concurrency 32 --duration "$seconds" | tr '\n' ' ' | tee -a "$out"
    echo | tee -a "$out"
  done
done
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
gateway=$(grep '^target=gateway ' "$out" | grep -o 'rps=[0-9]*' | cut -d= -f2 | median)
bare=$(grep '^target=bare ' "$out" | grep -o 'rps=[0-9]*' | cut -d= -f2 | median)
rm -f "$out"
awk -v g="$gateway" -v b="$bare" 'BEGIN {printf "median req/s: gateway %d, bare %d -> %.1f%%\n", g, b, 100 * g / b}'
