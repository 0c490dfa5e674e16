#!/usr/bin/env bash
# Two replicas on one PostgreSQL: the README's replicas row.
#
# Starts two release binaries on one fresh schema of the test database (ledger, generation
# and idempotency records and keys in PostgreSQL; files local to each replica), one key with
# a balance, a price of 1 per image, and loads each replica with its own load harness at
# once: JSON edits by key. Prints each harness's line, the two replicas' CPU per edit, and
# checks that the account was charged exactly the edits answered.
#
# Usage: [GATEWAY_BIN=path] [DATABASE_URL=url] bash benches/replicas.sh [seconds] [clients each]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-6}
clients=${2:-16}
base=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
cargo build --release --bin image-gateway --example loadgen >/dev/null 2>&1
# GATEWAY_BIN runs another build of the binary (an earlier commit's, for a before/after).
gateway_bin=${GATEWAY_BIN:-target/release/image-gateway}
source benches/volume.sh
quiet_volume "$PWD/target"
work=$(mktemp -d "$PWD/target/replicas-bench.XXXX")
schema="bench_$(basename "$work" | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$base" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  deleted_files "$PWD/target" "$work"
}
trap cleanup EXIT
psql "$base" -qc "CREATE SCHEMA $schema" >/dev/null
url="$base?options=-csearch_path%3D$schema"
key="sk-replicas-bench-$(date +%s%N)"

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for port in 9191 9192; do
  mkdir -p "$work/$port"
  GATEWAY_ADDR=127.0.0.1:$port GATEWAY_DATA_DIR="$work/$port" GATEWAY_DATABASE_URL="$url" \
    GATEWAY_API_KEYS="alice:$key" GATEWAY_PRICE_PER_IMAGE=1 GATEWAY_DEMO_BALANCE=100000000 \
    RUST_LOG=warn "$gateway_bin" >"$work/$port.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
done

before=($(cpu_ticks "${pids[0]}") $(cpu_ticks "${pids[1]}"))
loads=()
for port in 9191 9192; do
  target/release/examples/loadgen --addr "127.0.0.1:$port" --key "$key" --mix json \
    --concurrency "$clients" --duration "$seconds" >"$work/$port.load" &
  loads+=($!)
done
wait "${loads[@]}"
after=($(cpu_ticks "${pids[0]}") $(cpu_ticks "${pids[1]}"))
cat "$work/9191.load" "$work/9192.load"

answered=$(cat "$work"/*.load | sed -n 's/.* ok=\([0-9]*\) .*/\1/p' | awk '{n += $1} END {print n}')
ticks=$(( after[0] - before[0] + after[1] - before[1] ))
awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$answered" \
  'BEGIN {printf "replicas CPU per edit: %.1f us\n", t * 1e6 / hz / n}'
charged=$(psql "$url" -Atc "SELECT charged FROM accounts WHERE account = 'alice'")
echo "edits answered: $answered; charged: $charged"
# Each harness uploads its source first (uploads are free), then edits: every answered edit
# is one image at a price of 1.
if [ "$charged" != "$answered" ]; then
  echo "the account was charged $charged for $answered edits" >&2
  exit 1
fi
