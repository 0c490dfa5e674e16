// The console in Debian's chromium, driven by playwright-core: sign in (a bad key first),
// upload, edit with partial images arriving, chain an edit, compose, see the balance move by
// what was charged, download history as a ZIP, delete files, make and revoke a key, and use
// it at phone width. Screenshots of each page go to $SHOTS.
// Environment: GATEWAY_URL, GATEWAY_KEY, ADMIN_KEY, PRICE, BALANCE, SOURCE_PATH, SHOTS.
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.env.GATEWAY_URL;
const key = process.env.GATEWAY_KEY;
const admin = process.env.ADMIN_KEY;
const price = Number(process.env.PRICE);
const balance = Number(process.env.BALANCE);
const shots = process.env.SHOTS;
fs.mkdirSync(shots, { recursive: true });

function check(name, condition, detail = "") {
  if (!condition) {
    console.log(`FAIL ${name} ${detail}`);
    process.exit(1);
  }
  console.log(`ok ${name}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 }, acceptDownloads: true });
const page = await context.newPage();
page.setDefaultTimeout(30000);
const problems = [];
page.on("console", (message) => {
  // The browser logs every 4xx it fetched (the bad key's 401 is one): only our own errors count.
  if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
    problems.push(message.text());
  }
});
page.on("pageerror", (error) => problems.push(error.message));
page.on("dialog", (dialog) => (dialog.type() === "prompt" ? dialog.accept("700") : dialog.accept()));
page.on("request", (request) => {
  if (!request.url().startsWith(base) && !request.url().startsWith("data:") && !request.url().startsWith("blob:")) {
    problems.push(`request outside the gateway: ${request.url()}`);
  }
});
await page.addInitScript(() =>
  document.addEventListener("securitypolicyviolation", (e) =>
    console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`),
  ),
);
const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

// Sign in: a bad key is refused with a clear message; the right one opens Images.
const first = await page.goto(`${base}/console`);
check("/console redirects to /console/", page.url() === `${base}/console/`, page.url());
const csp = first.headers()["content-security-policy"] || "";
check("a strict CSP", csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), csp);
await shot("01-sign-in");
await page.getByLabel("API key").fill("pk_live_not_a_key_at_all");
await page.getByRole("button", { name: "Sign in" }).click();
await page.getByRole("alert").filter({ hasText: "not accepted" }).waitFor();
check("a bad key is told so", true);
await shot("02-bad-key");
await page.getByLabel("API key").fill(key);
await page.getByRole("button", { name: "Sign in" }).click();
await page.getByRole("heading", { name: "Images" }).waitFor();
check("signed in", true);

// Edit an uploaded image: partial images arrive before the result.
await page.getByLabel("Edit", { exact: true }).check({ force: true });
await page.locator("#source-file").setInputFiles(process.env.SOURCE_PATH);
await page.locator("#sources li").waitFor();
check("the upload is a source", (await page.locator("#sources li").textContent()).includes("source.png"));
const prompt = page.getByLabel(/^Prompt/);
await prompt.fill("make it blue");
// An input method composing text owns Enter: nothing is sent.
await prompt.evaluate((el) =>
  el.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", isComposing: true, bubbles: true, cancelable: true })),
);
await page.waitForTimeout(300);
check("Enter while composing does not send", (await page.locator(".card").count()) === 0);
await prompt.press("Enter");
// The card counts the previews it showed, so a fast machine cannot race the check.
await page.locator(".card[data-partials]").first().waitFor();
await shot("03-partial");
const firstCard = page.locator(".card").first();
await firstCard.getByRole("button", { name: "Edit this" }).waitFor();
const partials = Number(await firstCard.getAttribute("data-partials"));
check("partial images arrived before the result", partials === 2, String(partials));
await page.waitForFunction(() => document.querySelector(".card .meta").textContent.includes("cost"));
const meta = await firstCard.locator(".meta").textContent();
check("the card shows elapsed time and cost", /\d+\.\d s, cost (\d+)/.test(meta) && meta.includes(`cost ${price}`), meta);
check("the card shows the generation id", /id [0-9a-f-]{36}/.test(meta), meta);

// Chain: "Edit this" makes the result the next source.
await firstCard.getByRole("button", { name: "Edit this" }).click();
check("chained source", (await page.locator("#sources li").textContent()).includes("generation"));
await prompt.fill("now make it green");
await prompt.press("Enter");
await page.waitForFunction(() => document.querySelectorAll(".card .meta").length === 2 &&
  [...document.querySelectorAll(".card .meta")].every((m) => m.textContent.includes("cost")));
check("the chained edit finished", (await page.locator(".card").count()) === 2);

// Compose: the chained result beside a new upload.
await page.getByLabel("Compose (up to 3)").check({ force: true });
await page.locator("#source-file").setInputFiles(process.env.SOURCE_PATH);
await page.waitForFunction(() => document.querySelectorAll("#sources li").length === 2);
await prompt.fill("side by side");
await prompt.press("Enter");
await page.waitForFunction(() => document.querySelectorAll(".card .meta").length === 3 &&
  [...document.querySelectorAll(".card .meta")].every((m) => m.textContent.includes("cost")));
check("a compose of two sources finished", (await page.locator(".card").count()) === 3);
await shot("04-images");
await page.locator(".card .zoom").first().click();
await page.locator("#zoom-img").waitFor();
await shot("05-zoom");
await page.keyboard.press("Escape");

