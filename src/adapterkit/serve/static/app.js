// adapterkit playground: compare adapters side by side, browse the store, load and unload.
// Plain JS, no dependencies. The page uses only the server's public API (plus two read-only
// /playground endpoints), so what it shows is what any OpenAI client would get.
// Every failure is turned into a sentence in the page: a column is never left blank.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { info: null, models: [], storeRefs: [], running: null, connected: null };

// --- talking to the server ---------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: the server could not be reached
  }
}

function headers(json) {
  const h = {};
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function unreachable(error) {
  markConnection(false);
  return new ApiError(0, `Cannot reach the server at ${location.origin}: it stopped, is restarting, or the ` +
    `network is down (${error.message || error}). Try again once it is back.`);
}

// A readable sentence for an error response: OpenAI's {"error": {"message"}} when present.
async function errorFrom(response) {
  let detail = "";
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    detail = (body && body.error && body.error.message) || (body && body.detail) || text;
  } catch (_) {
    detail = text;
  }
  detail = String(detail || response.statusText || "no detail").trim();
  const what = {
    401: "The server refused the API key",
    403: "Refused",
    404: "Not found",
    413: "Request too large",
    429: "The server is busy",
    503: "The server is shutting down",
  }[response.status] || (response.status >= 500 ? "Server error" : "Bad request");
  let hint = "";
  if (response.status === 401) hint = $("#api-key").value.trim() ? " (check the key you typed)" : " (type the server's key above)";
  return new ApiError(response.status, `${what} (HTTP ${response.status}): ${detail}${hint}`);
}

async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (error) {
    throw unreachable(error);
  }
  markConnection(true);
  if (!response.ok) throw await errorFrom(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

// --- messages ------------------------------------------------------------------------------
function showNotice(text, isError) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.classList.toggle("error", Boolean(isError));
  notice.hidden = false;
}

function setMessage(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
  element.hidden = !text;
}

function markConnection(ok) {
  const badge = $("#connection");
  const wasDown = state.connected === false;
  state.connected = ok;
  badge.textContent = ok ? "connected" : "server unreachable";
  badge.className = `connection ${ok ? "ok" : "down"}`;
  if (ok && wasDown) {
    // Back after a restart: what is resident may have changed.
    refreshModels();
    refreshStore();
  }
}

// --- compare --------------------------------------------------------------------------------
function columns() {
  return Array.from(document.querySelectorAll("#columns .column"));
}

function layoutColumns() {
  const count = Number($("#column-count").value);
  const holder = $("#columns");
  while (holder.children.length < count) {
    const column = $("#column-template").content.firstElementChild.cloneNode(true);
    column.dataset.index = String(holder.children.length);
    // Once the user has typed here, a later refresh must not put a default back.
    $(".model", column).addEventListener("input", (event) => { event.target.dataset.touched = "yes"; });
    holder.appendChild(column);
  }
  while (holder.children.length > count) holder.lastElementChild.remove();
  holder.style.setProperty("--count", String(count));
  fillDefaultModels();
}

// Empty columns the user has not touched get the base, then the loaded adapters in turn.
function fillDefaultModels() {
  const choices = state.models.map((m) => m.id);
  columns().forEach((column, i) => {
    const input = $(".model", column);
    if (!input.value && !input.dataset.touched && choices.length) input.value = choices[Math.min(i, choices.length - 1)];
  });
}

function samplingSettings() {
  const temperature = Number($("#temperature").value);
  const maxTokens = Number($("#max-tokens").value);
  const seedText = $("#seed").value.trim();
  const problems = [];
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 2) problems.push("temperature must be between 0 and 2");
  if (!Number.isInteger(maxTokens) || maxTokens < 1) problems.push("max tokens must be a whole number of at least 1");
  if (seedText && !Number.isInteger(Number(seedText))) problems.push("seed must be a whole number, or empty for a random one");
  return { temperature, maxTokens, seed: seedText ? Number(seedText) : null, sameSeed: $("#same-seed").checked, problems };
}

