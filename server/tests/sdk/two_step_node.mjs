// The spec's "Node.js Example", as written, against a running gateway.
// Only API_KEY, BASE and the file paths come from the environment.
import fs from "fs";
const API_KEY = process.env.GATEWAY_KEY;
const BASE = process.env.GATEWAY_URL;
// Step 1: upload
const form = new FormData();
form.append("files", new Blob([fs.readFileSync(process.env.ANCHOR_PATH)], { type: "image/jpeg" }), "anchor.jpg");
const up = await fetch(`${BASE}/api/v1/upload`, {
  method: "POST",
  headers: { Authorization: `Bearer ${API_KEY}` },
  body: form,
}).then(r => r.json());
const imageKey = up.uploaded[0].key;
// Step 2: edits
const res = await fetch(`${BASE}/v1/images/edits`, {
  method: "POST",
  headers: {
    Authorization: `Bearer ${API_KEY}`,
    "Content-Type": "application/json",
  },
  body: JSON.stringify({
    model: "gpt-image-2",
    prompt: "change background to city skyline at sunset",
    image_key: imageKey,
    n: 1,
  }),
}).then(r => r.json());
fs.writeFileSync(process.env.EDITED_PATH, Buffer.from(res.data[0].b64_json, "base64"));
console.log(imageKey);
