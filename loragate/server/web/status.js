// The status view: each model's state, requests in flight and served, and its p50 time to
// first token, from /v1/personas and the gateway's Prometheus metrics, refreshed every 2 s.
"use strict";

const REFRESH_MS = 2000;
const table = document.getElementById("status-rows");
const note = document.getElementById("status-note");
const apiKey = document.getElementById("api-key");

function authHeaders() {
  const key = apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Prometheus' text format, the lines of the metrics used here: name{labels} value.
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const match = SAMPLE.exec(line);
    if (!match || line.startsWith("#")) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(LABEL)) labels[key] = value;
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

// The p-quantile of a cumulative histogram, interpolated within its bucket as Prometheus'
// histogram_quantile does; null without observations.
export function quantile(p, buckets) {
  const sorted = [...buckets].sort((a, b) => a.le - b.le);
  const total = sorted.length ? sorted[sorted.length - 1].count : 0;
  if (!total) return null;
  const rank = p * total;
  let lower = 0, below = 0;
  for (const { le, count } of sorted) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / (count - below || 1));
    }
    lower = le; below = count;
  }
  return lower;
}

function perModel(samples) {
  const models = new Map();
  const of = (name) => {
    if (!models.has(name)) models.set(name, { served: 0, inFlight: 0, buckets: [] });
    return models.get(name);
  };
  for (const { name, labels, value } of samples) {
    if (!labels.persona || labels.persona === "unknown") continue;
    const model = of(labels.persona);
    if (name === "loragate_persona_requests_total") model.served += value;
    else if (name === "loragate_persona_requests_in_flight") model.inFlight += value;
    else if (name === "loragate_persona_time_to_first_token_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      const same = model.buckets.find((b) => b.le === le);  // versions of one persona: summed
      if (same) same.count += value; else model.buckets.push({ le, count: value });
    }
  }
  return models;
}

async function fetchText(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.text();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(served, personas, models) {
  const rows = [];
  const names = new Set([...served, ...personas.keys()]);
  for (const name of [...names].sort()) {
    const metrics = models.get(name) || { served: 0, inFlight: 0, buckets: [] };
    const state = personas.has(name) ? personas.get(name) : "base model";
    const p50 = quantile(0.5, metrics.buckets);
    const row = document.createElement("tr");
    row.dataset.model = name;
    row.append(cell(name, "name"), cell(state, `state ${state.replace(" ", "-")}`),
      cell(String(metrics.inFlight), "in-flight"), cell(String(metrics.served), "served"),
      cell(p50 === null ? "–" : `${Math.round(p50 * 1000)} ms`, "ttft"));
    rows.push(row);
  }
  table.replaceChildren(...rows);
}

async function refresh() {
  try {
    const [cards, listing, text] = await Promise.all(
      ["/v1/models", "/v1/personas", "/metrics"].map(fetchText));
    const served = JSON.parse(cards).data.map((card) => card.id);  // the base model first
    const personas = new Map(JSON.parse(listing).data.map((p) => [p.name, p.state]));
    render(served, personas, perModel(parseMetrics(text)));
    note.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.statusReady = "true";
  } catch (err) {
    note.textContent = `Status unavailable: ${err.message}`;
  }
}

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