async function compare() {
  const prompt = $("#prompt").value;
  const settings = samplingSettings();
  if (!prompt.trim()) settings.problems.unshift("type a prompt first");
  if (settings.problems.length) {
    showNotice(`Cannot compare: ${settings.problems.join("; ")}.`, true);
    return;
  }
  $("#notice").hidden = true;
  const controller = new AbortController();
  state.running = controller;
  $("#run").disabled = true;
  $("#stop").disabled = false;
  try {
    await Promise.all(columns().map((column, i) => {
      let seed = settings.seed;
      if (seed !== null && !settings.sameSeed) seed += i;
      return runColumn(column, prompt, settings, seed, controller.signal);
    }));
  } finally {
    state.running = null;
    $("#run").disabled = false;
    $("#stop").disabled = true;
    // A store ref a column named is loaded now: both lists change.
    await Promise.all([refreshModels(), refreshStore()]);
  }
}

async function runColumn(column, prompt, settings, seed, signal) {
  const model = $(".model", column).value.trim();
  const reply = $(".reply", column);
  const stats = $(".stats", column);
  const message = $(".message", column);
  reply.textContent = "";
  stats.textContent = "";
  column.dataset.state = "running";
  setMessage(message, model ? `waiting for ${model}…` : "", false);
  if (!model) {
    setMessage(message, "Choose a model for this column: the base, a loaded adapter, or a store ref such as name@3.", true);
    column.dataset.state = "error";
    return;
  }
  const body = {
    model,
    messages: [{ role: "user", content: prompt }],
    temperature: settings.temperature,
    max_tokens: settings.maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  };
  if (seed !== null) body.seed = seed;
  const run = { start: performance.now(), first: null, last: null, tokens: null, deltas: 0, finish: null, seed };
  try {
    let response;
    try {
      response = await fetch("v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
    } catch (error) {
      if (signal.aborted) throw error;
      throw unreachable(error);
    }
    markConnection(true);
    if (!response.ok) throw await errorFrom(response);
    const done = await readEvents(response, signal, (event) => {
      if (event.error) throw new ApiError(500, `The server stopped this reply: ${event.error.message || JSON.stringify(event.error)}`);
      if (event.usage) run.tokens = event.usage.completion_tokens;
      for (const choice of event.choices || []) {
        const delta = (choice.delta && choice.delta.content) || "";
        if (delta) {
          const now = performance.now();
          if (run.first === null) {
            run.first = now;
            setMessage(message, "", false);
          }
          run.last = now;
          run.deltas += 1;
          reply.append(delta);
        }
        if (choice.finish_reason) run.finish = choice.finish_reason;
      }
      showStats(stats, run);
    });
    if (!done) {
      throw new ApiError(0, `The connection was lost after ${run.deltas} token(s): the server stopped or restarted mid-reply. ` +
        "The text above is incomplete; run the comparison again once the server is back.");
    }
    showStats(stats, run);
    column.dataset.state = "done";
    if (!reply.textContent) {
      setMessage(message, `The model returned an empty reply (finish reason: ${run.finish || "unknown"}).`, false);
    } else {
      setMessage(message, "", false);
    }
  } catch (error) {
    column.dataset.state = "error";
    if (signal.aborted) {
      setMessage(message, `Stopped after ${run.deltas} token(s).`, false);
    } else {
      setMessage(message, error instanceof ApiError ? error.message : `This reply failed in the page: ${error}`, true);
    }
    showStats(stats, run);
  }
}

// Reads an SSE body, calling onEvent with each JSON event; true once `data: [DONE]` arrived.
async function readEvents(response, signal, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (signal.aborted) throw error;
      return false; // the connection broke mid-stream
    }
    if (chunk.done) return false;
    buffer += decoder.decode(chunk.value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      let parsed;
      try {
        parsed = JSON.parse(data);
      } catch (_) {
        throw new ApiError(500, `The server sent an event this page cannot read: ${data.slice(0, 200)}`);
      }
      onEvent(parsed);
    }
  }
}

