"""The spec's "Python Example (full two-step flow)", as written, against a running gateway.

Only API_KEY, BASE and the file paths come from the environment.
"""
import os

import requests, base64
API_KEY = os.environ["GATEWAY_KEY"]
BASE = os.environ["GATEWAY_URL"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# Step 1: upload source image
with open(os.environ["ANCHOR_PATH"], "rb") as f:
    up = requests.post(
        f"{BASE}/api/v1/upload",
        headers=HEADERS,
        files={"files": f},
    ).json()
image_key = up["uploaded"][0]["key"]
# Step 2: call edits
resp = requests.post(
    f"{BASE}/v1/images/edits",
    headers={**HEADERS, "Content-Type": "application/json"},
    json={
        "model": "gpt-image-2",
        "prompt": "replace background with a city skyline at sunset",
        "image_key": image_key,
        "n": 1,
        "size": "1024x1024",
    },
).json()
# Save the edited image
image_data = base64.b64decode(resp["data"][0]["b64_json"])
with open(os.environ["EDITED_PATH"], "wb") as f:
    f.write(image_data)
print(image_key)
