// The search page: text search (GET /search), image search (POST /search), a grid of results.
// Text from the server is only ever set as textContent (captions and paths are not HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), query = $("query"), k = $("k"), fileInput = $("image-file");
const drop = $("drop"), preview = $("query-image"), status = $("status"), grid = $("results");

function caption(result) {
  const m = result.metadata || {};
  const path = m.image_path || m.url || "";
  return m.caption || m.text || path.split("/").pop() || `row ${result.row}`;
}

function placeholder() {
  const none = document.createElement("div");
  none.className = "thumb none";
  none.textContent = "no image";
  return none;
}

function card(result) {
  const figure = document.createElement("figure");
  figure.className = "result";
  const link = document.createElement("a");
  if (result.file) { link.href = result.file; link.target = "_blank"; link.rel = "noopener noreferrer"; }
  const text = caption(result);
  if (result.thumbnail) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.src = result.thumbnail;
    img.alt = text;
    img.loading = "lazy";
    img.addEventListener("error", () => img.replaceWith(placeholder()));
    link.append(img);
  } else {
    link.append(placeholder());
  }
  const label = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  const words = document.createElement("span");
  words.className = "caption";
  words.textContent = text;
  words.title = text;
  label.append(score, " ", words);
  figure.append(link, label);
  return figure;
}

async function show(response, what) {
  let body;
  try { body = await response.json(); } catch { body = {}; }
  if (!response.ok) {
    status.textContent = (body.error && body.error.message) || `error ${response.status}`;
    status.className = "error";
    return;
  }
  grid.replaceChildren(...body.results.map(card));
  status.className = "muted";
  status.textContent = `${body.results.length} results for ${what}`;
}

async function run(request, what) {
  status.className = "muted";
  status.textContent = "searching…";
  try {
    await show(await request, what);
  } catch (e) {
    status.className = "error";
    status.textContent = `the server cannot be reached: ${e}`;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = query.value.trim();
  if (!q) return;
  preview.hidden = true;
  run(fetch(`/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k.value)}`), `“${q}”`);
});

function searchImage(file) {
  if (!file) return;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const data = new FormData();
  data.append("image", file);
  data.append("k", k.value);
  run(fetch("/search", { method: "POST", body: data }), file.name || "the image");
}

fileInput.addEventListener("change", () => searchImage(fileInput.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  searchImage(event.dataTransfer.files[0]);
});

fetch("/v1/models").then((r) => r.json()).then((body) => {
  $("about").textContent = `model: ${body.data.map((m) => m.id).join(", ")}`;
}).catch(() => {});
