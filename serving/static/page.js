// The service's web page (index.html): pick a model, drop an image or draw a digit, see the
// answer, what the model looks at (POST .../explain) and what a 3x3 kernel does to the image.
// Plain JavaScript, no libraries: the service works without a network.
"use strict";
const $ = (id) => document.getElementById(id);
const tokenBox = $("token");
tokenBox.value = localStorage.getItem("waldo-token") || "";
tokenBox.addEventListener("change", () => {
  localStorage.setItem("waldo-token", tokenBox.value);
  loadModels().catch((e) => { $("error").textContent = "cannot list models: " + e.message; });
});
let models = [];
// The image last answered: {file, model, version, prediction, target}; explain asks about it.
let current = null;

function headers() {
  return tokenBox.value ? { Authorization: "Bearer " + tokenBox.value } : {};
}

// Runs `task` one at a time: a call while it runs asks for one more run after it, which then
// takes whatever is newest (so drawing fast never queues up requests).
function oneAtATime(task) {
  let running = false, again = false;
  return async function kick() {
    if (running) { again = true; return; }
    running = true;
    try {
      do { again = false; await task(); } while (again);
    } finally { running = false; }
  };
}

// --- the models ------------------------------------------------------------------------------
// The rollout policy in one line: the candidate beside the primary, its mode and share.
function rolloutLine(m) {
  const r = m && m.rollout;
  if (!r || !r.policy) return r && r.error ? "rollout: " + r.error : "";
  const p = r.policy;
  let line = `rollout: v${p.candidate} ${p.mode} ${p.percent}% beside v${m.version} · ${p.state}`;
  if (r.pulled) line += ` · rolled back: ${r.pulled}`;
  if (r.agreement !== undefined) line += ` · top-1 agreement ${(100 * r.agreement).toFixed(1)}%`;
  if (r.error) line += ` · ${r.error}`;
  return line;
}

function selected() {
  return models.find((x) => x.name === $("model").value);
}

// A model that reads one channel (the digit models) gets the draw pad.
function drawable(m) {
  return Boolean(m && m.loaded && m.input && m.input.channels === 1);
}

function showModel() {
  const m = selected();
  $("model-info").textContent = m && m.loaded
    ? `v${m.version} · ${m.task} · ${m.labels.length} labels · ${m.providers.join(", ")}`
    : (m ? "not loaded: " + m.error : "");
  $("rollout").textContent = rolloutLine(m);
  $("pad-box").hidden = !drawable(m);
}

async function refreshModel(name) {
  const r = await fetch(`/v1/models/${encodeURIComponent(name)}`, { headers: headers() });
  if (!r.ok) return;
  const fresh = await r.json();
  models = models.map((m) => (m.name === fresh.name ? fresh : m));
  showModel();
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });  // WALDO_PROTECT_INFO asks for the key
  models = (await r.json()).models;
  $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  showModel();
}

// POST one image to /v1/models/{name}/{action}; the JSON answer, or an Error with the service's
// message (or the HTTP status where the answer is not the service's JSON).
async function callModel(name, action, query, file, extra = {}) {
  const body = new FormData();
  body.append("file", file, file.name || "image.png");
  const url = `/v1/models/${encodeURIComponent(name)}/${action}` + (query ? "?" + query : "");
  const r = await fetch(url, { method: "POST", body, headers: { ...headers(), ...extra } });
  const answer = await r.json().catch(() => null);
  if (!r.ok) {
    throw new Error(answer && answer.error ? answer.error.message : `HTTP ${r.status} ${r.statusText}`);
  }
  return answer;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image(), url = URL.createObjectURL(file);
    img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot show this image")); };
    img.src = url;
  });
}

