"""The official OpenAI Python SDK, unchanged, across the image API: models, generate, edit
with a mask, a streamed edit read to its end, and one left after its first partial image.

Environment: GATEWAY_URL, GATEWAY_KEY, PRICE (per image), SOURCE_PATH, MASK_PATH, OUT_DIR.
Prints one line per check and exits non-zero on the first failure.
"""
import base64
import json
import os
import sys
import time
import urllib.request

import openai

base = os.environ["GATEWAY_URL"]
key = os.environ["GATEWAY_KEY"]
price = int(os.environ["PRICE"])
out_dir = os.environ["OUT_DIR"]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def check(name, condition):
    if not condition:
        print(f"FAIL {name}")
        sys.exit(1)
    print(f"ok {name}")


def balance():
    request = urllib.request.Request(base + "/api/v1/balance", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as answer:
        body = json.load(answer)
    return body["available"], body["held"]


def settled_balance():
    """The balance once no hold is open (a job its client left ends shortly after)."""
    for _ in range(100):
        available, held = balance()
        if held == 0:
            return available
        time.sleep(0.05)
    return None


start = settled_balance()

models = client.models.list()
check("models.list names gpt-image-2", "gpt-image-2" in [m.id for m in models.data])

result = client.images.generate(model="gpt-image-2", prompt="a lighthouse at dusk", n=2, size="48x32")
check("generate: two images", len(result.data) == 2)
check("generate: PNG bytes", base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG"))
ids = result.model_dump().get("picklyone_generation_ids")
check("generate: generation ids", isinstance(ids, list) and len(ids) == 2)

with open(os.environ["SOURCE_PATH"], "rb") as image, open(os.environ["MASK_PATH"], "rb") as mask:
    result = client.images.edit(model="gpt-image-2", image=image, mask=mask, prompt="fill the left half")
with open(os.path.join(out_dir, "masked.png"), "wb") as f:
    f.write(base64.b64decode(result.data[0].b64_json))
check("edit with mask: one image", len(result.data) == 1)
check("three images charged so far", settled_balance() == start - 3 * price)

with open(os.environ["SOURCE_PATH"], "rb") as image:
    stream = client.images.edit(
        model="gpt-image-2", image=image, prompt="p", stream=True, partial_images=2
    )
    kinds = [event.type for event in stream]
check(
    "stream: two partials then completed",
    kinds == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"],
)
check("a full stream is charged one image", settled_balance() == start - 4 * price)

with open(os.environ["SOURCE_PATH"], "rb") as image:
    stream = client.images.edit(
        model="gpt-image-2", image=image, prompt="p", n=2, stream=True, partial_images=2
    )
    for event in stream:
        check("leaving: the first event is a partial", event.type == "image_edit.partial_image")
        break
    stream.close()
# A partial image is work done: the job runs to its end and both images are charged.
check("a client that left after one partial is charged for the job", settled_balance() == start - 6 * price)

print("all checks passed")
