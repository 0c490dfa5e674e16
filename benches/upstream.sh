#!/usr/bin/env bash
# The binary in front of an upstream, against the upstream alone: the README's upstream rows.
#
# Starts `mock_upstream` (an OpenAI-compatible API that does no image work), loads it with wrk
# directly, then the release binary on its durable defaults (SQLite ledger and records, local
# files fsynced, a data dir on disk) forwarding to it, and loads that the same way: the
# SDK-shaped multipart edit with a small and a 5 MB PNG. Each row prints req/s, p50, p99,
# the server's CPU per request and its peak RSS, then that CPU by thread (the runtime's
# workers and each store's writer). A last row holds 64 edits of 5 MB sources
# open against a slow mock and prints how far the binary's RSS grew while they waited.
#
# Usage: [GATEWAY_BIN=path] [COMPARE=path] [ROUNDS=n] [BENCH_DIR=dir] [CONNECTIONS=n]
#        bash benches/upstream.sh [seconds per run] [all|small|waiting]
# (installs wrk with apt-get if missing; `small` runs the small-edit rows alone, `waiting`
# the RSS row alone; CONNECTIONS, default 16, sets the small and 5 MB rows' wrk connections).
# COMPARE names a second build (an earlier commit's): each gateway row then alternates the two, ROUNDS times.
#
# Compare builds in one invocation, never across invocations: a run right after an earlier
# invocation deleted its files pays for the deletion (`benches/volume.sh`). So the small
# rows' data dirs, 20,000 files each, are deleted only on exit, and the script waits out a
# deletion an earlier bench recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rows=${2:-all}
connections=${CONNECTIONS:-16}
if ! command -v wrk >/dev/null; then
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --bin image-gateway --example mock_upstream >/dev/null 2>&1
# GATEWAY_BIN runs another build than this tree's; COMPARE names a second to alternate with.
gateway_bin=${GATEWAY_BIN:-target/release/image-gateway}
builds=("$gateway_bin")
if [[ -n ${COMPARE:-} ]]; then builds+=("$COMPARE"); fi
rounds=${ROUNDS:-1}
# BENCH_DIR puts the data dirs elsewhere (a tmpfs shows what the fsyncs cost).
base=${BENCH_DIR:-$PWD/target}
source benches/volume.sh
quiet_volume "$base"
work=$(mktemp -d "$base/upstream-bench.XXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  deleted_files "$base" "$work"
}
trap cleanup EXIT