// --- the answer --------------------------------------------------------------------------------
function draw(img, prediction) {
  const c = $("canvas"), scale = Math.max(1, Math.floor(256 / Math.max(img.width, img.height)));
  c.width = img.width * scale; c.height = img.height * scale;
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(img, 0, 0, c.width, c.height);
  if (prediction.box && prediction.object) {
    const b = prediction.box;
    g.strokeStyle = "#e5202e"; g.lineWidth = 2;
    g.strokeRect(b.x * scale, b.y * scale, b.w * scale, b.h * scale);
  }
}

function probabilityRow(label, p) {
  const tr = document.createElement("tr");
  tr.className = "probability";
  tr.dataset.label = label;
  tr.title = "explain this class";
  tr.innerHTML = `<td class="name"></td><td class="value"></td><td><div class="bar"></div></td>`;
  tr.querySelector(".name").textContent = label;
  tr.querySelector(".value").textContent = p.toFixed(4);
  tr.querySelector(".bar").style.width = Math.round(p * 200) + "px";
  tr.addEventListener("click", () => askExplain(label));
  return tr;
}

function show(prediction) {
  const rows = [];
  if ("p_c" in prediction) {
    $("label").textContent = prediction.object ? prediction.label : "no object";
    const b = prediction.box;
    $("detail").textContent = `p_c ${prediction.p_c.toFixed(3)}` + (prediction.object
      ? ` · box x ${b.x.toFixed(1)}, y ${b.y.toFixed(1)}, w ${b.w.toFixed(1)}, h ${b.h.toFixed(1)} px` : "");
    rows.push([prediction.label, prediction.probability]);
  } else {
    $("label").textContent = prediction.label;
    $("detail").textContent = "";
    for (const t of prediction.top_k) rows.push([t.label, t.probability]);
  }
  $("probabilities").replaceChildren(...rows.map(([label, p]) => probabilityRow(label, p)));
  $("probabilities-hint").hidden = false;
}

function clearAnswer() {
  $("label").textContent = ""; $("detail").textContent = "";
  $("probabilities").replaceChildren();
  $("probabilities-hint").hidden = true;
  $("explain").hidden = true;
}

// `drawn`: from the pad, where the old answer stays until the new one comes and the pad asks
// explain itself once a stroke ends. Whether it answered.
async function predict(file, drawn = false) {
  $("error").textContent = ""; $("status").textContent = "predicting…";
  if (!drawn) clearAnswer();
  try {
    const answer = await callModel($("model").value, "predict", "top_k=5", file);
    if (drawn && !inked) return false;  // the pad was cleared meanwhile
    const prediction = answer.predictions[0];
    const img = await loadImage(file);
    current = { file, model: answer.model, version: answer.version, prediction, target: null };
    draw(img, prediction);
    show(prediction);
    const m = models.find((x) => x.name === answer.model);
    setKernelImage(img, drawable(m));
    const role = m && m.versions ? (m.versions.find((v) => v.version === answer.version) || {}).role : "";
    $("status").textContent = `answered by ${answer.model} v${answer.version}` + (role ? ` (${role})` : "");
    document.body.dataset.state = "done";
    if (!drawn) explainer();
    refreshModel(answer.model).catch(() => {});
    return true;
  } catch (e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
    document.body.dataset.state = "error";
    return false;
  }
}

// --- what the model looks at -----------------------------------------------------------------
const pngUrl = (b64) => "data:image/png;base64," + b64;

// Asks explain about the current image (for class `label`; the predicted class by default).
function askExplain(label) {
  if (!current) return;
  current = { ...current, target: label };
  explainer();
}

const explainer = oneAtATime(async () => {
  const asked = current;
  if (!asked) return;
  const query = asked.target === null ? "" : "target=" + encodeURIComponent(asked.target);
  document.body.dataset.explain = "asking";
  try {
    const answer = await callModel(asked.model, "explain", query, asked.file,
                                   { "Waldo-Model-Version": asked.version });
    if (asked !== current) return;  // a newer image or class: the next run asks about it
    showExplanation(answer);
    document.body.dataset.explain = "done";
  } catch (e) {
    if (asked !== current) return;
    $("error").textContent = "explain: " + e.message;  // the prediction stays shown
    document.body.dataset.explain = "error";
  }
});

