// clip serve's page: text search over the collection (?q=... runs on load), an image for zero-shot
// labels or for similar items. Plain DOM; every value from the server goes in as text, never as HTML.
"use strict";

const DEFAULT_K = "20";
const SHOWN_LABELS = 5;
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false, where = "status") {
  $(where).textContent = text;
  $(where).classList.toggle("error", isError);
}

const setImageStatus = (text, isError = false) => setStatus(text, isError, "image-status");

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : response.status + " " + response.statusText;
    throw new Error(why);
  }
  return body;
}

function card(result) {
  const figure = document.createElement("figure");
  figure.className = "result";
  const image = document.createElement("img");
  image.src = "/v1/thumb/" + result.row;
  image.alt = result.caption || result.path;
  image.loading = "lazy";
  image.title = result.path;
  const caption = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  const words = document.createElement("span");
  words.className = "caption";
  words.textContent = result.caption || result.path;
  caption.append(score, words);
  figure.append(image, caption);
  return figure;
}

function show(results, what) {
  $("results").replaceChildren(...results.map(card));
  setStatus(results.length ? results.length + " results " + what : "nothing found " + what);
}

async function searchText(query, k) {
  setStatus("searching…");
  const params = new URLSearchParams({ q: query, k: k });
  try {
    const body = await answer(await fetch("/v1/search?" + params));
    show(body.results, "for “" + query + "”");
    const shared = new URLSearchParams({ q: query });
    if (k !== DEFAULT_K) shared.set("k", k);
    history.replaceState(null, "", "?" + shared);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

function chosenImage() {
  const file = $("image").files[0];
  if (!file) setImageStatus("choose an image first", true);
  return file;
}

async function classify() {
  const file = chosenImage();
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  const classes = $("classes").value;
  if (classes) {
    form.append("classes", classes);
  } else {
    const labels = $("labels").value.split(",").map((s) => s.trim()).filter((s) => s);
    if (!labels.length) {
      setImageStatus("type some labels, separated by commas, or pick a set of classes", true);
      return;
    }
    labels.forEach((label) => form.append("labels", label));
  }
  setImageStatus("labelling…");
  try {
    const body = await answer(await fetch("/v1/classify", { method: "POST", body: form }));
    const items = body.labels.slice(0, SHOWN_LABELS).map((entry) => {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round(200 * entry.probability) + "px";
      li.append((100 * entry.probability).toFixed(1) + "%  " + entry.label, bar);
      return li;
    });
    $("labels-out").replaceChildren(...items);
    setImageStatus("");
  } catch (err) {
    setImageStatus(err.message, true);
  }
}

async function similar() {
  const file = chosenImage();
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("k").value);
  setStatus("searching…");
  try {
    const body = await answer(await fetch("/v1/search", { method: "POST", body: form }));
    setImageStatus("");
    show(body.results, "like " + file.name);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function start() {
  let health = null;
  try {
    health = await answer(await fetch("/healthz"));
  } catch (err) {
    setStatus("the server does not answer: " + err.message, true);
    return;
  }
  const collection = health.collection;
  $("about").textContent =
    health.model + (collection ? " · " + collection.items + " images" : " · no collection");
  if (!collection) {
    $("query").disabled = true;
    $("similar-button").disabled = true;
    $("query").placeholder = "no collection: start the server as clip serve COLLECTION";
  }
  const params = new URLSearchParams(location.search);
  const k = params.get("k");
  if (k && /^[0-9]+$/.test(k)) {
    if (![...$("k").options].some((option) => option.value === k)) $("k").add(new Option(k));
    $("k").value = k;
  }
  const query = params.get("q");
  if (query && collection) {
    $("query").value = query;
    await searchText(query, $("k").value);
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("query").value.trim();
  if (query) searchText(query, $("k").value);
});
$("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  classify();
});
$("similar-button").addEventListener("click", similar);
$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  if (file) preview.src = URL.createObjectURL(file);
  $("labels-out").replaceChildren();
});
start();
