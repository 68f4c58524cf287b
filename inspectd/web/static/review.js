// The review queue: one key labels the image and shows the next one. The label is in the database when
// the status line says so (the server answers after its commit). Keys: P present, A absent, S skip,
// U undo, H heatmap; a mouse drag on the image draws where the symbol is (sent with a present label).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { items: [], index: 0, history: [], box: null, drag: null, heat: false };

function filters() {
  const params = new URLSearchParams();
  for (const el of $("filters").elements) {
    if (el.name && el.value.trim()) params.set(el.name, el.value.trim());
  }
  return params;
}

function headers() {
  const h = { "Content-Type": "application/json", "X-Inspectd-Request": "1" };
  const who = $("who");
  if (who && who.value.trim()) {
    h["X-Inspectd-User"] = who.value.trim();
    localStorage.setItem("inspectd-who", who.value.trim());
  }
  return h;
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function load() {
  const response = await fetch("/ui/api/queue?" + filters().toString());
  const body = await response.json();
  if (!response.ok) { say(body.error || response.statusText, true); return; }
  state.items = body.items;
  state.index = 0;
  show();
}

function current() { return state.items[state.index]; }

function place(el, box, item) {
  const img = $("image");
  const sx = img.clientWidth / item.width, sy = img.clientHeight / item.height;
  el.style.left = box[0] * sx + "px"; el.style.top = box[1] * sy + "px";
  el.style.width = box[2] * sx + "px"; el.style.height = box[3] * sy + "px";
  el.hidden = false;
}

function show() {
  const item = current();
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  state.box = null;
  $("drawn-box").hidden = true;
  $("model-box").hidden = true;
  $("heat").hidden = true;
  state.heat = false;
  if (!item) return;
  $("result-id").textContent = item.id;
  $("name").textContent = item.original_name;
  $("score").textContent = item.score.toFixed(3);
  $("threshold").textContent = item.threshold.toFixed(3);
  $("verdict").textContent = item.verdict;
  $("version").textContent = item.model_version;
  $("why").textContent = item.why === "uncertain" ? "nearest the threshold" : "a confident sample";
  const img = $("image");
  img.onload = () => { if (item.box && item === current()) place($("model-box"), item.box, item); };
  img.src = "/ui/results/" + item.id + "/image";
}

async function send(item, label, box) {
  const response = await fetch("/ui/api/labels", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ id: item.id, label: label, box: box }),
  });
  const body = await response.json();
  if (!response.ok) { say(body.error || response.statusText, true); return false; }
  return body;
}

async function label(value) {
  const item = current();
  if (!item) return;
  const box = value === "present" ? state.box : null;
  const saved = await send(item, value, box);
  if (!saved) return;
  state.history.push(item);
  say("result " + item.id + ": " + value + " (by " + saved.labeled_by + ")");
  document.body.dataset.labeled = String(item.id);
  state.index += 1;
  show();
}

async function undo() {
  const item = state.history.pop();
  if (!item) { say("nothing to undo"); return; }
  const saved = await send(item, null, null);
  if (!saved) return;
  state.index = Math.max(0, state.index - 1);
  state.items.splice(state.index, 0, item);
  if (state.items[state.index + 1] === item) state.items.splice(state.index + 1, 1);
  say("result " + item.id + ": label undone");
  document.body.dataset.labeled = "undo-" + item.id;
  show();
}

function skip() {
  if (!current()) return;
  say("result " + current().id + ": skipped");
  state.index += 1;
  show();
}

function heat() {
  const item = current();
  if (!item) return;
  state.heat = !state.heat;
  $("heat").hidden = !state.heat;
  if (state.heat) $("heat").src = "/ui/results/" + item.id + "/explain";
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  const key = event.key.toLowerCase();
  const actions = { p: () => label("present"), a: () => label("absent"), s: skip, u: undo, h: heat };
  if (actions[key]) { event.preventDefault(); actions[key](); }
});

// a drag on the image: where the symbol is, in frame pixels
$("frame").addEventListener("mousedown", (event) => {
  const rect = $("image").getBoundingClientRect();
  state.drag = { x: event.clientX - rect.left, y: event.clientY - rect.top, rect: rect };
});
document.addEventListener("mousemove", (event) => {
  const item = current();
  if (!state.drag || !item) return;
  const d = state.drag;
  const x1 = Math.max(0, Math.min(d.x, event.clientX - d.rect.left));
  const y1 = Math.max(0, Math.min(d.y, event.clientY - d.rect.top));
  const x2 = Math.min(d.rect.width, Math.max(d.x, event.clientX - d.rect.left));
  const y2 = Math.min(d.rect.height, Math.max(d.y, event.clientY - d.rect.top));
  const sx = item.width / d.rect.width, sy = item.height / d.rect.height;
  state.box = [Math.round(x1 * sx), Math.round(y1 * sy), Math.round((x2 - x1) * sx), Math.round((y2 - y1) * sy)];
  place($("drawn-box"), state.box, item);
});
document.addEventListener("mouseup", () => {
  if (state.drag && state.box && (state.box[2] < 2 || state.box[3] < 2)) {
    state.box = null;
    $("drawn-box").hidden = true;
  }
  state.drag = null;
});

$("filters").addEventListener("submit", (event) => { event.preventDefault(); load(); });
if ($("who")) $("who").value = localStorage.getItem("inspectd-who") || "";
load();
