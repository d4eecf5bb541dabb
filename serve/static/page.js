// The try-it page: calls the JSON API (/v1/students, /v1/generate, /v1/turntable, /v1/sweep,
// /v1/students/{name}/activate) and shows what it answers, errors included.
"use strict";

const BUDGET = "__budget__";  // the student select's value for "a latency budget instead"
const TURNTABLE_FRAMES = 24;
const FRAME_MS = 120;
const $ = (sel, root = document) => root.querySelector(sel);
let students = [];   // GET /v1/students's list
let image = null;    // the File (or Blob) to send
let timers = [];     // turntable animations of the shown results

// --- errors and status ------------------------------------------------------------------------
class ApiError extends Error {}

async function api(path, options) {
  let r;
  try {
    r = await fetch(path, options);
  } catch (e) {
    throw new ApiError("the server closed the connection before answering (is the image over "
                       + "its size limit, or is the server down?)");
  }
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { /* not JSON: shown as text */ }
  if (!r.ok) {
    let detail = body && body.detail !== undefined ? body.detail : text;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    throw new ApiError(`${r.status} ${r.statusText || ""}: ${detail}`.replace(/ +:/, ":"));
  }
  return body;
}

function showError(msg) {
  const el = $("#error");
  el.textContent = msg;
  el.hidden = !msg;
}

function status(msg) { $("#status").textContent = msg; }

// --- students and choices ---------------------------------------------------------------------
function stepsOf(s) {
  const steps = s.card && Array.isArray(s.card.steps) ? s.card.steps : [1];
  return steps.map(Number).sort((a, b) => a - b);
}

function fillChoice(fs, preferred) {
  const sel = $(".student", fs);
  const before = sel.value;
  sel.innerHTML = "";
  for (const s of students.filter((x) => !x.broken)) {
    const o = new Option(s.name + (s.loaded ? "" : " (not loaded)"), s.name);
    sel.add(o);
  }
  sel.add(new Option("a latency budget instead...", BUDGET));
  const names = [...sel.options].map((o) => o.value);
  sel.value = names.includes(before) ? before : (preferred.find((n) => names.includes(n)) || names[0]);
  onStudent(fs);
}

function onStudent(fs) {
  const name = $(".student", fs).value;
  const budget = name === BUDGET;
  $(".steps-label", fs).hidden = budget;
  $(".budget-label", fs).hidden = !budget;
  if (budget) return;
  const s = students.find((x) => x.name === name);
  const steps = $(".steps", fs);
  const before = Number(steps.value);
  steps.innerHTML = "";
  for (const n of stepsOf(s)) steps.add(new Option(String(n), String(n)));
  const all = stepsOf(s);
  const want = name === "teacher" ? Math.max(...all) : Math.min(...all);
  steps.value = String(all.includes(before) && fs.dataset.touched ? before : want);
}

async function loadStudents() {
  const body = await api("/v1/students");
  students = body.students;
  const others = students.filter((s) => !s.broken && s.name !== body.active).map((s) => s.name);
  fillChoice($("#choice-a"), [body.active]);
  fillChoice($("#choice-b"), ["teacher", ...others]);
  const admin = $("#admin-student");
  admin.innerHTML = "";
  for (const s of students.filter((x) => !x.broken)) {
    admin.add(new Option(s.name + (s.name === body.active ? " (active)" : ""), s.name));
  }
}

function choiceOf(fs) {
  const name = $(".student", fs).value;
  if (name === BUDGET) return { latency_ms: $(".budget", fs).value.trim() };
  return { student: name, steps: $(".steps", fs).value };
}

// --- the image --------------------------------------------------------------------------------
function setImage(file) {
  image = file;
  const prev = $("#preview");
  if (prev.src) URL.revokeObjectURL(prev.src);
  prev.src = URL.createObjectURL(file);
  prev.hidden = false;
  $("#drop-text").textContent = `${file.name || "image"} (${(file.size / 1024).toFixed(1)} KB)`;
  showError("");
}

// --- one run: generate, then the turntable ----------------------------------------------------
function b64bytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

async function generate(choice, seed) {
  const form = new FormData();
  form.append("image", image, image.name || "image.png");
  for (const [k, v] of Object.entries(choice)) form.append(k, v);
  if (seed !== "") form.append("seed", seed);
  const t0 = performance.now();
  const body = await api("/v1/generate", { method: "POST", body: form });
  return { body, roundTrip: performance.now() - t0 };
}

const TIMING_ROWS = [
  ["diffusion", "diffusion (views)"], ["reconstruction", "reconstruction (Gaussians)"],
  ["encode", "encoding PNG + PLY"], ["queue", "waiting in the queue"],
  ["compute", "compute of its batch"], ["total", "total in the server"],
];

function fmt(ms) { return `${Number(ms).toFixed(1)} ms`; }