function explainLine(a) {
  const t = a.target || {};
  let line = `${a.method} map for class ${t.label}`;
  if (typeof t.score === "number") line += ` (score ${t.score.toFixed(3)})`;
  if (a.cost) line += ` · ${a.cost.forward_passes} forward pass${a.cost.forward_passes === 1 ? "" : "es"}, ${Math.round(a.cost.ms)} ms`;
  return line;
}

// One stage's grid of maps (the picture carries its own title).
function stagePicture(s) {
  const img = new Image();
  img.src = pngUrl(s.png); img.className = "stage";
  img.alt = img.title = `${s.name} (${s.module}): ${s.shape.join(" × ")}`;
  return img;
}

function showExplanation(a) {
  $("explain-info").textContent = explainLine(a);
  $("heatmap").src = pngUrl(a.heatmap.png);
  $("stages").replaceChildren(...(a.stages || []).map(stagePicture));
  for (const tr of $("probabilities").rows) {
    tr.classList.toggle("target", Boolean(a.target) && tr.dataset.label === a.target.label);
  }
  const filters = a.filters && a.first_layer;
  $("filters-row").hidden = !filters;
  if (filters) {
    $("filters").src = pngUrl(a.filters.png);
    $("first-layer").src = pngUrl(a.first_layer.png);
  }
  $("filters-note").textContent = filters ? ""
    : "no first-layer filters or feature maps: this version has no convolutions, or was exported without their outputs";
  $("explain").hidden = false;
}

// --- image kernels -----------------------------------------------------------------------------
const KERNELS = {
  blur: [1 / 16, 2 / 16, 1 / 16, 2 / 16, 4 / 16, 2 / 16, 1 / 16, 2 / 16, 1 / 16],
  sharpen: [0, -1, 0, -1, 5, -1, 0, -1, 0],
  edges: [-1, -1, -1, -1, 8, -1, -1, -1, -1],
  emboss: [-2, -1, 0, -1, 1, 1, 0, 1, 2],
  identity: [0, 0, 0, 0, 1, 0, 0, 0, 0],
};
const KERNEL_SIDE = 256;  // larger images are scaled down first, to keep the panel quick
let kernelSource = null;  // ImageData of the current image

const kernelCells = Array.from({ length: 9 }, () => {
  const cell = document.createElement("input");
  cell.type = "number"; cell.step = "any";
  cell.addEventListener("input", () => { $("kernel-preset").value = "custom"; applyKernel(); });
  return cell;
});
$("kernel-grid").replaceChildren(...kernelCells);

function setPreset(name) {
  const k = KERNELS[name];
  if (k) kernelCells.forEach((cell, i) => { cell.value = String(k[i]); });
  applyKernel();
}

// The nine numbers; a cell that is not a number is marked and counts as 0.
function readKernel() {
  return kernelCells.map((cell) => {
    const v = Number(cell.value);
    const ok = cell.value.trim() !== "" && Number.isFinite(v);
    cell.classList.toggle("bad", !ok);
    cell.title = ok ? "" : `${JSON.stringify(cell.value)} is not a number; read as 0`;
    return ok ? v : 0;
  });
}

// The image as pixels, at most KERNEL_SIDE a side, in grey for a one-channel model.
function setKernelImage(img, grey) {
  const scale = Math.min(1, KERNEL_SIDE / Math.max(img.width, img.height));
  const w = Math.max(1, Math.round(img.width * scale)), h = Math.max(1, Math.round(img.height * scale));
  const c = $("kernel-in");
  c.width = w; c.height = h;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0, w, h);
  const pixels = g.getImageData(0, 0, w, h);
  if (grey) {
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      d[i] = d[i + 1] = d[i + 2] = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    }
    g.putImageData(pixels, 0, 0);
  }
  kernelSource = pixels;
  $("kernels").hidden = false;
  applyKernel();
}

