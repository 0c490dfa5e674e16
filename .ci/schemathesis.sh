#!/usr/bin/env bash
# Runs a bounded schemathesis pass against the gateway binary, from its own openapi.json:
# no 5xx, every answer conforms to the schema, its status and its content type.
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/venv.sh
venv=$(ci_venv schemathesis "schemathesis>=4,<5")

work=$(mktemp -d)
key=pk_live_schemathesis_0123456789
source .ci/gateway.sh
cleanup() { ci_gateway_stop; rm -rf "$work"; }
trap cleanup EXIT
ci_gateway "$work/gateway.log" GATEWAY_DATA_DIR="$work/data" GATEWAY_API_KEYS="demo:$key" \
  GATEWAY_DEMO_BALANCE=1000000 GATEWAY_PRICE_PER_IMAGE=1 RUST_LOG=warn
addr=$gateway_addr

"$venv/bin/schemathesis" run "http://$addr/openapi.json" \
  --url "http://$addr" \
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
