// The official OpenAI Node SDK, unchanged, across the image API: models, generate, edit with
// a mask, a streamed generation read to its end, and one left after its first partial.
// Environment: GATEWAY_URL, GATEWAY_KEY, PRICE, SOURCE_PATH, MASK_PATH.
import fs from "node:fs";
import OpenAI from "openai";

const base = process.env.GATEWAY_URL;
const key = process.env.GATEWAY_KEY;
const price = Number(process.env.PRICE);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });

function check(name, condition) {
  if (!condition) {
    console.log(`FAIL ${name}`);
    process.exit(1);
  }
  console.log(`ok ${name}`);
}

async function settledBalance() {
  for (let i = 0; i < 100; i++) {
    const answer = await fetch(`${base}/api/v1/balance`, { headers: { authorization: `Bearer ${key}` } });
    const body = await answer.json();
    if (body.held === 0) return body.available;
    await new Promise((r) => setTimeout(r, 50));
  }
  return null;
}

const start = await settledBalance();

const models = await client.models.list();
check("models.list names gpt-image-2", models.data.some((m) => m.id === "gpt-image-2"));

const generated = await client.images.generate({ model: "gpt-image-2", prompt: "a lighthouse", size: "48x32" });
check("generate: PNG bytes", Buffer.from(generated.data[0].b64_json, "base64").subarray(1, 4).toString() === "PNG");

const edited = await client.images.edit({
  model: "gpt-image-2",
  prompt: "fill the left half",
  image: fs.createReadStream(process.env.SOURCE_PATH),
  mask: fs.createReadStream(process.env.MASK_PATH),
});
check("edit with mask: one image", edited.data.length === 1);
check("two images charged so far", (await settledBalance()) === start - 2 * price);

const stream = await client.images.generate({
  model: "gpt-image-2",
  prompt: "p",
  size: "32x32",
  stream: true,
  partial_images: 2,
});
const kinds = [];
for await (const event of stream) kinds.push(event.type);
check(
  "stream: two partials then completed",
  JSON.stringify(kinds) ===
    JSON.stringify(["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]),
);
check("a full stream is charged one image", (await settledBalance()) === start - 3 * price);

const left = await client.images.generate({
  model: "gpt-image-2",
  prompt: "p",
  n: 2,
  size: "32x32",
  stream: true,
  partial_images: 2,
});
for await (const event of left) {
  check("leaving: the first event is a partial", event.type === "image_generation.partial_image");
  break;
}
// A partial image is work done: the job runs to its end and both images are charged.
check("a client that left after one partial is charged for the job", (await settledBalance()) === start - 5 * price);

console.log("all checks passed");