// Each channel of `src` through the 3x3 kernel `k` (row by row), the edges repeated outwards;
// like a network's convolution the kernel is not flipped. Uint8ClampedArray clamps to 0..255.
function convolve(src, k) {
  const { width: w, height: h, data } = src, out = new ImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = 4 * (y * w + x);
      for (let ch = 0; ch < 3; ch++) {
        let sum = 0;
        for (let j = -1; j <= 1; j++) {
          const yy = Math.min(h - 1, Math.max(0, y + j));
          for (let i = -1; i <= 1; i++) {
            const xx = Math.min(w - 1, Math.max(0, x + i));
            sum += k[3 * (j + 1) + i + 1] * data[4 * (yy * w + xx) + ch];
          }
        }
        out.data[o + ch] = sum;
      }
      out.data[o + 3] = 255;
    }
  }
  return out;
}

function applyKernel() {
  const kernel = readKernel();
  if (!kernelSource) return;
  const c = $("kernel-out");
  c.width = kernelSource.width; c.height = kernelSource.height;
  c.getContext("2d").putImageData(convolve(kernelSource, kernel), 0, 0);
}

$("kernel-preset").addEventListener("change", (e) => setPreset(e.target.value));
setPreset($("kernel-preset").value);

// --- the draw pad: white strokes on black, like MNIST ------------------------------------------
const pad = $("pad"), pen = pad.getContext("2d");
let penDown = null;  // the last point of the stroke being drawn
let inked = false;

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

function stroke(from, to) {
  Object.assign(pen, { strokeStyle: "#fff", lineWidth: pad.width / 12, lineCap: "round", lineJoin: "round" });
  pen.beginPath(); pen.moveTo(...from); pen.lineTo(...to); pen.stroke();
  inked = true;
  padPredict();
}

// The ink's bounding box, or null on an empty pad.
function inkBox() {
  const d = pen.getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (d[4 * (y * pad.width + x)] > 32) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

// The drawing framed as MNIST frames digits: the ink scaled to fit 20/28 of the model's input
// and centred on black, as a PNG file at the model's input size.
function padFile() {
  const box = inkBox(), m = selected();
  if (!box) return Promise.resolve(null);
  const w = (m && m.input && m.input.width) || 28, h = (m && m.input && m.input.height) || 28;
  const fit = (20 / 28) * Math.min(w / box.w, h / box.h);
  const out = document.createElement("canvas");
  out.width = w; out.height = h;
  const g = out.getContext("2d");
  g.fillStyle = "#000"; g.fillRect(0, 0, w, h);
  g.drawImage(pad, box.x, box.y, box.w, box.h,
              (w - box.w * fit) / 2, (h - box.h * fit) / 2, box.w * fit, box.h * fit);
  return new Promise((resolve) => out.toBlob((blob) =>
    resolve(blob && new File([blob], "drawing.png", { type: "image/png" })), "image/png"));
}

// Explain waits for the end of the stroke: it asks about the image of a finished stroke only.
const padPredict = oneAtATime(async () => {
  const finished = !penDown;
  const file = inked ? await padFile() : null;
  if (file && await predict(file, true) && finished) explainer();
});

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  try { pad.setPointerCapture(e.pointerId); } catch { /* a synthetic event's pointer */ }
  penDown = padPoint(e);
  stroke(penDown, penDown);
});
pad.addEventListener("pointermove", (e) => {
  if (!penDown) return;
  const p = padPoint(e);
  stroke(penDown, p);
  penDown = p;
});
function endStroke() {
  if (!penDown) return;
  penDown = null;
  padPredict();  // the finished stroke: its answer also asks explain
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
$("clear").addEventListener("click", () => { clearPad(); clearAnswer(); current = null; });
clearPad();

// --- files -------------------------------------------------------------------------------------
$("model").addEventListener("change", showModel);
$("file").addEventListener("change", (e) => e.target.files[0] && predict(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
});
loadModels().catch((e) => { $("error").textContent = "cannot list models: " + e.message; });