function showStats(element, run) {
  const parts = [];
  if (run.first !== null) parts.push(`TTFT ${Math.round(run.first - run.start)} ms`);
  const tokens = run.tokens !== null ? run.tokens : run.deltas;
  if (run.first !== null && run.last !== null && tokens > 1 && run.last > run.first) {
    parts.push(`${((tokens - 1) / ((run.last - run.first) / 1000)).toFixed(1)} tok/s`);
  } else if (run.first !== null) {
    parts.push("— tok/s");
  }
  if (run.first !== null || run.tokens !== null) parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
  if (run.finish) parts.push(`finish: ${run.finish}`);
  if (run.seed !== null && run.seed !== undefined) parts.push(`seed ${run.seed}`);
  element.textContent = parts.join(" · ");
}

// --- models (base and loaded adapters) ----------------------------------------------------
async function refreshModels() {
  let listing;
  try {
    listing = await api("v1/models");
  } catch (error) {
    // Keep the last rows (an unload can still be tried; the server will judge it) and say why they may be stale.
    setMessage($("#resident-message"), `Cannot list the loaded adapters: ${error.message}`, true);
    return;
  }
  setMessage($("#resident-message"), "", false);
  state.models = listing.data || [];
  renderModelOptions();
  fillDefaultModels();
  const body = $("#resident-table tbody");
  body.replaceChildren();
  const adapters = state.models.filter((m) => m.parent !== null);
  if (!adapters.length) setMessage($("#resident-message"), "No adapter is loaded; the base answers alone.", false);
  for (const model of adapters) {
    const row = body.insertRow();
    row.dataset.name = model.id;
    cell(row, model.id, "code");
    cell(row, model.root || "");
    const actions = row.insertCell();
    actions.appendChild(button("Unload", () => unload(model.id)));
  }
}

function renderModelOptions() {
  const options = $("#model-options");
  options.replaceChildren();
  const seen = new Set();
  const add = (value, label) => {
    if (seen.has(value)) return;
    seen.add(value);
    const option = document.createElement("option");
    option.value = value;
    option.label = label;
    options.appendChild(option);
  };
  for (const model of state.models) add(model.id, model.parent === null ? "base" : "loaded adapter");
  for (const ref of state.storeRefs) add(ref, "store");
}

// --- admin ---------------------------------------------------------------------------------
async function load(name, path, replace) {
  try {
    const text = await api("v1/load_lora_adapter", { method: "POST", body: { lora_name: name, lora_path: path, load_inplace: Boolean(replace) } });
    showNotice(String(text), false);
  } catch (error) {
    showNotice(`Could not load ${name}: ${error.message}`, true);
  }
  await Promise.all([refreshModels(), refreshStore()]);
}

async function unload(name) {
  try {
    const text = await api("v1/unload_lora_adapter", { method: "POST", body: { lora_name: name } });
    showNotice(String(text), false);
  } catch (error) {
    showNotice(`Could not unload ${name}: ${error.message}`, true);
  }
  await Promise.all([refreshModels(), refreshStore()]);
}

// --- store browser ------------------------------------------------------------------------
let storeRequest = 0;

async function refreshStore() {
  if (!state.info || !state.info.store) {
    setMessage($("#store-message"), "This server has no adapter store (start it with --store to browse one).", false);
    return;
  }
  const query = new URLSearchParams({ name: $("#filter-name").value, base: $("#filter-base").value });
  const ticket = ++storeRequest;
  let listing;
  try {
    listing = await api(`playground/store?${query}`);
  } catch (error) {
    if (ticket === storeRequest) setMessage($("#store-message"), `Cannot list the store: ${error.message}`, true);
    return;
  }
  if (ticket !== storeRequest) return; // a newer filter already answered
  $("#store-root").textContent = listing.root;
  const body = $("#store-table tbody");
  body.replaceChildren();
  const refs = [];
  let versions = 0;
  for (const adapter of listing.adapters) {
    for (const version of adapter.versions) {
      versions += 1;
      refs.push(version.ref, ...version.tags.map((tag) => `${adapter.name}@${tag}`));
      body.appendChild(storeRow(adapter.name, version));
    }
    refs.push(adapter.name);
  }
  if (!$("#filter-name").value && !$("#filter-base").value) {
    state.storeRefs = refs;
    renderModelOptions();
  }
  setMessage($("#store-message"), versions ? "" : "No stored adapter matches these filters.", false);
}

