#!/usr/bin/env bash
# The spec's "cURL Example", as written, against a running gateway.
# Only the host, the key and the file paths come from the environment.
set -euo pipefail
# Step 1: upload source image
UPLOAD=$(curl -sX POST "$GATEWAY_URL/api/v1/upload" \
-H "Authorization: Bearer $GATEWAY_KEY" \
-F "files=@$ANCHOR_PATH")
IMAGE_KEY=$(echo "$UPLOAD" | jq -r '.uploaded[0].key')
# Step 2: call edits
curl -s "$GATEWAY_URL/v1/images/edits" \
-H "Authorization: Bearer $GATEWAY_KEY" \
-H "Content-Type: application/json" \
-d "{
\"model\": \"gpt-image-2\",
\"prompt\": \"change background to city skyline at sunset\",
\"image_key\": \"$IMAGE_KEY\",
\"n\": 1
}" | jq -r '.data[0].b64_json' | base64 -d > "$EDITED_PATH"
echo "$IMAGE_KEY"
