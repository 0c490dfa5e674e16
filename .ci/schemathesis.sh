#!/usr/bin/env bash
# Runs a bounded schemathesis pass against the gateway binary, from its own openapi.json:
# no 5xx, every answer conforms to the schema, its status and its content type.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/schema-venv
if [ ! -f "$venv/.ready" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis>=4,<5"
  touch "$venv/.ready"
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=pk_live_schemathesis_0123456789
GATEWAY_ADDR="127.0.0.1:$port" GATEWAY_DATA_DIR="$work/data" GATEWAY_API_KEYS="demo:$key" \
  GATEWAY_DEMO_BALANCE=1000000 GATEWAY_PRICE_PER_IMAGE=1 RUST_LOG=warn \
  cargo run --release >"$work/gateway.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/openapi.json" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
  sleep 0.2
done

"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $key" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples 40 \
  --suppress-health-check=filter_too_much \
  --seed 143439148444636614950233629971138452921
if grep -qi panic "$work/gateway.log"; then
  cat "$work/gateway.log"
  echo "the gateway panicked under schemathesis"
  exit 1
fi
echo "schemathesis: no 5xx, every answer matches openapi.yaml"