function pickedText(p) {
  const q = Object.entries(p.quality || {}).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`);
  return `A budget of ${p.budget_ms} ms picked ${p.student}@${p.steps}: ${p.reason}. `
    + `Expected ${fmt(p.expected_ms)} (queue ${fmt(p.queue_ms)} + service ${fmt(p.service_ms)} `
    + `+ overhead ${fmt(p.overhead_ms)}; the sweep measured ${fmt(p.sweep_ms)}); `
    + `sweep quality ${q.join(", ")}; ${p.fitting} of ${p.candidates} options on the front fit.`;
}

function showResult(tag, res) {
  const b = res.body;
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  Object.assign(node.dataset, { tag, student: b.student, steps: b.steps, seed: b.seed });
  node.id = `result-${tag.toLowerCase()}`;
  $(".title", node).textContent = `${tag}: ${b.student} @ ${b.steps} step${b.steps > 1 ? "s" : ""}`
    + ` (${b.method}, weights ${b.weights}, seed ${b.seed})`;
  $(".took", node).innerHTML = `took <b class="round-trip">${fmt(res.roundTrip)}</b> in the browser`
    + ` (${fmt(b.timings_ms.total)} in the server)`;
  if (b.picked) {
    const p = $(".picked", node);
    p.textContent = pickedText(b.picked);
    p.hidden = false;
  }
  const views = $(".views", node);
  b.views_png.forEach((v, i) => {
    const img = new Image();
    img.src = `data:image/png;base64,${v}`;
    img.alt = `view ${i + 1}`;
    views.append(img);
  });
  const tb = $(".timings tbody", node);
  for (const [key, label] of TIMING_ROWS) {
    if (b.timings_ms[key] === undefined) continue;
    const tr = tb.insertRow();
    tr.dataset.key = key;
    tr.insertCell().textContent = label;
    const td = tr.insertCell();
    td.className = "ms";
    td.textContent = fmt(b.timings_ms[key]);
  }
  const tr = tb.insertRow();
  tr.dataset.key = "batch_size";
  tr.insertCell().textContent = "requests in its batch";
  tr.insertCell().textContent = String(b.timings_ms.batch_size);
  const ply = b64bytes(b.ply);
  const a = $("a.ply", node);
  a.href = URL.createObjectURL(new Blob([ply], { type: "application/octet-stream" }));
  a.download = `${b.student}-${b.steps}steps-seed${b.seed}.ply`;
  $(".ply-note", node).textContent = `${(ply.length / 1024).toFixed(1)} KB`;
  $("#results").append(node);
  return { node, ply };
}

async function turntable(node, ply) {
  const t0 = performance.now();
  const body = await api(`/v1/turntable?frames=${TURNTABLE_FRAMES}`, {
    method: "POST", headers: { "content-type": "application/octet-stream" }, body: ply,
  });
  const frames = body.frames_png.map((f) => `data:image/png;base64,${f}`);
  const img = $(".turntable img", node);
  const range = $(".turntable input", node);
  range.max = String(frames.length - 1);
  let k = 0, hold = 0;
  const show = (i) => { k = i; img.src = frames[i]; range.value = String(i); };
  show(0);
  range.addEventListener("input", () => { hold = performance.now() + 2500; show(Number(range.value)); });
  timers.push(setInterval(() => {
    if (performance.now() > hold) show((k + 1) % frames.length);
  }, FRAME_MS));
  const row = $(".timings tbody", node).insertRow();
  row.dataset.key = "turntable";
  row.insertCell().textContent = `turntable: ${frames.length} frames rendered`;
  const td = row.insertCell();
  td.className = "ms";
  td.textContent = fmt(body.timings_ms.render);
  $(".tt-note", node).textContent = `${body.gaussians} Gaussians, ${frames.length} frames at `
    + `${body.size} px, elevation ${body.elevation}°, drawn by the lab's rasterizer on the server `
    + `in ${fmt(body.timings_ms.render)} (${fmt(performance.now() - t0)} with the transfer)`;
  node.dataset.turntable = String(frames.length);
}

async function run() {
  try {
    await runChoices();
  } finally {  // a run is over (done, refused or failed): tests and scripts wait for this
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
  }
}

async function runChoices() {
  showError("");
  if (!image) { showError("Pick or drop an image first (PNG or JPEG)."); return; }
  const seed = $("#seed").value.trim();
  const tags = $("#compare").checked ? ["A", "B"] : ["A"];
  timers.forEach(clearInterval);
  timers = [];
  $("#results").innerHTML = "";
  $("#run").disabled = true;
  const served = [];
  const errors = [];
  try {
    for (const tag of tags) {  // one after the other: each time is its own
      const fs = $(`#choice-${tag.toLowerCase()}`);
      try {
        status(`${tag}: generating...`);
        const res = await generate(choiceOf(fs), seed);
        const { node, ply } = showResult(tag, res);
        served.push({ student: res.body.student, steps: res.body.steps, tag });
        Pareto.mark(served);
        status(`${tag}: rendering the turntable...`);
        await turntable(node, ply);
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        errors.push(`${tags.length > 1 ? tag + ": " : ""}${e.message}`);
      }
    }
  } finally {
    $("#run").disabled = false;
  }
  showError(errors.join("\n"));
  status(errors.length ? "" : `done: ${served.map((s) => `${s.student}@${s.steps}`).join(" vs ")}`);
}

async function activate() {
  const msg = $("#admin-msg");
  const name = $("#admin-student").value;
  const token = $("#token").value.trim();
  msg.className = "";
  msg.textContent = `activating ${name}...`;
  try {
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const body = await api(`/v1/students/${encodeURIComponent(name)}/activate`,
                           { method: "POST", headers });
    msg.textContent = `${body.active} is active (${body.method}, weights ${body.weights}, `
      + `steps ${body.steps.join(", ")})`;
    await loadStudents();
  } catch (e) {
    msg.className = "bad";
    msg.textContent = e.message;
  }
}

// --- wiring -----------------------------------------------------------------------------------
function init() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => { if (e.target.files[0]) setImage(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]);
  });
  $("#compare").addEventListener("change", (e) => { $("#choice-b").hidden = !e.target.checked; });
  for (const fs of document.querySelectorAll(".choice")) {
    $(".student", fs).addEventListener("change", () => onStudent(fs));
    $(".steps", fs).addEventListener("change", () => { fs.dataset.touched = "1"; });
  }
  $("#run").addEventListener("click", run);
  $("#activate").addEventListener("click", activate);
  Promise.all([loadStudents(), Pareto.load()])
    .then(() => { document.body.dataset.ready = "1"; })
    .catch((e) => showError(`cannot reach the service: ${e.message}`));
}

init();
