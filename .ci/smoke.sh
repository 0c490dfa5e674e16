#!/usr/bin/env bash
# Starts `cargo run --release` exactly as the README says, then runs the
# spec's multipart curl example against it and checks that an edited image comes back.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
log="$work/gateway.log"

cargo build --release
source .ci/gateway.sh
cleanup() { ci_gateway_stop; rm -rf "$work"; }
trap cleanup EXIT
ci_gateway "$log" GATEWAY_DATA_DIR="$work/data"
addr=$gateway_addr
key=$(grep -o 'pk_live_[A-Za-z0-9]*' "$log" | head -n1)
[ -n "$key" ] || { cat "$log"; echo "no demo key printed"; exit 1; }

# A real PNG to edit.
"${IMAGE_GATEWAY_PYTHON:-python3}" - "$work/anchor.png" <<'PY'
import struct, sys, zlib
w, h = 64, 48
rows = b"".join(b"\0" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 90)) for x in range(w)) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY

# The spec's "Method 2" curl example, unchanged but for host and key.
curl -sS "http://$addr/v1/images/edits" \
  -H "Authorization: Bearer $key" \
  -F "image=@$work/anchor.png" \
  -F "model=gpt-image-2" \
  -F "prompt=change background to city skyline at sunset" \
  -F "n=1" >"$work/answer.json"

jq -e '.data | length == 1' "$work/answer.json" >/dev/null
jq -e '.picklyone_generation_ids | length == 1' "$work/answer.json" >/dev/null
jq -r '.data[0].b64_json' "$work/answer.json" | base64 -d >"$work/edited.png"
head -c 8 "$work/edited.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a'

# Without a key: the spec's 401.
status=$(curl -s -o "$work/err.json" -w '%{http_code}' "http://$addr/v1/images/edits" \
  -F "image=@$work/anchor.png" -F "model=gpt-image-2" -F "prompt=p")
[ "$status" = 401 ] && jq -e '.error.code == "invalid_api_key"' "$work/err.json" >/dev/null

echo "smoke: the gateway binary served the spec's curl example"

# The spec's two-step cURL example (upload, then edit by key) against the same server.
GATEWAY_URL="http://$addr" GATEWAY_KEY="$key" ANCHOR_PATH="$work/anchor.png" \
  EDITED_PATH="$work/edited2.png" bash server/tests/sdk/two_step_curl.sh >"$work/key.txt"
grep -q '^files/demo/' "$work/key.txt"
head -c 8 "$work/edited2.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a'
[ -f "$work/data/$(cat "$work/key.txt")" ]
echo "smoke: upload + edit by key worked; the upload is in GATEWAY_DATA_DIR"

# The README's generation and streamed examples against the same server.
curl -sS "http://$addr/v1/images/generations" -H "Authorization: Bearer $key" \
  -H "Content-Type: application/json" \
  -d '{"model":"gpt-image-2","prompt":"a lighthouse at dusk","aspect_ratio":"16:9"}' >"$work/generated.json"
jq -e '.picklyone_generation_ids | length == 1' "$work/generated.json" >/dev/null
generation=$(jq -r '.picklyone_generation_ids[0]' "$work/generated.json")
curl -sSN "http://$addr/v1/images/edits" -H "Authorization: Bearer $key" \
  -F "image=@$work/anchor.png" -F "model=gpt-image-2" -F "prompt=a red door" \
  -F "stream=true" -F "partial_images=2" >"$work/stream.txt"
[ "$(grep -c '^event: image_edit.partial_image' "$work/stream.txt")" = 2 ]
grep -q '^event: image_edit.completed' "$work/stream.txt"
curl -sS "http://$addr/v1/models" -H "Authorization: Bearer $key" \
  | jq -e '.data[0].id == "gpt-image-2"' >/dev/null
echo "smoke: a generation ($generation), a streamed edit and the model list"