# Bodies as the OpenAI Python SDK sends an edit: `image` as a file part, then the fields.
python3 - "$work" <<'EOF'
import os, struct, sys, zlib
def png(width, height, pixels):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + pixels[y * width * 3:(y + 1) * width * 3] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")
def body(image):
    b = b"sdk-boundary-7d1f0c"
    parts = [b"--" + b + b'\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\nContent-Type: image/png\r\n\r\n' + image + b"\r\n"]
    for name, value in [("prompt", "make the sky purple"), ("model", "gpt-image-2"), ("n", "1"), ("size", "1024x1024")]:
        parts.append(b"--" + b + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + b"--" + b + b"--\r\n"
small = png(4, 4, bytes(range(48)))
side = 1290  # 1290 x 1290 RGB, stored: about 5 MB
large = png(side, side, os.urandom(side * side * 3))
open(sys.argv[1] + "/small.body", "wb").write(body(small))
open(sys.argv[1] + "/large.body", "wb").write(body(large))
EOF

cat >"$work/post.lua" <<'EOF'
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=sdk-boundary-7d1f0c"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
done = function(summary, latency, requests)
  local failed = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("requests=%d rps=%.0f p50=%.2fms p99=%.2fms failed=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, failed))
end
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks by thread name (`file-writer`, `sqlite-ledger-w`, `tokio-rt-worker`, ...).
thread_ticks() {
  for task in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$task/comm")" "$(awk '{print $14 + $15}' "$task/stat")"
  done | awk '{ticks[$1] += $2} END {for (name in ticks) print name, ticks[name]}' | sort
}
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# One wrk run of `body` at `url` with `connections`; prints the summary with the server's CPU.
load() {
  local name=$1 pid=$2 url=$3 body=$4 connections=$5
  local before after line requests threads_before
  before=$(cpu_ticks "$pid")
  threads_before=$(thread_ticks "$pid")
  line=$(BODY="$work/$body.body" KEY=${KEY:-none} wrk -t"$((connections < 2 ? 1 : 2))" -c"$connections" -d"${seconds}s" \
    -s "$work/post.lua" "$url" | tail -n 1)
  after=$(cpu_ticks "$pid")
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  local ticks=$((after - before)) hz
  hz=$(getconf CLK_TCK)
  awk -v n="$name" -v l="$line" -v t="$ticks" -v r="$requests" -v hz="$hz" -v hwm="$(kib "$pid" VmHWM)" \
    'BEGIN {printf "%-34s %s cpu/req=%.0fus peak_rss=%.0fMB\n", n, l, (r > 0 ? t / hz / r * 1e6 : 0), hwm / 1024}'
  # Where that CPU went, by thread: the runtime and each store's writer.
  join <(echo "$threads_before") <(thread_ticks "$pid") | awk -v r="$requests" -v hz="$hz" \
    '$3 > $2 && r > 0 {printf "    %s=%.0fus", $1, ($3 - $2) / hz / r * 1e6} END {print ""}'
}

start_mock() {
  target/release/examples/mock_upstream --addr 127.0.0.1:9181 --delay-ms "$1" >/dev/null &
  mock=$!
  pids+=("$mock")
  wait_port 9181
}

# Each run gets a data dir of its own (`$1`), served by the build `$2` (default the first).
start_gateway() {
  # What an earlier run left to write back would otherwise be flushed by this run's syncs.
  sync
  mkdir -p "$work/$1"
  GATEWAY_ADDR=127.0.0.1:9182 GATEWAY_DATA_DIR="$work/$1" \
    GATEWAY_UPSTREAM_URL=http://127.0.0.1:9181 GATEWAY_API_KEYS=bench:pk_live_upstream_bench \
    GATEWAY_PRICE_PER_IMAGE=1 GATEWAY_DEMO_BALANCE=1000000000 GATEWAY_QUOTA_BYTES=1000000000000 \
    GATEWAY_QUOTA_FILES=100000000 RUST_LOG=warn "${2:-$gateway_bin}" >"$work/gateway.log" 2>&1 &
  gateway=$!
  pids+=("$gateway")
  wait_port 9182
}

stop() {
  kill "$1"
  wait "$1" 2>/dev/null || true
}

edits=/v1/images/edits
if [[ $rows == all || $rows == small ]]; then
start_mock 0
load "mock alone, small edit" "$mock" "http://127.0.0.1:9181$edits" small "$connections"
if [[ $rows == all ]]; then
  load "mock alone, 5 MB edit" "$mock" "http://127.0.0.1:9181$edits" large "$connections"
fi
# One gateway row of `body` (`small` or `large`) for each build in turn, `rounds` times;
# with two builds, each row names its build.
gateway_rows() {
  local body=$1 what=$2 round i label
  for round in $(seq "$rounds"); do
    for i in "${!builds[@]}"; do
      label=""
      if ((${#builds[@]} > 1)); then label=" [${builds[$i]}]"; fi
      start_gateway "$body-$round-$i" "${builds[$i]}"
      KEY=pk_live_upstream_bench load "gateway -> mock, $what$label" "$gateway" "http://127.0.0.1:9182$edits" "$body" "$connections"
      stop "$gateway"
      # The large rows' few hundred files: deleting them now costs the next runs little and
      # keeps several GB off the disk. The small rows' 20,000 wait for the exit.
      if [[ $body == large ]]; then rm -rf "${work:?}/$body-$round-$i"; fi
    done
  done
}
gateway_rows small "small edit"
if [[ $rows == all ]]; then gateway_rows large "5 MB edit"; fi
stop "$mock"
fi
if [[ $rows == small ]]; then exit 0; fi

# 64 edits of 5 MB sources waiting on a model that takes 20 s: the binary's RSS at rest, its
# peak while the 320 MB of bodies arrive, and what it holds while the 64 wait (the lowest
# sample of the last 4 s, all bodies sent by then).
start_mock 20000
start_gateway waiting
rest=$(kib "$gateway" VmRSS)
BODY="$work/large.body" KEY=pk_live_upstream_bench wrk -t2 -c64 -d14s --timeout 60s \
  -s "$work/post.lua" "http://127.0.0.1:9182$edits" >/dev/null &
pids+=("$!")
samples=()
for _ in $(seq 24); do
  sleep 0.5
  samples+=("$(kib "$gateway" VmRSS)")
done
waiting=$(printf '%s\n' "${samples[@]: -8}" | sort -n | head -n 1)
peak=$(printf '%s\n' "${samples[@]}" | sort -n | tail -n 1)
awk -v r="$rest" -v p="$peak" -v w="$waiting" -v n="64 waiting 5 MB edits, RSS" \
  'BEGIN {printf "%-34s rest=%.0fMB peak=%.0fMB waiting=%.0fMB growth_waiting=%.0fMB\n", n, r / 1024, p / 1024, w / 1024, (w - r) / 1024}'
