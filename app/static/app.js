// The page: one panel per thing the models do, each a few calls of the public API.

import { ApiError, call, getKey, setKey } from "./api.js";
import { Pad, imageElement, paint } from "./pad.js";

const $ = (selector) => document.querySelector(selector);

const state = {
  models: new Map(), // name -> card (GET /models)
  impute: null, // {query, body}: where /impute takes steps, method, seed (from /openapi.json)
};

const classifier = () => $("#classifier").value || undefined;
const vae = () => $("#vae").value || undefined;
const vaeCard = () => state.models.get($("#vae").value);

/** Show `error` (an ApiError or any Error; null clears) on a panel's error line. */
function showError(panel, error) {
  const line = $(`#${panel}-error`);
  if (!error) {
    line.textContent = "";
    return;
  }
  line.textContent = error instanceof ApiError ? error.describe() : error.message;
  if (!(error instanceof ApiError) && !(error instanceof UserError)) console.error(error);
}

/** A mistake of the person using the page (nothing drawn yet...), said as is. */
class UserError extends Error {}

/** Run a panel's action: busy while it runs, its errors on the panel's error line. */
async function run(panel, action) {
  const section = $(`#${panel}`);
  section.setAttribute("aria-busy", "true");
  showError(panel, null);
  try {
    await action();
  } catch (e) {
    showError(panel, e);
  } finally {
    section.removeAttribute("aria-busy");
  }
}

// --- models ------------------------------------------------------------------------------
function cardSummary(m) {
  const dataset = m.dataset.name || "unknown data";
  const params = `${(m.num_parameters / 1e6).toFixed(m.num_parameters < 1e6 ? 2 : 1)} M parameters`;
  if (m.kind === "classifier") return `${dataset}, ${m.labels.length} classes, ${params}`;
  const [h, w] = m.input.size;
  return `${dataset}, ${h}×${w}, ${m.config.latent}-d latent, ${params}`;
}

function fillPicker(select, kind, models) {
  const previous = select.value;
  select.replaceChildren();
  for (const m of models.filter((x) => x.kind === kind)) {
    select.append(new Option(m.default ? `${m.name} (default)` : m.name, m.name, false,
      previous ? m.name === previous : m.default));
  }
  select.disabled = select.options.length === 0;
  const card = $(`#${select.id}-card`);
  const m = state.models.get(select.value);
  card.textContent = m ? cardSummary(m) : `no ${kind} loaded`;
}

let retry = null;

async function loadModels() {
  clearTimeout(retry);
  const status = $("#status");
  try {
    const { models, failed } = await call("models");
    state.models = new Map(models.map((m) => [m.name, m]));
    fillPicker($("#classifier"), "classifier", models);
    fillPicker($("#vae"), "vae", models);
    const broken = failed.length ? `; failed to load: ${failed.map((f) => f.name).join(", ")}` : "";
    status.textContent = `${models.length} model(s) served${broken}.`;
    vaeChanged();
  } catch (e) {
    if (e instanceof ApiError && e.status === 503 && e.retryAfter) {
      status.textContent = `The server is loading its models… (${e.message})`;
      retry = setTimeout(loadModels, 1000 * Math.max(1, Number(e.retryAfter) || 1));
      return;
    }
    status.textContent = e instanceof ApiError ? e.describe() : e.message;
  }
}

/** Whether the server has /impute (it lists it in /openapi.json): then the inpaint panel shows. */
async function detectImpute() {
  let spec;
  try {
    spec = await call("openapi.json");
  } catch {
    return; // no schema served (MODELSERVE_DOCS=false): the page goes without the panel
  }
  const op = spec.paths && spec.paths["/impute"] && spec.paths["/impute"].post;
  if (!op) return;
  const resolve = (s) => (s && s.$ref ? spec.components.schemas[s.$ref.split("/").pop()] : s);
  const content = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const body = resolve(content && content.schema) || {};
  state.impute = {
    query: new Set((op.parameters || []).filter((p) => p.in === "query").map((p) => p.name)),
    body: new Set(Object.keys(body.properties || {})),
  };
  $("#inpaint").hidden = false;
}

// --- classify ----------------------------------------------------------------------------
let picked = null;

