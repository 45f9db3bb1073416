"""The demo page at ``GET /``: try a served model in a browser, with nothing but the server.

One self-contained HTML document (style and script inline, no external script, font or image,
so it works offline and behind any proxy). It reads ``GET /metadata`` (model, limits) and
``GET /options`` (the task's query options), generates an input per option, and POSTs the chosen
or dropped images to ``/predict`` as multipart form data, exactly as ``curl -F image=@a.png``
does: same limits, same errors, and the server's error text is what the page shows. The result
is drawn in the browser from the JSON, by its shape rather than by task name, so a third-party
task's results show too: ``detections`` as boxes, ``mask_png`` as a mask overlay, ``top_k`` as
bars; anything else as the image with its JSON.

The Content-Security-Policy sent with it allows only this script and style (by hash) and
requests to the same server, so the browser itself refuses anything external.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { color-scheme: light dark; --fg: #1d1f23; --muted: #5f6670; --bg: #f6f7f9; --card: #fff;
  --line: #d8dce2; --accent: #2563eb; --bad: #b42318; --badbg: #fdecea; }
@media (prefers-color-scheme: dark) { :root { --fg: #e7e9ee; --muted: #9aa3af; --bg: #15171b; --card: #1f2228;
  --line: #343943; --accent: #6ea1ff; --bad: #ff8a80; --badbg: #3a1d1b; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header, main { max-width: 980px; margin: 0 auto; padding: 12px 16px; }
header h1 { margin: 8px 0 2px; font-size: 20px; }
header p { margin: 2px 0; color: var(--muted); overflow-wrap: anywhere; }
.drop { display: block; border: 2px dashed var(--line); border-radius: 10px; padding: 22px 16px; text-align: center;
  background: var(--card); cursor: pointer; }
.drop.over { border-color: var(--accent); }
.drop input { display: block; margin: 10px auto 0; max-width: 100%; }
.drop strong { font-size: 16px; }
fieldset { border: 1px solid var(--line); border-radius: 10px; margin: 12px 0; padding: 8px 12px 12px;
  background: var(--card); display: flex; flex-wrap: wrap; gap: 10px 22px; }
fieldset[hidden] { display: none; }
legend { padding: 0 4px; color: var(--muted); }
.opt { display: flex; flex-direction: column; min-width: 150px; max-width: 300px; }
.opt label { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.opt input, .opt select { font: inherit; padding: 4px 6px; margin: 3px 0; }
.opt small { color: var(--muted); font-size: 12px; }
.bar-row { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; margin: 10px 0; }
button { font: inherit; padding: 6px 16px; border-radius: 8px; border: 1px solid var(--accent); background: var(--accent);
  color: #fff; cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
#status { color: var(--muted); }
.error { border: 1px solid var(--bad); background: var(--badbg); color: var(--bad); border-radius: 8px; padding: 10px 12px;
  white-space: pre-wrap; overflow-wrap: anywhere; }
.error[hidden] { display: none; }
#results { display: grid; gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px; margin: 0;
  display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.card canvas { max-width: 100%; height: auto; border-radius: 4px; image-rendering: auto; }
.card canvas.pixelated { image-rendering: pixelated; }
.card figcaption { flex: 1 1 240px; min-width: 200px; }
.card h2 { font-size: 15px; margin: 0 0 6px; overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 13px; }
.bars { display: grid; grid-template-columns: minmax(60px, max-content) 1fr 4.5em; gap: 4px 8px; align-items: center;
  font-size: 14px; }
.bars .track { background: var(--line); border-radius: 4px; height: 14px; overflow: hidden; }
.bars .fill { background: var(--accent); height: 100%; width: 0; }
.bars .num { text-align: right; font-variant-numeric: tabular-nums; }
.legend { list-style: none; padding: 0; margin: 0; font-size: 14px; }
.legend li { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
.swatch { width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 1px solid var(--line); }
details { margin: 14px 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 8px 12px; }
summary { cursor: pointer; color: var(--muted); }
pre { margin: 8px 0 0; max-height: 420px; overflow: auto; font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
footer { max-width: 980px; margin: 0 auto; padding: 4px 16px 24px; color: var(--muted); font-size: 13px; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; }
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
// the app may be mounted under a prefix (Ray Serve route_prefix): its routes are relative to the page
const base = location.pathname.replace(/\/?$/, "/");
let meta = null, files = [], running = false, again = false, optionDefaults = {};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function showError(text) { const box = $("error"); box.textContent = text; box.hidden = !text; }
function status(text) { $("status").textContent = text; }
function bytes(n) { return n >= 1048576 ? (n / 1048576).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(0) + " kB" : n + " bytes"; }

// Pascal VOC's colour map, as the server's palette(): mask PNGs and boxes get the same colours
function colour(i) {
  let r = 0, g = 0, b = 0, c = i;
  for (let j = 0; j < 8; j++) {
    r |= ((c >> 0) & 1) << (7 - j); g |= ((c >> 1) & 1) << (7 - j); b |= ((c >> 2) & 1) << (7 - j); c >>= 3;
  }
  return [r, g, b];
}
const css = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
const ink = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 ? "#000" : "#fff");

async function getJSON(path) {
  const resp = await fetch(base + path, {headers: {Accept: "application/json"}});
  const text = await resp.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { /* not JSON: shown as text below */ }
  if (!resp.ok) throw new Error(`GET ${path}: ${resp.status} ${data && data.error ? data.error : text.slice(0, 300)}`);
  return data;
}

function optionInput(opt) {
  const id = "opt-" + opt.name;
  let input;
  if (Array.isArray(opt.choices) && opt.choices.length) {
    input = el("select", {id, name: opt.name}, el("option", {value: "", text: "default" + (opt.default != null ? ` (${opt.default})` : "")}));
    for (const c of opt.choices) input.append(el("option", {value: String(c), text: String(c)}));
  } else if (opt.type === "bool") {
    input = el("select", {id, name: opt.name}, el("option", {value: "", text: "default" + (opt.default != null ? ` (${opt.default})` : "")}),
               el("option", {value: "true", text: "true"}), el("option", {value: "false", text: "false"}));
  } else {
    const numeric = opt.type === "int" || opt.type === "float";
    input = el("input", {id, name: opt.name, type: numeric ? "number" : "text", inputmode: opt.type === "int" ? "numeric" : "decimal"});
    if (numeric) input.step = opt.type === "int" ? "1" : "any";
    if (opt.min != null) input.min = opt.min;
    if (opt.max != null) input.max = opt.max;
    if (opt.default != null) input.placeholder = "default " + opt.default;
  }
  const range = opt.min != null || opt.max != null ? ` (${opt.min ?? ""} to ${opt.max ?? ""})` : "";
  const hint = (opt.help || "") + range;
  return el("div", {class: "opt"}, el("label", {for: id, text: opt.name}), input, hint ? el("small", {text: hint}) : null);
}

function query() {
  const q = new URLSearchParams();
  for (const input of $("options").querySelectorAll("input, select")) {
    if (input.value.trim() !== "") q.set(input.name, input.value.trim());
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

function shortened(key, value) {
  return key === "mask_png" && typeof value === "string" && value.length > 80
    ? value.slice(0, 48) + `... (${value.length} characters of base64 PNG, drawn above)` : value;
}

async function predict() {
  if (!files.length) return;
  if (running) { again = true; return; }
  running = true;
  $("run").disabled = true;
  showError("");
  const total = files.reduce((n, f) => n + f.size, 0);
  try {
    const body = new FormData();
    for (const f of files) body.append("image", f, f.name);
    const url = base + "predict" + query();
    status(`Sending ${files.length} image${files.length > 1 ? "s" : ""} (${bytes(total)})...`);
    const started = performance.now();
    let resp, text;
    try {
      resp = await fetch(url, {method: "POST", body});
      text = await resp.text();
    } catch (e) {
      showError(`The request did not complete (${e.message}): the server stopped, or closed the connection ` +
                `before answering (a body far over its --max-body-mb can end so on a slow network)`);
      status("");
      return;
    }
    const ms = Math.round(performance.now() - started);
    let data = null;
    try { data = JSON.parse(text); } catch (e) { /* a proxy's plain-text answer */ }
    $("json").textContent = data ? JSON.stringify(data, shortened, 1) : text;
    $("request").textContent = `POST ${url.replace(base, "/")}`;
    if (!resp.ok) {
      showError(`${resp.status}: ${data && data.error ? data.error : (text.slice(0, 500) || resp.statusText)}`);
      $("results").replaceChildren();
      status("");
      return;
    }
    $("results").replaceChildren();
    try {
      for (let i = 0; i < data.predictions.length; i++) await render(files[i], data.predictions[i]);
    } catch (e) {
      showError(`The answer came (below) but drawing it failed: ${e.message}`);
    }
    status(`${data.predictions.length} result${data.predictions.length > 1 ? "s" : ""} in ${ms} ms`);
  } finally {
    running = false;
    $("run").disabled = !files.length;
    if (again) { again = false; predict(); }
  }
}

async function decodeLocally(file) {
  try { return await createImageBitmap(file); } catch (e) { return null; }  // TIFF, PPM: not for browsers
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("undecodable mask PNG"));
    img.src = src;
  });
}

async function render(file, pred) {
  const classes = (meta && meta.metadata && meta.metadata.classes) || [];
  const caption = el("figcaption", {}, el("h2", {text: pred.file || file.name}));
  const card = el("figure", {class: "card"});
  const bitmap = await decodeLocally(file);
  const w = pred.width || (bitmap && bitmap.width), h = pred.height || (bitmap && bitmap.height);
  if (w && h) {
    // small images are enlarged (a 32-px image would be unreadable); large ones drawn at full size
    const scale = Math.max(1, Math.floor(360 / Math.max(w, h)));
    const picture = (cls) => {
      const canvas = el("canvas", {"data-scale": scale, class: cls});
      canvas.width = w * scale; canvas.height = h * scale;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = scale === 1;
      if (scale > 1) canvas.classList.add("pixelated");
      if (bitmap) ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      else { ctx.fillStyle = "#888"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
      return [canvas, ctx];
    };
    const [canvas, ctx] = picture("drawn");
    if (typeof pred.mask_png === "string") {
      card.append(picture("plain")[0]);  // a mask hides what it covers: the image beside it
      await drawMask(ctx, pred, canvas);
    }
    if (Array.isArray(pred.detections)) drawBoxes(ctx, pred.detections, scale, canvas);
    card.append(canvas);
    if (!bitmap) caption.append(el("p", {class: "note", text: "This browser cannot show this image format; the result is drawn on grey."}));
    else if (pred.width && (bitmap.width !== pred.width || bitmap.height !== pred.height)) {
      caption.append(el("p", {class: "note", text: `The browser shows this image as ${bitmap.width}x${bitmap.height} ` +
        `(EXIF orientation); the server read it as stored, ${pred.width}x${pred.height}.`}));
    }
  } else {
    caption.append(el("p", {class: "note", text: "This browser cannot show this image format."}));
  }
  if (Array.isArray(pred.top_k)) caption.append(topBars(pred.top_k));
  if (Array.isArray(pred.detections)) caption.append(detectionList(pred.detections));
  if (pred.pixel_fraction && typeof pred.pixel_fraction === "object") caption.append(maskLegend(pred.pixel_fraction, classes));
  card.append(caption);
  $("results").append(card);
}

function topBars(top) {
  const grid = el("div", {class: "bars"});
  for (const t of top) {
    const fill = el("div", {class: "fill"});
    fill.style.width = (100 * Math.max(0, Math.min(1, t.probability))).toFixed(1) + "%";
    grid.append(el("span", {text: t.class}), el("div", {class: "track"}, fill),
                el("span", {class: "num", text: (100 * t.probability).toFixed(1) + "%"}));
  }
  return grid;
}

function detectionList(dets) {
  const thresh = drawThreshold(), shown = dets.filter((d) => d.score >= thresh);
  const counts = {};
  for (const d of shown) counts[d.class] = (counts[d.class] || 0) + 1;
  const text = Object.entries(counts).map(([c, n]) => `${n} ${c}`).join(", ") || "none";
  const which = thresh > -Infinity ? `drawn (score >= ${thresh})` : "drawn";
  return el("p", {}, `${dets.length} detection${dets.length === 1 ? "" : "s"}; ${which}: ${text}`);
}

// A task that declares a draw_thresh option (detection's, for `predict --draw`) sets with it
// which boxes are drawn here too: typed in, or its default; without one every box is drawn.
function drawThreshold() {
  const input = $("opt-draw_thresh");
  const v = input ? parseFloat(input.value.trim() || (optionDefaults.draw_thresh ?? "")) : NaN;
  return Number.isFinite(v) ? v : -Infinity;
}

function drawBoxes(ctx, dets, scale, canvas) {
  const thresh = drawThreshold();
  const lw = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 220));
  const px = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 30));
  ctx.font = `600 ${px}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of [...dets].sort((a, b) => a.score - b.score)) {
    if (d.score < thresh) continue;
    const [x, y, bw, bh] = d.bbox.map((v) => v * scale);
    const rgb = colour((d.label | 0) + 1);
    ctx.lineWidth = lw; ctx.strokeStyle = css(rgb);
    ctx.strokeRect(x, y, bw, bh);
    const label = `${d.class} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 6, th = px + 4;
    const ty = y - th >= 0 ? y - th : y;
    ctx.fillStyle = css(rgb); ctx.fillRect(x - lw / 2, ty, tw, th);
    ctx.fillStyle = ink(rgb); ctx.fillText(label, x + 3 - lw / 2, ty + 2);
  }
}

async function drawMask(ctx, pred, canvas) {
  const img = await loadImage("data:image/png;base64," + pred.mask_png);
  const off = document.createElement("canvas");
  off.width = img.naturalWidth; off.height = img.naturalHeight;
  const octx = off.getContext("2d");
  octx.drawImage(img, 0, 0);
  const pixels = octx.getImageData(0, 0, off.width, off.height);
  const p = pixels.data;
  for (let i = 0; i < p.length; i += 4) {
    // class 0 (black in the palette) is left as it is, as the server's draw() does
    p[i + 3] = p[i] || p[i + 1] || p[i + 2] ? 150 : 0;
  }
  octx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}

function maskLegend(fractions, classes) {
  const list = el("ul", {class: "legend"});
  for (const [name, f] of Object.entries(fractions).sort((a, b) => b[1] - a[1])) {
    const i = classes.indexOf(name);
    const swatch = el("span", {class: "swatch"});
    swatch.style.background = i > 0 ? css(colour(i)) : "transparent";
    list.append(el("li", {}, swatch, `${name}: ${(100 * f).toFixed(1)}% of pixels${i === 0 ? " (not coloured)" : ""}`));
  }
  return list;
}

function choose(list) {
  files = Array.from(list || []);
  $("run").disabled = !files.length;
  if (files.length) predict();
}

async function start() {
  try {
    const [m, o] = await Promise.all([getJSON("metadata"), getJSON("options")]);
    meta = m;
    document.title = `${m.model} - visionkit`;
    $("model").textContent = `${m.model}: ${m.summary}`;
    const lim = m.server.limits;
    $("limits").textContent = `Up to ${lim.max_images} image${lim.max_images > 1 ? "s" : ""} and ${bytes(lim.max_body_bytes)} per request, ` +
      `${(lim.max_pixels / 1e6).toLocaleString()} megapixels per image (PNG, JPEG, BMP, WebP, TIFF, PPM/PGM).`;
    const box = $("options");
    for (const opt of o.options || []) { box.append(optionInput(opt)); optionDefaults[opt.name] = opt.default; }
    box.hidden = !(o.options || []).length;
    $("curl").textContent = `curl -F image=@photo.jpg ${location.origin}${base}predict`;
    $("file").disabled = false;
    status("Choose or drop an image.");
  } catch (e) {
    showError(e.message);
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files));
$("form").addEventListener("submit", (e) => { e.preventDefault(); predict(); });
$("options").addEventListener("change", () => predict());
const drop = $("drop");
for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); choose(e.dataTransfer.files); });
// a file dropped next to the zone must not make the browser navigate away from the page
for (const t of ["dragover", "drop"]) window.addEventListener(t, (e) => e.preventDefault());
start();
"""

BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>visionkit</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body>
<header>
<h1>visionkit</h1>
<p id="model">Loading the model's description...</p>
<p id="limits"></p>
</header>
<main>
<form id="form" novalidate>
<label id="drop" class="drop" for="file"><strong>Choose or drop an image</strong>
<input type="file" id="file" name="image" multiple disabled
 accept="image/png,image/jpeg,image/bmp,image/webp,image/tiff,.png,.jpg,.jpeg,.bmp,.webp,.tif,.tiff,.ppm,.pgm">
</label>
<fieldset id="options" hidden><legend>Options (query parameters of POST /predict)</legend></fieldset>
<div class="bar-row">
<button type="submit" id="run" disabled>Predict again</button>
<span id="status" role="status"></span>
</div>
</form>
<p id="error" class="error" role="alert" hidden></p>
<section id="results" aria-live="polite"></section>
<details open><summary>JSON answer <code id="request"></code></summary><pre id="json"></pre></details>
</main>
<footer>The same request from a shell: <code id="curl">curl -F image=@photo.jpg SERVER/predict</code>.
Routes: <code>POST /predict</code>, <code>GET /metadata</code>, <code>GET /options</code>, <code>GET /health</code>.</footer>
<script>{script}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HTML = BODY.format(style=STYLE, script=SCRIPT)

#: only this page's own script and style run; it may talk to its own server and nothing else
CSP = ("default-src 'none'; "
       f"script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
       "img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
