// The official OpenAI Node SDK, as its README shows: `image: fs.createReadStream(path)`.
// The SDK streams the file, so the closing multipart delimiter and the chunked terminator
// reach the server in separate writes; the whole answer must arrive all the same.
import fs from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.GATEWAY_URL}/v1`, apiKey: process.env.GATEWAY_KEY, maxRetries: 0 });
for (let round = 0; round < 3; round++) {
  const answer = await client.images.edit({
    model: "gpt-image-2",
    prompt: "make it blue",
    image: fs.createReadStream(process.env.PNG_PATH),
    n: 2,
  });
  if (answer.data.length !== 2) throw new Error(`round ${round}: ${answer.data.length} images`);
  for (const image of answer.data) {
    const bytes = Buffer.from(image.b64_json, "base64");
    if (bytes.subarray(1, 4).toString() !== "PNG") throw new Error("not a PNG");
    // IEND at the very end: the image arrived whole.
    if (bytes.subarray(bytes.length - 8, bytes.length - 4).toString() !== "IEND") throw new Error("cut off");
  }
  console.log(`ok round ${round}: ${answer.data.length} images, ${answer.data[0].b64_json.length} base64 chars`);
}
console.log("all checks passed");
