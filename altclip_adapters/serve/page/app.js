// The search page: text search (GET /search), image search (POST /search), a grid of results.
// Text from the server is only ever set as textContent (captions and paths are not HTML).
// With API keys on, the server answers 401: the page asks for a key once, keeps it in sessionStorage (this tab
// only) and sends it as "Authorization: Bearer"; images then load through fetch() as blob: URLs.
// A text search lives in the URL (?q=...&k=...), so it can be bookmarked, shared and reopened.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), query = $("query"), k = $("k"), fileInput = $("image-file");
const drop = $("drop"), preview = $("query-image"), status = $("status"), grid = $("results");
const keyForm = $("key-form"), keyInput = $("api-key");
const KEY = "altclip-api-key";

function api(url, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const headers = key ? { ...(options.headers || {}), Authorization: `Bearer ${key}` } : options.headers;
  return fetch(url, { ...options, headers }).then((response) => {
    if (response.status === 401) askForKey();
    return response;
  });
}

function askForKey() {
  keyForm.hidden = false;
  keyInput.focus();
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!keyInput.value) return;
  sessionStorage.setItem(KEY, keyInput.value);
  keyInput.value = "";
  keyForm.hidden = true;
  about();
searchFromURL();
  searchFromURL();  // the search that met the 401, now with the key
});

function loadImage(img, url) {  // with a key, through fetch (an <img src> cannot send the header)
  if (!sessionStorage.getItem(KEY)) { img.src = url; return; }
  api(url).then((r) => (r.ok ? r.blob() : Promise.reject(r.status)))
    .then((blob) => { img.src = URL.createObjectURL(blob); })
    .catch(() => img.replaceWith(placeholder()));
}

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
  if (result.file) {
    link.href = result.file; link.target = "_blank"; link.rel = "noopener noreferrer";
    link.addEventListener("click", (event) => {  // with a key, open the file as a blob: URL
      if (!sessionStorage.getItem(KEY) || !result.file.startsWith("/")) return;
      event.preventDefault();
      api(result.file).then((r) => r.blob()).then((blob) => window.open(URL.createObjectURL(blob), "_blank"));
    });
  }
  const text = caption(result);
  if (result.thumbnail) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = text;
    img.loading = "lazy";
    img.addEventListener("error", () => img.replaceWith(placeholder()));
    if (result.thumbnail.startsWith("/")) loadImage(img, result.thumbnail); else img.src = result.thumbnail;
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

function searchText(q) {
  preview.hidden = true;
  run(api(`/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k.value)}`), `“${q}”`);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = query.value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, k: k.value });
  if (location.search !== `?${params}`) history.pushState(null, "", `?${params}`);
  searchText(q);
});

function searchFromURL() {  // ?q= (and ?k=) in the address: fill the form and search
  const params = new URLSearchParams(location.search);
  const q = (params.get("q") || "").trim();
  if (params.get("k")) k.value = params.get("k");
  query.value = q;
  if (q) searchText(q);
}
window.addEventListener("popstate", searchFromURL);

function searchImage(file) {
  if (!file) return;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const data = new FormData();
  data.append("image", file);
  data.append("k", k.value);
  run(api("/search", { method: "POST", body: data }), file.name || "the image");
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

function about() {
  api("/v1/models").then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((body) => {
    $("about").textContent = `model: ${body.data.map((m) => m.id).join(", ")}`;
  }).catch(() => {});
}
about();
searchFromURL();
