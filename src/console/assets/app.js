// The image-gateway console: a page over the gateway's own public API, called with the
// user's key (kept in this tab's sessionStorage only). No framework, no build step, nothing
// fetched from anywhere but this gateway.

const $ = (selector, root = document) => root.querySelector(selector);
const store = window.sessionStorage;

const OPTIONS = {
  size: ["auto", "1024x1024", "1536x1024", "1024x1536"],
  quality: ["auto", "low", "medium", "high"],
  background: ["auto", "transparent", "opaque"],
  n: ["1", "2", "3", "4"],
  output_format: ["png", "jpeg", "webp"],
};
const MAX_SOURCES = { generate: 0, edit: 1, compose: 3 };

const state = {
  key: store.getItem("ig.key"),
  admin: store.getItem("ig.admin"),
  sources: [], // {key?, generationId?, label, preview}
  historyAfter: null,
  usageAfter: null,
  blobs: new Map(), // file key -> {blob, url} of its bytes
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the gateway; answers the parsed JSON, or throws an ApiError with its envelope. */
async function api(path, { method = "GET", json, body, admin = false } = {}) {
  const headers = { authorization: `Bearer ${admin ? state.admin : state.key}` };
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (error) {
    throw new ApiError(0, "network", `the gateway could not be reached (${error.message})`);
  }
  return answerOf(response);
}

async function answerOf(response) {
  const text = await response.text();
  let value = null;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    value = null;
  }
  if (!response.ok) {
    const error = value && value.error;
    throw new ApiError(
      response.status,
      error ? error.code : "http_" + response.status,
      error ? error.message : `the gateway answered ${response.status}`,
    );
  }
  return value;
}

function say(text) {
  $("#status").textContent = text;
}

function alertUser(error) {
  const box = $("#alert");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let text = error.message || String(error);
  if (error.code === "invalid_api_key") {
    text = "That key was not accepted (invalid_api_key). Check it and sign in again.";
  } else if (error.code) {
    text = `${text} (${error.code})`;
  }
  box.textContent = text;
  box.hidden = false;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "never";
}

/** The generation id in an output's file key (`files/{user}/{id}_generation.{ext}`). */
function generationIdOf(key) {
  const match = /\/([0-9a-f-]{36})_generation\.(png|jpeg|webp)$/.exec(key);
  return match ? match[1] : null;
}

function fileUrl(key) {
  return "/api/v1/files/" + key.split("/").map(encodeURIComponent).join("/");
}

/** A stored file's bytes and an object URL of them (fetched with the key, cached for the tab). */
async function stored(key) {
  if (state.blobs.has(key)) return state.blobs.get(key);
  const response = await fetch(fileUrl(key), { headers: { authorization: `Bearer ${state.key}` } });
  if (!response.ok) await answerOf(response);
  const blob = await response.blob();
  const file = { blob, url: URL.createObjectURL(blob) };
  state.blobs.set(key, file);
  return file;
}

async function blobUrl(key) {
  return (await stored(key)).url;
}