function pick(file) {
  if (!file) return;
  picked = file;
  const preview = $("#classify-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `The image to classify: ${file.name}`;
  preview.hidden = false;
  $("#classify-run").disabled = false;
  classify();
}

function classify() {
  if (!picked) return;
  return run("classify", async () => {
    const form = new FormData();
    form.append("image", picked, picked.name);
    const answer = await call("classify", { method: "POST", query: { model: classifier() }, form });
    const list = $("#classify-results");
    list.replaceChildren();
    for (const p of answer.predictions) {
      const item = document.createElement("li");
      const percent = `${(100 * p.probability).toFixed(1)}%`;
      item.innerHTML = '<span class="label"></span><span class="meter" aria-hidden="true">'
        + '<span class="fill"></span></span><span class="value"></span>';
      item.querySelector(".label").textContent = p.label;
      item.querySelector(".value").textContent = percent;
      item.querySelector(".fill").style.width = percent;
      list.append(item);
    }
  });
}

// --- samples -----------------------------------------------------------------------------
const number = (selector) => Number($(selector).value);
const optionalNumber = (selector) => ($(selector).value === "" ? undefined : number(selector));

function sample() {
  return run("sample", async () => {
    const n = number("#sample-n");
    const answer = await call("sample", { query: { n, seed: optionalNumber("#sample-seed"), model: vae() } });
    $("#sample-grid").replaceChildren(...answer.images.map((values, i) =>
      listItem(imageElement(values, answer.shape, `Sample ${i + 1} of ${n}`))));
    $("#sample-caption").textContent = `${answer.model}, seed ${answer.seed}: the same seed draws the same images.`;
  });
}

function listItem(child) {
  const item = document.createElement("div");
  item.setAttribute("role", "listitem");
  item.append(child);
  return item;
}

/** One digit drawn from the VAE's prior, for a pad's "Random digit" button. */
async function randomDigit() {
  const answer = await call("sample", { query: { n: 1, model: vae() } });
  return { values: answer.images[0], shape: answer.shape };
}

// --- encode / decode ---------------------------------------------------------------------
async function encodeMeans(pads) {
  for (const pad of pads) {
    if (pad.empty) throw new UserError(`${pad.name} is empty: draw, upload or pick a random digit first.`);
  }
  const answer = await call("encode", {
    method: "POST", query: { model: vae() }, json: { pixels: pads.map((p) => p.pixels()) },
  });
  return answer.results.map((r) => r.mean);
}

const decode = (z) => call("decode", { method: "POST", query: { model: vae() }, json: { z } });

function interpolate() {
  return run("interpolate", async () => {
    const k = number("#interpolate-steps");
    if (!(k >= 2)) throw new UserError("The strip needs at least 2 images.");
    const [a, b] = await encodeMeans([pads.a, pads.b]);
    const zs = Array.from({ length: k }, (_, i) => a.map((v, j) => v + (i / (k - 1)) * (b[j] - v)));
    const answer = await decode(zs);
    $("#interpolate-strip").replaceChildren(...answer.images.map((values, i) =>
      listItem(imageElement(values, answer.shape, `Step ${i + 1} of ${k}`))));
  });
}

let reconstruction = 0; // answers to earlier strokes arriving late are dropped

function reconstruct() {
  const out = $("#reconstruct-out");
  if (pads.draw.empty) {
    out.getContext("2d").clearRect(0, 0, out.width, out.height);
    out.setAttribute("aria-label", "Reconstruction (none yet)");
    return;
  }
  const mine = ++reconstruction;
  return run("reconstruct", async () => {
    const [mean] = await encodeMeans([pads.draw]);
    const answer = await decode([mean]);
    if (mine !== reconstruction) return;
    paint(out, answer.images[0], answer.shape);
    out.setAttribute("aria-label", "Reconstruction of your digit");
  });
}

// --- impute ------------------------------------------------------------------------------
function inpaint() {
  return run("inpaint", async () => {
    const pad = pads.inpaint;
    if (pad.empty) throw new UserError(`${pad.name} is empty: draw, upload or pick a random digit first.`);
    const mask = pad.maskValues();
    if (!mask.some((m) => m)) throw new UserError("Erase part of the digit first (the Eraser brush, or a half).");
    const params = {
      steps: number("#inpaint-steps"), method: $("#inpaint-method").value, seed: number("#inpaint-seed"),
    };
    const query = { model: vae() };
    const body = { pixels: [pad.pixels()], mask: [mask] };
    for (const [k, v] of Object.entries(params)) {
      if (state.impute.query.has(k)) query[k] = v;
      else if (state.impute.body.has(k)) body[k] = v;
    }
    const answer = await call("impute", { method: "POST", query, json: body });
    const out = $("#inpaint-out");
    paint(out, answer.images[0], answer.shape);
    out.setAttribute("aria-label", "Completion of the erased digit");
  });
}

// --- wiring ------------------------------------------------------------------------------
const pads = {};

function vaeChanged() {
  const card = vaeCard();
  $("#vae-card").textContent = card ? cardSummary(card) : "no VAE loaded";
  for (const pad of Object.values(pads)) if (card) pad.setModel(card);
  for (const id of ["#sample-grid", "#interpolate-strip"]) $(id).replaceChildren();
  $("#sample-caption").textContent = "";
}

function main() {
  for (const root of document.querySelectorAll(".pad")) {
    const pad = new Pad(root, { sampleDigit: randomDigit });
    const panel = root.closest("section").id;
    pad.onerror((e) => showError(panel, e));
    pads[root.dataset.pad] = pad;
  }
  pads.draw.onchange = reconstruct;

  const key = $("#api-key");
  key.value = getKey();
  key.addEventListener("change", () => {
    setKey(key.value);
    loadModels();
  });
  $("#settings").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(key.value);
    loadModels();
  });
  $("#classifier").addEventListener("change", () => {
    const m = state.models.get(classifier());
    $("#classifier-card").textContent = m ? cardSummary(m) : "";
    classify();
  });
  $("#vae").addEventListener("change", vaeChanged);

  $("#classify-file").addEventListener("change", (e) => pick(e.target.files[0]));
  $("#classify-run").addEventListener("click", classify);
  const drop = $("#classify-drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });

  const onSubmit = (selector, action) => $(selector).addEventListener("submit", (e) => {
    e.preventDefault();
    action();
  });
  onSubmit("#sample-form", sample);
  onSubmit("#interpolate-form", interpolate);
  onSubmit("#inpaint-form", inpaint);
  $("#reconstruct-run").addEventListener("click", reconstruct);

  loadModels();
  detectImpute();
}

main();
