# Sourced by the CI scripts: `ci_gateway LOG [NAME=value...]` runs the README's
# `cargo run --release` on 127.0.0.1:0 (the binary binds a free port and prints it) with the
# settings given, its output in LOG. It sets `gateway_pid`, and `gateway_addr` (the
# host:port printed) once the binary answers `/healthz`; it fails with the log otherwise.
ci_gateway() {
  local log=$1
  shift
  env GATEWAY_ADDR=127.0.0.1:0 "$@" cargo run --release >"$log" 2>&1 &
  gateway_pid=$!
  gateway_addr=
  for _ in $(seq 1 300); do
    gateway_addr=$(sed -n 's|^image-gateway listening on http://||p' "$log" | head -n1)
    [ -n "$gateway_addr" ] && curl -sf "http://$gateway_addr/healthz" >/dev/null && return 0
    kill -0 "$gateway_pid" 2>/dev/null || break
    sleep 0.2
  done
  cat "$log"
  echo "the gateway did not start"
  return 1
}

# Stops the gateway `ci_gateway` started, if it did.
ci_gateway_stop() {
  if [ -n "${gateway_pid:-}" ]; then
    kill "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
}
