// nanoseg app: drop micrographs, see outlines, click particles, download results.
// Plain JavaScript, no framework: the server (nanoseg.app.web) does all the analysis with nanoseg predict's code.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";
const cards = new Map();  // image id -> card element
let busy = false;

// ------------------------------------------------------------------------- server

async function api(method, url, body) {
  const resp = await fetch(url, { method, body });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (!resp.ok) throw new Error((data && data.message) || `HTTP ${resp.status}`);
  return data;
}

function upload(file, pixelSize, onProgress) {
  // POST one file with upload progress (fetch cannot report it); resolves to the image's result
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    if (pixelSize) form.append("pixel_size", pixelSize);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/images");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1);
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { message: xhr.responseText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new Error((data && data.message) || `HTTP ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error(`${file.name}: no answer from the nanoseg app; is it still running?`));
    xhr.send(form);
  });
}

// ------------------------------------------------------------------------- progress and messages

function setStatus(state, text, fraction) {
  $("#progress-box").hidden = false;
  const status = $("#status");
  status.dataset.state = state;
  status.textContent = text;
  $("#progress").value = fraction;
}

function showError(message) {
  const li = document.createElement("li");
  li.textContent = message;
  $("#errors").append(li);
}

async function handleFiles(files) {
  files = Array.from(files);
  if (!files.length || busy) return;
  busy = true;
  $("#errors").replaceChildren();
  const pixelSize = $("#pixel-size").value.trim();
  let done = 0, refused = 0, particles = 0;
  for (const [i, file] of files.entries()) {
    const head = `${i + 1} of ${files.length}: ${file.name}`;
    try {
      const res = await upload(file, pixelSize, (f) => {
        setStatus("busy", f < 1 ? `Uploading ${head} (${Math.round(100 * f)} %)` : `Analysing ${head}…`,
                  (i + 0.3 * f) / files.length);
      });
      renderImage(res);
      done += 1;
      particles += res.summary.n_particles;
    } catch (err) {
      refused += 1;
      showError(err.message);
    }
    setStatus("busy", `Analysed ${i + 1} of ${files.length}`, (i + 1) / files.length);
  }
  await refreshPsd();
  const tail = refused ? `; ${refused} refused (see the messages)` : "";
  setStatus("done", `Done: ${done} image(s), ${particles} particles${tail}.`, 1);
  busy = false;
}

// ------------------------------------------------------------------------- one image

const FILE_LABELS = [["_labels.tif", "labels"], ["_overlay.png", "overlay"], ["_mask.png", "mask"],
                     ["_rois.zip", "Fiji ROI set"]];

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  return abs >= 1000 ? value.toFixed(0) : value.toPrecision(digits);
}

function describe(res) {
  const px = res.pixel_size_nm ? `pixel size ${fmt(res.pixel_size_nm, 4)} nm (${res.pixel_size_source})`
                               : "no pixel size: sizes in px";
  const bar = res.databar_row < res.height ? `data bar from row ${res.databar_row}` : "no data bar found";
  const zoom = res.scale_factor !== 1 ? ` · inferred at zoom ${fmt(res.scale_factor)}` : "";
  return `${res.width} × ${res.height} px · ${px} · ${bar}${zoom} · ${res.polarity} particles · ` +
         `${fmt(res.seconds)} s`;
}

function drawOutlines(svg, res) {
  svg.setAttribute("viewBox", `0 0 ${res.width} ${res.height}`);
  svg.replaceChildren();
  if (res.databar_row < res.height) {
    const rect = document.createElementNS(SVG, "rect");
    Object.entries({ x: 0, y: res.databar_row, width: res.width, height: res.height - res.databar_row,
                     class: "databar" }).forEach(([k, v]) => rect.setAttribute(k, v));
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", res.width - 8);
    label.setAttribute("y", res.databar_row - 6);
    label.setAttribute("text-anchor", "end");
    label.setAttribute("class", "databar-label");
    label.style.fontSize = `${Math.max(12, res.width / 60)}px`;
    label.textContent = `data bar (from row ${res.databar_row})`;
    svg.append(rect, label);
  }
  for (const p of res.particles) {
    const pts = res.outlines[String(p.id)];
    if (!pts || !pts.length) continue;
    const poly = document.createElementNS(SVG, "polygon");
    poly.setAttribute("points", pts.map(([x, y]) => `${x},${y}`).join(" "));
    poly.setAttribute("class", p.measurable ? "measurable" : "excluded");
    poly.dataset.id = p.id;
    svg.append(poly);
  }
}

function showParticle(card, res, id) {
  const p = res.particles.find((row) => row.id === id);
  if (!p) return;
  card.querySelectorAll("polygon.selected").forEach((el) => el.classList.remove("selected"));
  const poly = card.querySelector(`polygon[data-id="${id}"]`);
  if (poly) poly.classList.add("selected");
  const u = res.unit;
  const rows = [
    ["particle id", p.id],
    ["measurable", p.measurable],
    [`ECD (${u})`, p[`ecd_${u}`]],
    [`area (${u}²)`, p[`area_${u}2`]],
    ["area (px)", p.area_px],
    [`Feret max (${u})`, p[`feret_max_${u}`]],
    [`Feret min (${u})`, p[`feret_min_${u}`]],
    ["aspect ratio", p.aspect_ratio],
    ["circularity", p.circularity],
    ["solidity", p.solidity],
    ["centroid row, col (px)", `${fmt(p.centroid_row_px, 4)}, ${fmt(p.centroid_col_px, 4)}`],
    ["touches the border", p.touches_border],
    ["touches the data bar", p.touches_databar],
    ["mean probability", p.mean_probability],
  ];
  const table = card.querySelector(".measure");
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"), b = document.createElement("td");
    a.textContent = k;
    b.textContent = fmt(v);
    tr.append(a, b);
    return tr;
  }));
  card.querySelector(".pick").hidden = true;
  card.dataset.selected = String(id);
}

function fileLinks(res) {
  const links = [document.createTextNode("This image: ")];
  for (const [suffix, label] of FILE_LABELS) {
    const name = res.files.find((f) => f.endsWith(suffix));
    if (!name) continue;
    const a = document.createElement("a");
    a.href = `/api/images/${res.id}/files/${encodeURIComponent(name)}`;
    a.download = name;
    a.textContent = label;
    a.title = name;
    links.push(a);
  }
  return links;
}

function renderImage(res) {
  let card = cards.get(res.id);
  const fresh = !card;
  if (fresh) {
    card = $("#card-template").content.firstElementChild.cloneNode(true);
    cards.set(res.id, card);
    $("#images").append(card);
    wireCard(card, res.id);
  }
  card.result = res;
  card.dataset.id = res.id;
  card.dataset.particles = res.summary.n_particles;
  card.dataset.measurable = res.summary.n_measurable;
  $(".name", card).textContent = res.name;
  $(".counts", card).textContent = `${res.summary.n_particles} particles, ${res.summary.n_measurable} measurable`;
  $(".meta", card).textContent = describe(res);
  $(".notes", card).replaceChildren(...res.notes.map((n) => {
    const li = document.createElement("li");
    li.textContent = n;
    return li;
  }));
  $("img", card).src = `/api/images/${res.id}/view.png?v=${Date.now()}`;
  drawOutlines($("svg", card), res);
  $("input[name=pixel_size]", card).value = res.pixel_size_override || "";
  $(".files", card).replaceChildren(...fileLinks(res));
  $(".measure", card).replaceChildren();
  $(".pick", card).hidden = false;
  delete card.dataset.selected;
}

function wireCard(card, id) {
  $("svg", card).addEventListener("click", (e) => {
    const poly = e.target.closest("polygon");
    if (poly) showParticle(card, card.result, Number(poly.dataset.id));
  });
  $(".remove", card).addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/images/${id}`);
      card.remove();
      cards.delete(id);
      await refreshPsd();
    } catch (err) { showError(err.message); }
  });
  $(".rerun", card).addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    busy = true;
    const status = $(".rerun-status", card);
    const button = $(".rerun button", card);
    status.className = "rerun-status";
    status.textContent = "analysing…";
    button.disabled = true;
    card.dataset.rerun = "busy";
    const form = new FormData();
    form.append("pixel_size", $("input[name=pixel_size]", card).value.trim());
    try {
      renderImage(await api("POST", `/api/images/${id}/rerun`, form));
      status.textContent = "done";
      await refreshPsd();
    } catch (err) {
      status.className = "rerun-status bad";
      status.textContent = err.message;
    }
    button.disabled = false;
    card.dataset.rerun = "done";
    busy = false;
  });
}

