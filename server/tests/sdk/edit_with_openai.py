"""The official OpenAI Python SDK against a running gateway, unchanged.

Environment: GATEWAY_URL (http://host:port), GATEWAY_KEY, PNG_PATH, JPEG_PATH, TEXT_PATH.
Prints one line per check and exits non-zero on the first failure.
"""
import base64
import os
import sys

import openai

base_url = os.environ["GATEWAY_URL"] + "/v1"
key = os.environ["GATEWAY_KEY"]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def check(name, condition):
    if not condition:
        print(f"FAIL {name}")
        sys.exit(1)
    print(f"ok {name}")


# One image, sent by the SDK as the multipart field `image`.
with open(os.environ["PNG_PATH"], "rb") as f:
    result = client.images.edit(
        model="gpt-image-2", image=f, prompt="make it blue", n=2, size="32x24"
    )
check("single image: two results", len(result.data) == 2)
first = base64.b64decode(result.data[0].b64_json)
check("single image: PNG bytes", first.startswith(b"\x89PNG\r\n\x1a\n"))
ids = result.model_dump().get("picklyone_generation_ids")
check("single image: generation ids", isinstance(ids, list) and len(ids) == 2)

# A list of images, sent as repeated `image[]` parts.
with open(os.environ["PNG_PATH"], "rb") as a, open(os.environ["JPEG_PATH"], "rb") as b:
    result = client.images.edit(
        model="gpt-image-2", image=[a, b], prompt="blend them", output_format="jpeg"
    )
check("image list: one result", len(result.data) == 1)
check("image list: JPEG bytes", base64.b64decode(result.data[0].b64_json)[:3] == b"\xff\xd8\xff")

# A wrong key raises AuthenticationError.
stranger = openai.OpenAI(base_url=base_url, api_key="pk_live_not_a_real_key", max_retries=0)
try:
    with open(os.environ["PNG_PATH"], "rb") as f:
        stranger.images.edit(model="gpt-image-2", image=f, prompt="p")
    check("wrong key raises AuthenticationError", False)
except openai.AuthenticationError as e:
    check("wrong key raises AuthenticationError", e.status_code == 401 and e.code == "invalid_api_key")

# No key at all (the header removed) raises AuthenticationError too.
def drop_authorization(request):
    request.headers.pop("Authorization", None)


anonymous = openai.OpenAI(
    base_url=base_url, api_key="unused", max_retries=0,
    http_client=openai.DefaultHttpxClient(event_hooks={"request": [drop_authorization]}),
)
try:
    with open(os.environ["PNG_PATH"], "rb") as f:
        anonymous.images.edit(model="gpt-image-2", image=f, prompt="p")
    check("missing key raises AuthenticationError", False)
except openai.AuthenticationError as e:
    check("missing key raises AuthenticationError", e.status_code == 401)

# A text file named .png raises BadRequestError with the spec's code.
try:
    with open(os.environ["TEXT_PATH"], "rb") as f:
        client.images.edit(model="gpt-image-2", image=("photo.png", f, "image/png"), prompt="p")
    check("text file raises BadRequestError", False)
except openai.BadRequestError as e:
    check("text file raises BadRequestError", e.code == "IMAGE_TYPE_UNSUPPORTED")

# An unknown model raises NotFoundError.
try:
    with open(os.environ["PNG_PATH"], "rb") as f:
        client.images.edit(model="no-such-model", image=f, prompt="p")
    check("unknown model raises NotFoundError", False)
except openai.NotFoundError as e:
    check("unknown model raises NotFoundError", e.code == "model_not_found")

print("all checks passed")
