// The genir web page: a thin client of the JSON API in app.py (no build step, no libraries).
"use strict";

const $ = (id) => document.getElementById(id);

// el("p", {class: "x"}, "text", child) -> an element; text is never parsed as HTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

// fetch JSON; a 4xx/5xx throws an Error carrying the API's `detail` message.
async function api(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) {   // FastAPI request-validation errors: [{loc, msg}, ...]
      detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showAlert(box, message) {
  box.textContent = message || "";
  box.hidden = !message;
}

const formatCodes = (codes) => codes.join("-");

// ------------------------------------------------------------------ stats
let writable = true;

async function loadStats() {
  const s = await api("/stats");
  const p50 = s.latency_ms.p50 == null ? "—" : `${s.latency_ms.p50.toFixed(1)} ms`;
  const parts = [`${s.items} items`, `${s.ids} IDs`, `${s.queries_served} queries served`,
                 `p50 ${p50}`];
  if (s.rebuild_advised) parts.push("rebuild advised");
  if (!s.writable) parts.push("read-only");
  $("stats").textContent = parts.join(" · ");
  return s;
}

async function init() {
  let s;
  try {
    s = await loadStats();
  } catch (err) {
    $("stats").textContent = "stats unavailable";
    showAlert($("alert"), err.message);
    return;
  }
  const select = $("q-instruction");
  for (const text of s.instructions) select.append(el("option", {value: text}, text));
  $("q-k").max = s.max_k;
  if (!s.query_modalities.includes("text")) {
    $("q-text").disabled = true;
    $("q-text").placeholder = "this index is searched with images only";
  }
  writable = s.writable;
  $("add-panel").hidden = !writable;
  document.body.dataset.ready = "true";   // the page is wired up (tests wait for this)
}

// ------------------------------------------------------------------ image query
const fileInput = $("q-image");
const dropZone = $("drop-zone");

function showPreview() {
  const file = fileInput.files[0];
  const preview = dropZone.querySelector(".preview");
  const img = $("q-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  preview.hidden = !file;
  img.hidden = !(file && file.type.startsWith("image/"));   // no broken icon for a .txt
  if (!img.hidden) img.src = URL.createObjectURL(file);
  else img.removeAttribute("src");
}

fileInput.addEventListener("change", showPreview);
$("q-image-clear").addEventListener("click", () => { fileInput.value = ""; showPreview(); });

for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (e) => { e.preventDefault(); dropZone.classList.add("over"); });
}
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (e) => {
  e.preventDefault();
  dropZone.classList.remove("over");
  if (e.dataTransfer.files.length) {
    fileInput.files = e.dataTransfer.files;
    showPreview();
  }
});

// ------------------------------------------------------------------ search
function resultCard(r) {
  const img = el("img", {src: r.thumbnail, alt: r.caption || r.id, loading: "lazy"});
  img.addEventListener("error", () => img.replaceWith(el("div", {class: "no-image"}, "no image")));
  const remove = el("button", {type: "button", class: "remove", "data-testid": "remove",
                               "aria-label": `Remove ${r.id}`}, "Remove");
  remove.addEventListener("click", () => removeItem(r.id, card));
  remove.hidden = !writable;
  const card = el("li", {class: "card", "data-testid": "result", "data-id": r.id},
    img,
    el("div", {class: "meta"},
      el("span", {class: "rank"}, `#${r.rank}`),
      el("span", {class: "score", title: "score"}, r.score.toFixed(3))),
    el("div", {class: "id"}, r.id),
    el("code", {class: "codes", title: "semantic ID codes"}, formatCodes(r.codes)),
    el("p", {class: "caption"}, r.caption),
    remove);
  return card;
}

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showAlert($("alert"), "");
  const form = new FormData();
  const text = $("q-text").value.trim();
  if (text) form.append("text", text);
  if (fileInput.files[0]) form.append("image", fileInput.files[0]);
  if ($("q-instruction").value) form.append("instruction", $("q-instruction").value);
  form.append("k", $("q-k").value);
  form.append("rerank", $("q-rerank").checked ? "true" : "false");
  $("search-btn").disabled = true;
  try {
    const res = await api("/search", {method: "POST", body: form});
    $("results").replaceChildren(...res.results.map(resultCard));
    const parts = [`${res.results.length} results`, `${res.query.modality} query`,
                   `${res.took_ms.toFixed(1)} ms`];
    if (res.query.rerank) parts.push("reranked");
    $("summary").textContent = parts.join(" · ");
    await loadStats();
  } catch (err) {
    showAlert($("alert"), err.message);
  } finally {
    $("search-btn").disabled = false;
  }
});

async function removeItem(id, card) {
  showAlert($("alert"), "");
  try {
    await api(`/items/${encodeURIComponent(id)}`, {method: "DELETE"});
    card.remove();
    await loadStats();
  } catch (err) {
    showAlert($("alert"), err.message);
  }
}

// ------------------------------------------------------------------ add an item
$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showAlert($("add-alert"), "");
  $("add-result").hidden = true;
  const form = new FormData();
  const image = $("add-image").files[0];
  if (image) form.append("image", image);
  const caption = $("add-caption").value.trim();
  if (caption) form.append("caption", caption);
  const id = $("add-id").value.trim();
  if (id) form.append("id", id);
  $("add-btn").disabled = true;
  try {
    const item = await api("/items", {method: "POST", body: form});
    $("add-result").replaceChildren("Added ", el("strong", {"data-testid": "added-id"}, item.id),
      " with codes ", el("code", {"data-testid": "added-codes"}, formatCodes(item.codes)));
    $("add-result").hidden = false;
    $("add-form").reset();
    await loadStats();
  } catch (err) {
    showAlert($("add-alert"), err.message);
  } finally {
    $("add-btn").disabled = false;
  }
});

init();
