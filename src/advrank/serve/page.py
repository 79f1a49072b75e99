"""The search page at ``/``: drop a picture (or choose one), see the ranked results as
thumbnails with their ids, labels and distances; click a result to search with it. Plain
HTML, CSS and JavaScript served by the app (no build step, nothing fetched from elsewhere);
it reads the same endpoints any client does (``/info``, ``/search``, ``/items/{id}`` and
their thumbnails), by relative URLs, so it works behind a path prefix too.
"""

from __future__ import annotations

#: what the page may load and run: its own inline code, the service's endpoints, and the
#: object URL of the picture being searched
POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
          "img-src 'self' blob:; connect-src 'self'; base-uri 'self'; form-action 'none'")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>advrank search</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:1rem 1.5rem;
 color:#1d1d1f;background:#f6f7f9;max-width:1400px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.3rem 1.2rem}
h1{font-size:1.35rem;margin:.2rem 0}
#about{color:#555;font-size:.9rem}
#drop{border:2px dashed #8a93a6;border-radius:12px;padding:1.1rem;text-align:center;
 background:#fff;margin:1rem 0;display:flex;flex-wrap:wrap;gap:.6rem 1.5rem;
 align-items:center;justify-content:center}
#drop.over{border-color:#2f6fe4;background:#eef4ff}
#pick{color:#2f6fe4;text-decoration:underline;cursor:pointer}
#query{display:flex;gap:1rem;align-items:center;margin-bottom:1rem}
#query img{width:96px;height:96px;object-fit:contain;background:#000;border-radius:6px;
 image-rendering:pixelated}
#status.error{color:#b3261e;font-weight:600}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:.8rem}
.hit{background:#fff;border:1px solid #dde1e8;border-radius:10px;padding:.45rem;
 font-size:.8rem;text-align:center;cursor:pointer}
.hit:hover{border-color:#2f6fe4}
.hit img{width:100%;aspect-ratio:1;object-fit:contain;background:#000;border-radius:6px;
 image-rendering:pixelated}
.rank{font-weight:700}.label{color:#2c5d2c}.dist{color:#666;font-variant-numeric:tabular-nums}
.name{color:#777;overflow-wrap:anywhere}
</style></head>
<body>
<header><h1>advrank search</h1><span id="about">asking the service what it holds&hellip;</span>
</header>
<div id="drop" tabindex="0" aria-label="drop a picture to search with it">
 <span>Drop a PNG or JPEG here, or <label id="pick">choose one<input type="file" id="file"
 accept="image/png,image/jpeg" hidden></label></span>
 <label>results <input id="k" type="number" min="1" value="10" style="width:4.5em"></label>
</div>
<section id="query" hidden><img id="qimg" alt="the picture searched">
 <div id="status" role="status"></div></section>
<section id="results" aria-live="polite"></section>
<script>
"use strict";
const $ = id => document.getElementById(id);
let info = null;
function say(text, bad) {
  $("status").textContent = text; $("status").className = bad ? "error" : ""; }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
fetch("info").then(r => r.json()).then(i => {
  info = i;
  const index = i.index && i.index.index ? i.index.index : "exact";
  $("about").textContent = `${i.model || "a model"} on ${i.dataset || "a gallery"}: ` +
    `${i.gallery_size} items, ${i.metric || ""} distance, ${index} search` +
    (i.scores ? "" : " (ids only: start it with --scores to see distances)");
  $("k").max = i.max_k; $("k").value = Math.min(10, i.max_k);
}).catch(() => { $("about").textContent = "the service does not answer /info"; });
async function search(blob, name) {
  $("query").hidden = false; $("qimg").src = URL.createObjectURL(blob);
  say("searching " + name + "\\u2026"); $("results").replaceChildren();
  const k = Math.max(1, parseInt($("k").value, 10) || 10);
  let r, a;
  try {
    r = await fetch("search?k=" + k, {method: "POST", body: blob,
      headers: {"content-type": blob.type || "application/octet-stream"}});
    a = await r.json();
  } catch (e) { say("the service did not answer: " + e, true); return; }
  if (!r.ok) { say(a.error || ("error " + r.status), true); return; }
  const items = await Promise.all(a.ids.map(id =>
    fetch("items/" + id).then(x => x.ok ? x.json() : {id}).catch(() => ({id}))));
  show(a, items);
  say(`${a.ids.length} nearest items to ${name}, nearest first`);
}
function show(a, items) {
  const out = $("results");
  a.ids.forEach((id, i) => {
    const it = items[i] || {id}, card = el("div", "hit");
    card.dataset.id = id; card.dataset.rank = i + 1;
    const img = el("img"); img.src = "items/" + id + "/thumbnail"; img.alt = "item " + id;
    img.loading = "lazy"; card.append(img, el("div", "rank", "#" + (i + 1) + "  id " + id));
    const label = it.class_name !== undefined && it.class_name !== null ? it.class_name :
      (it.label !== undefined && it.label !== null ? String(it.label) : "\\u2014");
    card.append(el("div", "label", "label " + label));
    card.append(el("div", "dist", a.scores ? "distance " + a.scores[i].toFixed(4) :
      "distance \\u2014"));
    if (it.name) card.append(el("div", "name", it.name));
    card.title = "search with item " + id;
    card.onclick = () => fetch("items/" + id + "/thumbnail").then(x => x.blob())
      .then(b => search(b, "item " + id));
    out.append(card);
  });
}
const drop = $("drop");
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", e => { e.preventDefault();
  const f = e.dataTransfer.files[0]; if (f) search(f, f.name); });
$("file").addEventListener("change", e => {
  const f = e.target.files[0]; if (f) search(f, f.name); });
</script>
</body></html>
"""