function download(url, name) {
  const link = element("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

function zoom(src, alt) {
  const img = $("#zoom-img");
  img.src = src;
  img.alt = alt;
  $("#zoom").showModal();
  $("#zoom-close").focus();
}

// ---- Pages -------------------------------------------------------------------------

const PAGES = ["images", "history", "files", "account", "keys"];

async function show() {
  alertUser(null);
  const signedIn = Boolean(state.key);
  $("#nav").hidden = !signedIn;
  let page = (location.hash.match(/^#\/(\w+)/) || [])[1];
  if (!signedIn) page = "signin";
  else if (!PAGES.includes(page)) page = "images";
  for (const section of document.querySelectorAll(".page")) {
    section.hidden = section.id !== "page-" + page;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === "#/" + page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} - image-gateway console`;
  try {
    if (page === "images") {
      await loadModels();
      resumeJobs();
    }
    if (page === "history") await loadHistory(true);
    if (page === "files") await loadFiles();
    if (page === "account") await loadAccount(true);
    if (page === "keys" && state.admin) await loadKeys();
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error && error.code === "invalid_api_key" && !error.admin) {
    signOut();
  }
  alertUser(error);
  say("");
}

function signOut() {
  store.removeItem("ig.key");
  store.removeItem("ig.admin");
  state.key = null;
  state.admin = null;
  for (const file of state.blobs.values()) URL.revokeObjectURL(file.url);
  state.blobs.clear();
  $("#results").replaceChildren();
  location.hash = "";
  show();
}

// ---- Sign in -----------------------------------------------------------------------

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#signin-key").value.trim();
  state.key = key;
  try {
    await api("/api/v1/balance");
  } catch (error) {
    state.key = null;
    alertUser(error);
    $("#signin-key").focus();
    return;
  }
  store.setItem("ig.key", key);
  $("#signin-key").value = "";
  location.hash = "#/images";
  await show();
  $("#prompt").focus();
});

$("#sign-out").addEventListener("click", signOut);

// ---- Images ------------------------------------------------------------------------

function buildChips() {
  for (const fieldset of document.querySelectorAll("fieldset[data-option]")) {
    const name = fieldset.dataset.option;
    OPTIONS[name].forEach((value, index) => {
      const input = element("input", { type: "radio", name, value });
      input.checked = index === 0;
      fieldset.append(element("label", {}, input, element("span", { text: value })));
    });
  }
}

async function loadModels() {
  const select = $("#model");
  if (select.options.length) return;
  const models = await api("/v1/models");
  for (const model of models.data) select.append(element("option", { value: model.id, text: model.id }));
}

function mode() {
  return $("#make-form").elements.mode.value;
}

function chosen(name) {
  return $("#make-form").elements[name].value;
}

function renderSources() {
  const max = MAX_SOURCES[mode()];
  $("#sources-box").hidden = max === 0;
  state.sources = state.sources.slice(0, max);
  $("#sources").replaceChildren(
    ...state.sources.map((source, index) =>
      element(
        "li",
        {},
        source.preview ? element("img", { src: source.preview, alt: "" }) : null,
        element("span", { text: source.label }),
        element("button", {
          type: "button",
          class: "link",
          "aria-label": `Remove ${source.label}`,
          text: "Remove",
          onclick: () => {
            state.sources.splice(index, 1);
            renderSources();
          },
        }),
      ),
    ),
  );
}

function addSource(source) {
  const max = MAX_SOURCES[mode()];
  if (max === 1) state.sources = [];
  if (state.sources.length >= max) {
    alertUser(new Error(`at most ${max} sources for ${mode()}`));
    return;
  }
  state.sources.push(source);
  renderSources();
}

$("#mode").addEventListener("change", renderSources);

$("#source-file").addEventListener("change", async (event) => {
  const files = [...event.target.files];
  event.target.value = "";
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  say("Uploading...");
  try {
    const answer = await api("/api/v1/upload", { method: "POST", body: form });
    for (const up of answer.uploaded) {
      const file = files.find((f) => f.name === up.filename) || files[0];
      addSource({ key: up.key, label: up.filename, preview: URL.createObjectURL(file) });
    }
    for (const refused of answer.errors || []) {
      alertUser(new ApiError(400, refused.code, `${refused.filename}: ${refused.message}`));
    }
    say(`Uploaded ${answer.uploaded.length} file(s).`);
  } catch (error) {
    failed(error);
  }
});

$("#prompt").addEventListener("keydown", (event) => {
  // An input method composing text owns Enter; only a plain Enter sends.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  $("#make-form").requestSubmit();
});

$("#make-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("#prompt").value.trim();
  if (!prompt) return;
  const kind = mode();
  if (kind !== "generate" && state.sources.length === 0) {
    alertUser(new Error("choose a source image first (upload one, or \"Edit this\" on a result)"));
    return;
  }
  alertUser(null);
  const request = {
    model: $("#model").value,
    prompt,
    n: Number(chosen("n")),
    size: chosen("size"),
    quality: chosen("quality"),
    background: chosen("background"),
    output_format: chosen("output_format"),
    stream: true,
    partial_images: 2,
  };
  if (kind === "edit") {
    const source = state.sources[0];
    if (source.key) request.image_key = source.key;
    else request.generation_id = source.generationId;
  }
  if (kind === "compose") {
    const keys = state.sources.filter((s) => s.key).map((s) => s.key);
    const ids = state.sources.filter((s) => s.generationId).map((s) => s.generationId);
    if (keys.length) request.image_keys = keys;
    if (ids.length) request.generation_ids = ids;
  }
  const path = { generate: "/v1/images/generations", edit: "/v1/images/edits", compose: "/v1/images/compose" }[kind];
  await make(path, request);
});

/** One result card per image the request asks for, filled as events arrive. */
function cardsFor(n, prompt) {
  const cards = [];
  for (let i = 0; i < n; i += 1) {
    const frame = element("div", { class: "frame" }, element("p", { class: "pending", text: "Working..." }));
    const meta = element("p", { class: "meta" });
    const actions = element("div", { class: "actions" });
    const card = element("article", { class: "card", "aria-label": `Result: ${prompt}`, "aria-busy": "true" }, frame, meta, actions);
    $("#results").prepend(card);
    cards.push({ card, frame, meta, actions });
  }
  return cards;
}

function picture(frame, src, alt, partial) {
  const img = element("img", { src, alt });
  if (partial) img.dataset.partial = "true";
  const button = element("button", { type: "button", class: "zoom", "aria-label": `Zoom: ${alt}`, onclick: () => zoom(src, alt) }, img);
  frame.replaceChildren(button);
}

/** The jobs this tab submitted and has not seen end: a reload follows them on. */
function pendingJobs() {
  try {
    return JSON.parse(store.getItem("ig.jobs") || "[]");
  } catch {
    return [];
  }
}

function rememberJob(job) {
  store.setItem("ig.jobs", JSON.stringify([...pendingJobs().filter((j) => j.id !== job.id), job]));
}

function forgetJob(id) {
  store.setItem("ig.jobs", JSON.stringify(pendingJobs().filter((j) => j.id !== id)));
}

/** Submits the request as an async job (it runs on whatever this page does), then follows
 * its events into result cards. */
async function make(path, request) {
  const send = $("#send");
  send.disabled = true;
  say("Sending...");
  const cards = cardsFor(request.n, request.prompt);
  let before = null;
  try {
    before = (await api("/api/v1/balance")).available;
  } catch {
    before = null;
  }
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: {
        authorization: `Bearer ${state.key}`,
        "content-type": "application/json",
        prefer: "respond-async",
      },
      body: JSON.stringify(request),
    });
    const accepted = await answerOf(response);
    const job = { id: accepted.id, prompt: request.prompt, n: request.n, output_format: request.output_format, started: Date.now() };
    rememberJob(job);
    await follow(job, cards, before);
  } catch (error) {
    fail(cards, 0, error);
  } finally {
    send.disabled = false;
  }
}

/** Cards of the jobs a reload interrupted, followed on to their end. */
let resumed = false;
function resumeJobs() {
  if (resumed || !state.key) return;
  resumed = true;
  for (const job of pendingJobs()) {
    const cards = cardsFor(job.n, job.prompt);
    for (const slot of cards) slot.card.dataset.jobId = job.id;
    follow(job, cards, null).catch((error) => fail(cards, 0, error));
  }
}

function fail(cards, done, error) {
  for (const slot of cards.slice(done)) {
    slot.card.classList.add("failed");
    slot.card.removeAttribute("aria-busy");
    slot.frame.replaceChildren(element("p", { class: "pending", text: "Failed" }));
  }
  failed(error);
}

/** Reads the job's events (from its start) into `cards` until it ends. */
async function follow(job, cards, before) {
  let done = 0;
  const mime = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" }[job.output_format];
  const finish = (slot, event) => {
    const src = `data:${mime};base64,${event.b64_json}`;
    const id = event.picklyone_generation_id;
    picture(slot.frame, src, `Generated: ${job.prompt}`, false);
    slot.card.removeAttribute("aria-busy");
    slot.card.dataset.generationId = id || "";
    slot.meta.textContent = `id ${id || "-"}`;
    slot.actions.replaceChildren(
      element("button", { type: "button", text: "Download", onclick: () => download(src, `generation-${id}.${job.output_format}`) }),
      element("button", {
        type: "button",
        text: "Edit this",
        onclick: () => editThis(id, src),
      }),
    );
  };
  try {
    const response = await fetch(`/v1/images/jobs/${encodeURIComponent(job.id)}/events`, {
      headers: { authorization: `Bearer ${state.key}` },
    });
    const streamed = (response.headers.get("content-type") || "").startsWith("text/event-stream");
    if (!response.ok || !streamed) {
      await answerOf(response);
      throw new ApiError(502, "not_streamed", "the gateway did not stream the job's events");
    }
    for await (const event of events(response)) {
      if (event.error) {
        forgetJob(job.id);
        throw new ApiError(0, event.error.code, event.error.message);
      }
      if (event.type && event.type.endsWith(".partial_image")) {
        const slot = cards[Math.min(done, cards.length - 1)];
        picture(slot.frame, `data:${mime};base64,${event.b64_json}`, `Preview ${event.partial_image_index + 1}`, true);
        slot.card.dataset.partials = String(Number(slot.card.dataset.partials || 0) + 1);
        say(`Preview ${event.partial_image_index + 1} arrived...`);
      } else if (event.type && event.type.endsWith(".completed")) {
        finish(cards[Math.min(done, cards.length - 1)], event);
        done += 1;
      }
    }
  } catch (error) {
    fail(cards, done, error);
    return;
  }
  forgetJob(job.id);
  for (const slot of cards.slice(done)) slot.card.remove();
  const seconds = ((Date.now() - job.started) / 1000).toFixed(1);
  let cost = "";
  if (before !== null) {
    const after = await settledBalance();
    cost = `, cost ${before - after}`;
  }
  for (const slot of cards.slice(0, done)) {
    slot.meta.textContent = `${seconds} s${cost} · id ${slot.card.dataset.generationId}`;
    slot.meta.dataset.elapsed = seconds;
  }
  say(`Done: ${done} image(s) in ${seconds} s${cost}.`);
}

/** The available balance once no hold is open (a settle lands just after the last event). */
async function settledBalance() {
  for (let i = 0; i < 50; i += 1) {
    const balance = await api("/api/v1/balance");
    if (balance.held === 0) return balance.available;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return (await api("/api/v1/balance")).available;
}

/** Server-sent events of a response, as parsed `data:` objects. */
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

function editThis(id, preview) {
  if (!id) return;
  const radio = document.querySelector('input[name="mode"][value="edit"]');
  radio.checked = true;
  state.sources = [];
  addSource({ generationId: id, label: `generation ${id.slice(0, 8)}`, preview });
  location.hash = "#/images";
  $("#prompt").focus();
}

// ---- History -----------------------------------------------------------------------

async function loadHistory(fresh) {
  if (fresh) {
    state.historyAfter = null;
    $("#history").replaceChildren();
  }
  say("Loading your generations...");
  if (fresh) await loadRunning();
  let added = 0;
  let more = true;
  // Files mix uploads and outputs: read pages until one of outputs is full or none are left.
  while (more && added < 12) {
    const query = `?limit=50${state.historyAfter ? `&after=${encodeURIComponent(state.historyAfter)}` : ""}`;
    const page = await api(`/api/v1/files${query}`);
    for (const file of page.data) {
      const id = generationIdOf(file.key);
      if (!id) continue;
      added += 1;
      $("#history").append(historyCard(file, id));
    }
    more = page.has_more;
    state.historyAfter = page.next_after;
  }
  $("#history-more").hidden = !more;
  say($("#history").children.length ? "" : "No generations yet.");
}

/** The caller's jobs still queued or running, as cards above the finished generations. */
async function loadRunning() {
  const jobs = await api("/v1/images/jobs?limit=20");
  for (const job of jobs.data.filter((j) => j.status === "queued" || j.status === "running")) {
    const card = element(
      "article",
      { class: "card", "aria-label": `Job ${job.id}`, "aria-busy": "true" },
      element("div", { class: "frame" }, element("p", { class: "pending", text: job.status === "queued" ? "Queued..." : "Working..." })),
      element("p", { class: "meta", text: `${when(job.created_at)} · ${job.model} · ${job.n} image(s) · job ${job.id}` }),
    );
    card.dataset.jobId = job.id;
    $("#history").append(card);
  }
}

function historyCard(file, id) {
  const frame = element("div", { class: "frame" }, element("p", { class: "pending", text: "Loading..." }));
  const select = element("input", { type: "checkbox", "aria-label": `Select generation ${id}` });
  select.dataset.key = file.key;
  const card = element(
    "article",
    { class: "card", "aria-label": `Generation ${id}` },
    frame,
    element("p", { class: "meta", text: `${when(file.created)} · ${bytes(file.size)} · id ${id}` }),
    element(
      "div",
      { class: "actions" },
      element("label", {}, select, " Select"),
      element("button", { type: "button", text: "Download", onclick: async () => download(await blobUrl(file.key), file.key.split("/").pop()) }),
      element("button", { type: "button", text: "Edit this", onclick: async () => editThis(id, await blobUrl(file.key)) }),
    ),
  );
  blobUrl(file.key)
    .then((url) => picture(frame, url, `Generation ${id}`, false))
    .catch(() => frame.replaceChildren(element("p", { class: "pending", text: "Unavailable" })));
  return card;
}

$("#history-more").addEventListener("click", () => loadHistory(false).catch(failed));

$("#history-zip").addEventListener("click", async () => {
  const keys = [...document.querySelectorAll("#history input[type=checkbox]:checked")].map((c) => c.dataset.key);
  if (!keys.length) {
    alertUser(new Error("select one or more generations first"));
    return;
  }
  say(`Packing ${keys.length} image(s)...`);
  try {
    const entries = [];
    for (const key of keys) {
      const bytes = await (await stored(key)).blob.arrayBuffer();
      entries.push({ name: key.split("/").pop(), data: new Uint8Array(bytes) });
    }
    download(URL.createObjectURL(zip(entries)), "generations.zip");
    say(`Downloaded ${keys.length} image(s) as generations.zip.`);
  } catch (error) {
    failed(error);
  }
});

// A ZIP archive of stored (uncompressed) entries: images are compressed already.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(data) {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i += 1) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function zip(entries) {
  const parts = [];
  const central = [];
  let offset = 0;
  for (const entry of entries) {
    const name = new TextEncoder().encode(entry.name);
    const crc = crc32(entry.data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(8, 0, true); // stored
    local.setUint32(14, crc, true);
    local.setUint32(18, entry.data.length, true);
    local.setUint32(22, entry.data.length, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, entry.data);
    const record = new DataView(new ArrayBuffer(46));
    record.setUint32(0, 0x02014b50, true);
    record.setUint16(4, 20, true);
    record.setUint16(6, 20, true);
    record.setUint32(16, crc, true);
    record.setUint32(20, entry.data.length, true);
    record.setUint32(24, entry.data.length, true);
    record.setUint16(28, name.length, true);
    record.setUint32(42, offset, true);
    central.push(record, name);
    offset += 30 + name.length + entry.data.length;
  }
  const size = central.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// ---- Files -------------------------------------------------------------------------

async function loadFiles() {
  say("Loading your files...");
  const rows = [];
  let after = null;
  let used = null;
  for (let pages = 0; pages < 100; pages += 1) {
    const page = await api(`/api/v1/files?limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    if (page.usage) used = page;
    for (const file of page.data) rows.push(fileRow(file));
    if (!page.has_more) break;
    after = page.next_after;
  }
  $("#files").replaceChildren(...rows);
  if (used) {
    const of = (n, max, show) => (max === null || max === undefined ? show(n) : `${show(n)} of ${show(max)}`);
    $("#files-used").textContent =
      `Quota used: ${of(used.usage.bytes, used.quota.bytes, bytes)}, ` +
      `${of(used.usage.files, used.quota.files, String)} files.`;
  }
  say(rows.length ? "" : "No files stored.");
}

function fileRow(file) {
  const name = file.key.split("/").pop();
  const select = element("input", { type: "checkbox", "aria-label": `Select ${name}` });
  select.dataset.key = file.key;
  const preview = element("td");
  blobUrl(file.key)
    .then((url) => preview.append(element("img", { src: url, alt: `Preview of ${name}` })))
    .catch(() => preview.append("-"));
  return element(
    "tr",
    {},
    element("td", {}, select),
    preview,
    element("td", { text: name }),
    element("td", { text: bytes(file.size) }),
    element("td", { text: when(file.created) }),
    element(
      "td",
      {},
      element("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${name}`, onclick: () => deleteFiles([file.key]) }),
    ),
  );
}

async function deleteFiles(keys) {
  if (!keys.length) {
    alertUser(new Error("select one or more files first"));
    return;
  }
  if (!window.confirm(`Delete ${keys.length} file(s)? This cannot be undone.`)) return;
  try {
    for (const key of keys) {
      await api(fileUrl(key), { method: "DELETE" });
      const file = state.blobs.get(key);
      if (file) URL.revokeObjectURL(file.url);
      state.blobs.delete(key);
    }
    await loadFiles();
    say(`Deleted ${keys.length} file(s).`);
  } catch (error) {
    failed(error);
  }
}

$("#files-delete").addEventListener("click", () =>
  deleteFiles([...document.querySelectorAll("#files input[type=checkbox]:checked")].map((c) => c.dataset.key)),
);

// ---- Account -----------------------------------------------------------------------

async function loadAccount(fresh) {
  const balance = await api("/api/v1/balance");
  $("#available").textContent = String(balance.available);
  $("#held").textContent = String(balance.held);
  if (fresh) {
    state.usageAfter = null;
    $("#usage").replaceChildren();
  }
  const query = `?limit=50&status=all${state.usageAfter ? `&after=${state.usageAfter}` : ""}`;
  const usage = await api(`/api/v1/usage${query}`);
  for (const entry of usage.data) {
    $("#usage").append(
      element(
        "tr",
        {},
        element("td", { text: when(entry.time) }),
        element("td", { text: entry.model }),
        element("td", { text: entry.status }),
        element("td", { text: String(entry.n_requested) }),
        element("td", { text: String(entry.n_returned) }),
        element("td", { text: String(entry.held) }),
        element("td", { text: String(entry.charged) }),
        element("td", { text: String(entry.released) }),
      ),
    );
  }
  state.usageAfter = usage.next_after;
  $("#usage-more").hidden = !usage.has_more;
  say("");
}

$("#usage-more").addEventListener("click", () => loadAccount(false).catch(failed));

// ---- Keys (admin) ------------------------------------------------------------------

$("#admin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.admin = $("#admin-key").value.trim();
  store.setItem("ig.admin", state.admin);
  $("#admin-key").value = "";
  await loadKeys().catch(failedAdmin);
});

function failedAdmin(error) {
  if (error.code === "invalid_api_key") {
    store.removeItem("ig.admin");
    state.admin = null;
    error = new ApiError(401, "invalid_api_key", "The admin key was not accepted.");
    error.admin = true;
    $("#keys-box").hidden = true;
  }
  alertUser(error);
}

async function loadKeys() {
  const user = $("#keys-user").value.trim();
  if (!user || !state.admin) return;
  const answer = await api(`/admin/v1/users/${encodeURIComponent(user)}/keys`, { admin: true });
  $("#keys-box").hidden = false;
  $("#keys").replaceChildren(
    ...answer.data.map((key) => {
      const ended = key.revoked_at ? "revoked" : key.expires_at && key.expires_at * 1000 <= Date.now() ? "expired" : "live";
      const limits = [
        key.limits.daily_limit !== undefined ? `${key.limits.daily_limit}/day` : null,
        key.limits.models ? key.limits.models.join(" ") : null,
        key.limits.ips ? key.limits.ips.join(" ") : null,
      ].filter(Boolean);
      return element(
        "tr",
        {},
        element("td", {}, element("code", { text: `${key.prefix}...` })),
        element("td", { text: key.name || "-" }),
        element("td", { text: when(key.created) }),
        element("td", { text: when(key.last_used) }),
        element("td", { text: limits.join(", ") || "none" }),
        element("td", { text: ended }),
        element(
          "td",
          {},
          ended === "live"
            ? element("button", {
                type: "button",
                text: "Daily limit",
                "aria-label": `Set the daily limit of ${key.prefix}`,
                onclick: () => setDailyLimit(key),
              })
            : null,
          ended === "live"
            ? element("button", {
                type: "button",
                class: "danger",
                text: "Revoke",
                "aria-label": `Revoke ${key.prefix}`,
                onclick: () => revoke(key),
              })
            : null,
        ),
      );
    }),
  );
  say(`${answer.data.length} key(s).`);
}

async function setDailyLimit(key) {
  const current = key.limits.daily_limit === undefined ? "" : String(key.limits.daily_limit);
  const answer = window.prompt(`Daily limit of ${key.prefix}... (empty: none)`, current);
  if (answer === null) return;
  const limits = { ...key.limits };
  if (answer.trim() === "") delete limits.daily_limit;
  else limits.daily_limit = Number(answer.trim());
  try {
    // PATCH replaces every limit: the models and networks go along unchanged.
    await api(`/admin/v1/keys/${key.id}`, { method: "PATCH", json: limits, admin: true });
    await loadKeys();
    say(`Daily limit of ${key.prefix}... set.`);
  } catch (error) {
    failedAdmin(error);
  }
}

async function revoke(key) {
  if (!window.confirm(`Revoke ${key.prefix}...? Requests with it are refused from now on.`)) return;
  try {
    await api(`/admin/v1/keys/${key.id}`, { method: "DELETE", admin: true });
    await loadKeys();
    say(`Revoked ${key.prefix}...`);
  } catch (error) {
    failedAdmin(error);
  }
}

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("#keys-user").value.trim();
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const body = { name: $("#new-name").value.trim() };
  if ($("#new-limit").value !== "") body.daily_limit = Number($("#new-limit").value);
  if (list($("#new-models").value).length) body.models = list($("#new-models").value);
  if (list($("#new-ips").value).length) body.ips = list($("#new-ips").value);
  try {
    const made = await api(`/admin/v1/users/${encodeURIComponent(user)}/keys`, { method: "POST", json: body, admin: true });
    $("#new-key-value").textContent = made.key;
    $("#new-key").hidden = false;
    $("#create-form").reset();
    await loadKeys();
    $("#new-key-copy").focus();
  } catch (error) {
    failedAdmin(error);
  }
});

$("#new-key-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("#new-key-value").textContent);
    say("Copied.");
  } catch {
    say("Select the key and copy it.");
  }
});

// ---- Start -------------------------------------------------------------------------

$("#zoom-close").addEventListener("click", () => $("#zoom").close());
window.addEventListener("hashchange", () => show());
buildChips();
renderSources();
show();