// ------------------------------------------------------------------------- size distribution

function niceTicks(lo, hi, n = 5) {
  const span = hi - lo || 1;
  const raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function lognormPdf(x, median, gsd) {
  const s = Math.log(gsd), z = (Math.log(x) - Math.log(median)) / s;
  return Math.exp(-0.5 * z * z) / (x * s * Math.sqrt(2 * Math.PI));
}

function drawPsd(svg, d) {
  const W = 640, H = 300, L = 70, R = 14, T = 14, B = 42;
  svg.replaceChildren();
  const edges = d.hist_edges, counts = d.hist_counts, n = d.count;
  if (!edges.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" },
                  `${n} measurable particle(s): too few for a distribution`));
    return;
  }
  const dens = counts.map((c, i) => c / (n * (edges[i + 1] - edges[i])));
  const x0 = edges[0], x1 = edges[edges.length - 1];
  const grid = Array.from({ length: 300 }, (_, i) => x0 + (x1 - x0) * (i + 1) / 300);
  const fit = d.lognorm_median && d.lognorm_gsd > 1
    ? grid.map((x) => lognormPdf(x, d.lognorm_median, d.lognorm_gsd)) : [];
  const ymax = 1.1 * Math.max(...dens, ...fit.filter(Number.isFinite));
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - y / ymax * (H - T - B);
  if (Number.isFinite(d.median_ci_low)) {
    svg.append(el("rect", { class: "ci", x: sx(d.median_ci_low), y: T,
                            width: Math.max(1, sx(d.median_ci_high) - sx(d.median_ci_low)), height: H - T - B }));
  }
  dens.forEach((v, i) => svg.append(el("rect", {
    class: "bar", x: sx(edges[i]) + 0.5, y: sy(v), width: Math.max(0.5, sx(edges[i + 1]) - sx(edges[i]) - 1),
    height: H - B - sy(v) })));
  if (fit.length) {
    svg.append(el("polyline", { class: "fit", points: grid.map((x, i) => `${sx(x)},${sy(fit[i])}`).join(" ") }));
  }
  if (Number.isFinite(d.median)) {
    svg.append(el("line", { class: "median", x1: sx(d.median), x2: sx(d.median), y1: T, y2: H - B }));
  }
  svg.append(el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
             el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  for (const t of niceTicks(x0, x1)) {
    svg.append(el("line", { class: "axis", x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4 }),
               el("text", { x: sx(t), y: H - B + 17, "text-anchor": "middle" }, fmt(t)));
  }
  for (const t of niceTicks(0, ymax, 4)) {
    svg.append(el("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, String(Number(t.toPrecision(2)))));
  }
  svg.append(el("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, `ECD (${d.unit})`),
             el("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
                          transform: `rotate(-90 14 ${(T + H - B) / 2})` }, `density (1/${d.unit})`));
  if (fit.length) {
    svg.append(el("text", { x: W - R - 4, y: T + 14, "text-anchor": "end" },
                  `lognormal fit: median ${fmt(d.lognorm_median)} ${d.unit}, GSD ${fmt(d.lognorm_gsd)}`),
               el("text", { x: W - R - 4, y: T + 30, "text-anchor": "end" },
                  "shaded: 95 % CI of the median"));
  }
}

function psdStats(s) {
  const d = s.ecd_distribution, u = d.unit;
  const ci = (lo, hi) => (Number.isFinite(lo) ? ` (95 % CI ${fmt(lo)}–${fmt(hi)})` : "");
  const rows = [
    ["images", s.n_images],
    ["particles", `${s.n_particles} (${s.n_measurable} measurable)`],
    [`median ECD`, d.count ? `${fmt(d.median)} ${u}${ci(d.median_ci_low, d.median_ci_high)}` : "–"],
    ["GSD", d.count ? `${fmt(d.gsd)}${ci(d.gsd_ci_low, d.gsd_ci_high)}` : "–"],
    [`mean ECD`, d.count ? `${fmt(d.mean)} ${u}` : "–"],
    [`d10 – d90`, d.count ? `${fmt(d.d10)} – ${fmt(d.d90)} ${u}` : "–"],
    ["lognormal fit", d.count ? `median ${fmt(d.lognorm_median)} ${u}, GSD ${fmt(d.lognorm_gsd)}` : "–"],
  ];
  const table = document.createElement("table");
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("th"), b = document.createElement("td");
    a.textContent = k;
    b.textContent = v;
    tr.append(a, b);
    return tr;
  }));
  const note = document.createElement("p");
  note.className = "hint";
  note.textContent = `${s.unit_note}; ECD of the measurable particles, bootstrap CIs (${d.n_boot} resamples).`;
  return [table, note];
}

