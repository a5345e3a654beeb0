// mrdiff viewer: reconstruction, uncertainty and anomaly overlay of one job, side by side.
// Plain JS, no build step. The API key is asked once, kept in sessionStorage (this tab only)
// and sent as "Authorization: Bearer <key>" on every request. A key may also be handed over in
// the URL fragment (#key=...): it is moved to sessionStorage and removed from the address bar;
// fragments are never sent to servers.
"use strict";

const KEY_STORAGE = "mrdiff.apiKey";
const POLL_MS = 2000;
const PANELS = ["reconstruction", "variance", "anomaly_map"];

const state = {
  jobId: decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || ""),
  results: {},          // name -> result entry (PNG ones)
  slices: 1,
  objectUrls: new Map(), // img element -> object URL to revoke
  pending: null,
  listening: false,      // control listeners are bound once per page
};

const $ = (selector) => document.querySelector(selector);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  document.body.dataset.state = "needs-key";
  $("#key-form").hidden = false;
  $("#controls").hidden = true;
  $("#panels").hidden = true;
  setStatus(message, Boolean(message));
  $("#key-input").focus();
}

async function loadJob() {
  const job = await (await api(`/v1/jobs/${encodeURIComponent(state.jobId)}`)).json();
  const { done, total } = job.progress;
  if (job.state === "succeeded") {
    return job;
  }
  if (job.state === "failed" || job.state === "cancelled") {
    document.body.dataset.state = job.state;
    throw new ApiError(0, `Job ${job.state}${job.error ? ": " + job.error : ""}`);
  }
  document.body.dataset.state = job.state;
  setStatus(`Job ${job.state}: ${done} of ${total || "?"} slices done…`);
  await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  return loadJob();
}

function describeRange(entry) {
  const low = entry.value_min ?? 0;
  const high = entry.value_max ?? 1;
  return { low, high, span: Math.max(high - low, 1e-12) };
}

function setupControls() {
  const recon = state.results.reconstruction;
  const { low, high, span } = describeRange(recon);
  const window = $("#window");
  const level = $("#level");
  window.min = String(span / 1000);
  window.max = String(span * 2);
  window.step = String(span / 1000);
  level.min = String(low - span / 2);
  level.max = String(high + span / 2);
  level.step = String(span / 1000);
  resetWindow();
  const slice = $("#slice");
  slice.max = String(state.slices - 1);
  slice.value = String(Math.floor(state.slices / 2));
  applyOpacity();
  if (state.listening) return;
  state.listening = true;
  for (const input of [slice, window, level]) {
    input.addEventListener("input", scheduleRender);
  }
  $("#opacity").addEventListener("input", applyOpacity);
  $("#reset").addEventListener("click", () => { resetWindow(); scheduleRender(); });
  $("#forget-key").addEventListener("click", () => askForKey("Key forgotten."));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
    if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      const step = event.key === "ArrowUp" ? 1 : -1;
      slice.value = String(Math.min(state.slices - 1, Math.max(0, Number(slice.value) + step)));
      scheduleRender();
      event.preventDefault();
    }
  });
}

function resetWindow() {
  const recon = state.results.reconstruction;
  const { low, high } = describeRange(recon);
  $("#window").value = String(recon.window ?? high - low);
  $("#level").value = String(recon.level ?? (low + high) / 2);
}

function applyOpacity() {
  const opacity = Number($("#opacity").value);
  $("#panel-anomaly img.top").style.opacity = String(opacity);
  $("#opacity-value").textContent = `${Math.round(opacity * 100)}%`;
}

function scheduleRender() {
  clearTimeout(state.pending);
  state.pending = setTimeout(render, 60);
}

function pngUrl(entry, params) {
  const url = new URL(entry.url, location.origin);
  for (const [name, value] of Object.entries(params)) {
    url.searchParams.set(name, String(value));
  }
  return url.pathname + url.search;
}

async function showImage(img, path) {
  const blob = await (await api(path)).blob();
  const objectUrl = URL.createObjectURL(blob);
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error(`could not decode ${path}`));
    img.src = objectUrl;
  });
  const previous = state.objectUrls.get(img);
  if (previous) URL.revokeObjectURL(previous);
  state.objectUrls.set(img, objectUrl);
}

async function render() {
  const slice = Number($("#slice").value);
  const window = Number($("#window").value);
  const level = Number($("#level").value);
  $("#slice-value").textContent = `${slice + 1} / ${state.slices}`;
  $("#window-value").textContent = window.toPrecision(3);
  $("#level-value").textContent = level.toPrecision(3);
  const reconPath = pngUrl(state.results.reconstruction, { slice, window, level });
  const jobs = [
    showImage($("#panel-reconstruction img"), reconPath),
    showImage($("#panel-anomaly img.base"), reconPath),
  ];
  if (state.results.variance) {
    jobs.push(showImage($("#panel-uncertainty img"), pngUrl(state.results.variance, { slice })));
  }
  if (state.results.anomaly_map) {
    jobs.push(showImage($("#panel-anomaly img.top"), pngUrl(state.results.anomaly_map, { slice })));
  }
  try {
    await Promise.all(jobs);
    document.body.dataset.state = "ready";
    document.body.dataset.slice = String(slice);
    setStatus(`Slice ${slice + 1} of ${state.slices}. Research use only, not for diagnosis.`);
  } catch (error) {
    handleError(error);
  }
}

function markMissing() {
  for (const panel of document.querySelectorAll(".panel")) {
    const name = panel.dataset.result;
    const missing = !state.results[name];
    panel.classList.toggle("missing", missing);
    panel.dataset.loaded = String(!missing);
    if (missing) {
      panel.querySelector(".frame").dataset.message =
        name === "variance" ? "No uncertainty: this method does not sample."
          : "No anomaly map was computed for this job.";
    }
  }
}

function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    askForKey(`The API refused the key: ${error.message}`);
    return;
  }
  document.body.dataset.state = document.body.dataset.state === "ready" ? "ready" : "error";
  const prefix = error instanceof ApiError && error.status === 404 ? "Not found: " : "";
  setStatus(prefix + error.message, true);
}

async function start() {
  $("#job-id").textContent = state.jobId;
  if (!apiKey()) {
    askForKey("");
    return;
  }
  $("#key-form").hidden = true;
  document.body.dataset.state = "loading";
  try {
    await loadJob();
    const listing = await (await api(`/v1/jobs/${encodeURIComponent(state.jobId)}/results`)).json();
    state.results = {};
    for (const entry of listing.items) {
      if (entry.media_type === "image/png" && !entry.name.includes("/")) {
        state.results[entry.name.replace(/\.png$/, "")] = entry;
      }
    }
    if (!state.results.reconstruction) {
      throw new ApiError(0, "This job has no reconstruction to show.");
    }
    state.slices = state.results.reconstruction.slices || 1;
    markMissing();
    $("#controls").hidden = false;
    $("#panels").hidden = false;
    setupControls();
    await render();
  } catch (error) {
    handleError(error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
    $("#key-input").value = "";
    start();
  });
  start();
});