function storeRow(name, version) {
  const row = document.createElement("tr");
  row.dataset.ref = version.ref;
  cell(row, name, "code");
  cell(row, String(version.version), null, "num");
  cell(row, version.tags.join(", "));
  const base = version.base;
  const baseCell = cell(row, base ? `${base.name || "unnamed"} (${base.fingerprint})` : "unknown");
  if (version.base_matches_server === false) {
    baseCell.classList.add("mismatch");
    baseCell.title = "trained on another base than this server's: it will be refused";
  }
  cell(row, version.rank === null ? "" : String(version.rank), null, "num");
  cell(row, Array.isArray(version.targets) ? version.targets.join(", ") : String(version.targets || ""));
  cell(row, version.bytes.toLocaleString("en-US"), null, "num").dataset.bytes = String(version.bytes);
  const sha = cell(row, version.sha256 ? version.sha256.slice(0, 12) : "", "code");
  sha.title = version.sha256 || "";
  sha.dataset.sha256 = version.sha256 || "";
  cell(row, version.loaded_as.join(", "));
  const actions = row.insertCell();
  if (version.loaded_as.length) {
    for (const loadedName of version.loaded_as) actions.appendChild(button(`Unload ${loadedName}`, () => unload(loadedName)));
  } else {
    actions.appendChild(button("Load", () => load(version.ref, `store:${version.ref}`, false)));
  }
  actions.appendChild(button("Compare", () => useInColumn(version.ref)));
  return row;
}

// Put a ref into the first column that is not already showing it (the last one if all are).
function useInColumn(ref) {
  const inputs = columns().map((c) => $(".model", c));
  const target = inputs.find((input, i) => i > 0 && input.value !== ref) || inputs[inputs.length - 1];
  target.value = ref;
  target.focus();
}

// --- small DOM helpers ----------------------------------------------------------------------
function cell(row, text, wrap, className) {
  const td = row.insertCell();
  if (wrap) {
    const inner = document.createElement(wrap);
    inner.textContent = text;
    td.appendChild(inner);
  } else {
    td.textContent = text;
  }
  if (className) td.className = className;
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// --- start ------------------------------------------------------------------------------------
async function start() {
  layoutColumns();
  $("#column-count").addEventListener("change", layoutColumns);
  $("#run").addEventListener("click", compare);
  $("#stop").addEventListener("click", () => state.running && state.running.abort());
  $("#refresh-models").addEventListener("click", refreshModels);
  $("#refresh-store").addEventListener("click", refreshStore);
  const refilter = debounce(refreshStore, 200);
  $("#filter-name").addEventListener("input", refilter);
  $("#filter-base").addEventListener("input", refilter);
  // A new key may show what the old one could not: list again once the typing stops.
  const relist = () => Promise.all([refreshModels(), refreshStore()]);
  $("#api-key").addEventListener("input", debounce(relist, 400));
  $("#api-key").addEventListener("change", relist);
  $("#load-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load($("#load-name").value.trim(), $("#load-path").value.trim(), $("#load-inplace").checked);
  });
  try {
    state.info = await api("playground/info");
  } catch (error) {
    showNotice(error.message, true);
    document.body.dataset.ready = "error";
    return;
  }
  $("#base-name").textContent = state.info.base;
  $("#max-tokens").max = String(state.info.max_model_len); // prompt + reply must fit; the server says by how much
  $("#key-hint").textContent = state.info.api_key_required
    ? "this server needs the key for every request"
    : "no key set on the server: load and unload are off";
  await Promise.all([refreshModels(), refreshStore()]);
  document.body.dataset.ready = "yes";
  setInterval(() => api("health").catch(() => {}), 3000); // keeps the connection badge honest
}

document.addEventListener("DOMContentLoaded", start);