// The balance moved by exactly what was charged.
await page.getByRole("link", { name: "Account" }).click();
await page.waitForFunction((want) => document.querySelector("#available").textContent === want, String(balance - 3 * price));
check("balance moved by the charges", true);
await page.waitForFunction(() => document.querySelectorAll("#usage tr").length === 3);
check("usage lists the three", true);
await shot("06-account");

// History: the three generations, downloaded together as a ZIP.
await page.getByRole("link", { name: "History" }).click();
await page.waitForFunction(() => document.querySelectorAll("#history .card img").length === 3);
for (const box of await page.locator("#history input[type=checkbox]").all()) await box.check();
const [zip] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download selected as ZIP" }).click()]);
const zipPath = path.join(shots, "generations.zip");
await zip.saveAs(zipPath);
const zipped = fs.readFileSync(zipPath);
check("a ZIP of the three", zip.suggestedFilename() === "generations.zip" && zipped.subarray(0, 2).toString() === "PK" && zipped.readUInt16LE(zipped.length - 12) === 3);
await shot("07-history");

// Files: two uploads and three outputs; delete one upload, then the other by selection.
await page.getByRole("link", { name: "Files" }).click();
await page.waitForFunction(() => document.querySelectorAll("#files tr").length === 5);
const used = await page.locator("#files-used").textContent();
check("quota used is shown", used.includes("of 190.7 MB") && used.includes("5 of 10000 files"), used);
await shot("08-files");
await page.locator("#files tr", { hasText: "source.png" }).first().getByRole("button", { name: /Delete/ }).click();
await page.waitForFunction(() => document.querySelectorAll("#files tr").length === 4);
await page.locator("#files tr", { hasText: "source.png" }).getByRole("checkbox").check();
await page.getByRole("button", { name: "Delete selected" }).click();
await page.waitForFunction(() => document.querySelectorAll("#files tr").length === 3);
check("files deleted one and by selection", !(await page.locator("#files").textContent()).includes("source.png"));

// Keys: the admin makes a key (shown once) and revokes it.
await page.getByRole("link", { name: "Keys" }).click();
await page.getByLabel("Admin key").fill(admin);
await page.getByLabel("User id").fill("alice");
await page.getByRole("button", { name: "Show keys" }).click();
await page.getByRole("heading", { name: "Create a key" }).waitFor();
await page.getByLabel("Name").fill("from the console");
await page.getByLabel(/^Daily limit/).fill("500");
await page.getByRole("button", { name: "Create key" }).click();
await page.waitForFunction(() => document.querySelector("#new-key-value").textContent.startsWith("pk_live_"));
const made = await page.locator("#new-key-value").textContent();
check("a new key shown once", made.startsWith("pk_live_") && made.length === 40, made);
await page.locator("#keys tr", { hasText: "from the console" }).waitFor();
await shot("09-keys");
await page.locator("#keys tr", { hasText: "from the console" }).getByRole("button", { name: /daily limit/ }).click();
await page.locator("#keys tr", { hasText: "700/day" }).waitFor();
check("a key's daily limit changed", true);
const fresh = await fetch(`${base}/api/v1/balance`, { headers: { authorization: `Bearer ${made}` } });
check("the new key works", fresh.status === 200);
await page.locator("#keys tr", { hasText: "from the console" }).getByRole("button", { name: /Revoke/ }).click();
await page.locator("#keys tr", { hasText: "revoked" }).waitFor();
const gone = await fetch(`${base}/api/v1/balance`, { headers: { authorization: `Bearer ${made}` } });
check("the revoked key is refused", gone.status === 401);

// Phone width: no sideways scrolling.
await page.setViewportSize({ width: 390, height: 844 });
await page.getByRole("link", { name: "Images" }).click();
await page.getByRole("heading", { name: "Images" }).waitFor();
const wide = await page.evaluate(() => document.documentElement.scrollWidth);
check("fits a phone", wide <= 390, String(wide));
await shot("10-phone");

// Jobs outlive the page: History lists a running job, and after a reload its card comes
// back on Images and completes there.
await page.setViewportSize({ width: 1200, height: 900 });
await page.getByLabel("Generate", { exact: true }).check({ force: true });
await prompt.fill("a lighthouse at night");
await prompt.press("Enter");
await page.waitForFunction(() => JSON.parse(sessionStorage.getItem("ig.jobs") || "[]").length === 1);
const jobId = await page.evaluate(() => JSON.parse(sessionStorage.getItem("ig.jobs"))[0].id);
await page.getByRole("link", { name: "History" }).click();
await page.locator(`#history .card[data-job-id="${jobId}"]`).waitFor();
check("History lists the running job", true);
await page.reload();
await page.getByRole("link", { name: "Images" }).click();
const again = page.locator(`#results .card[data-job-id="${jobId}"]`);
await again.getByRole("button", { name: "Edit this" }).waitFor();
check("after a reload the job's card came back and completed", (await again.count()) === 1);
await page.waitForFunction(() => JSON.parse(sessionStorage.getItem("ig.jobs") || "[]").length === 0);
check("the ended job is forgotten", true);
await shot("11-reattached");

check("no script errors, CSP violations or outside requests", problems.length === 0, JSON.stringify(problems));
await browser.close();
console.log(`CHARGED ${4 * price}`);