async function refreshPsd() {
  document.body.dataset.psd = "loading";
  try {
    const s = await api("GET", "/api/psd");
    $("#psd-box").hidden = s.n_images === 0;
    drawPsd($("#psd"), s.ecd_distribution);
    $("#psd-stats").replaceChildren(...psdStats(s));
    document.body.dataset.total = s.n_particles;
  } catch (err) { showError(err.message); }
  document.body.dataset.psd = "ready";
}

// ------------------------------------------------------------------------- start

async function init() {
  try {
    const info = await api("GET", "/api/info");
    const lim = info.limits;
    $("#model").textContent = `model ${info.model}` + (info.variant ? ` (${info.variant})` : "");
    $("#limits").textContent = `Up to ${lim.max_images} images on the page, ${Math.round(lim.max_image_bytes / 2 ** 20)} ` +
      `MiB and ${(lim.max_pixels / 1e6).toFixed(1)} Mpx per image.`;
    for (const res of await api("GET", "/api/images")) renderImage(res);
    await refreshPsd();
  } catch (err) { showError(err.message); }
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handleFiles(e.dataTransfer.files);
  });
  $("#files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("#clear").addEventListener("click", async () => {
    try {
      await api("DELETE", "/api/images");
      cards.forEach((card) => card.remove());
      cards.clear();
      $("#errors").replaceChildren();
      $("#progress-box").hidden = true;
      await refreshPsd();
    } catch (err) { showError(err.message); }
  });
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
