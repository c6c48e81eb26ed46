// The loragate chat page: plain JavaScript, no build step, talking to its own origin only.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  persona: $("persona"), messages: $("messages"), empty: $("empty"),
  emptyTitle: $("empty-title"), summary: $("persona-summary"), composer: $("composer"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"), newChat: $("new-chat"),
  settings: $("settings"), toggleSettings: $("toggle-settings"), closeSettings: $("close-settings"),
  backdrop: $("backdrop"), personaCard: $("persona-card"), system: $("system"),
  temperature: $("temperature"), temperatureNumber: $("temperature-number"),
  topP: $("top-p"), topPNumber: $("top-p-number"), maxTokens: $("max-tokens"),
  ignoreEos: $("ignore-eos"), apiKey: $("api-key"), resetSettings: $("reset-settings"),
  tools: $("tools"), toolChoice: $("tool-choice"), toolsStatus: $("tools-status"),
};
const TOOL_MODES = ["auto", "required", "none"];
const FALLBACK_DEFAULTS = { temperature: 0.7, top_p: 0.9, max_tokens: 512 };
const state = {
  baseModel: null,  // the served base model's name
  personas: new Map(),  // name -> PersonaInfo (or a card from /v1/models)
  history: [],  // [{role, content, tool_calls?}] sent with every request
  controller: null,  // AbortController of the reply being streamed
};

class ApiError extends Error {
  constructor(message, code, status, retryAfter = null) {
    super(message); this.code = code; this.status = status; this.retryAfter = retryAfter;
  }
}

// ---- talking to the gateway ------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = els.apiKey.value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  // The gateway's errors are OpenAI envelopes: {"error": {"message", "type", "code", ...}}.
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) { message = body.error.message || message; code = body.error.code; }
  } catch { /* not JSON: keep the status line */ }
  // A 429 (the key's limits, or a full queue) and a 503 (a restart) say when to come back.
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  if (retryAfter && !/retry/i.test(message)) message += ` Retry in ${retryAfter} s.`;
  return new ApiError(message, code, response.status, retryAfter);
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

async function fetchPersonas(models) {
  try {
    return (await getJson("/v1/personas")).data;
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    // A gateway without the persona registry: its adapters are the models with a parent.
    return models.filter((m) => m.parent).map((m) => ({ name: m.id, base_model: m.parent }));
  }
}

// Parses a text/event-stream body, calling onEvent with each JSON payload until [DONE].
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") { await reader.cancel(); return; }
      const payload = JSON.parse(data);
      if (payload.error) throw new ApiError(payload.error.message, payload.error.code);
      onEvent(payload);
    }
  }
}

// ---- personas and settings -------------------------------------------------------------------

async function loadPersonas() {
  const models = (await getJson("/v1/models")).data;
  const base = models.find((m) => !m.parent);
  state.baseModel = base ? base.id : null;
  const personas = await fetchPersonas(models);
  state.personas = new Map(personas.map((p) => [p.name, p]));
  const previous = els.persona.value;
  const wanted = previous || localStorage.getItem("loragate.persona");
  els.persona.replaceChildren();
  if (state.baseModel) els.persona.append(new Option(`${state.baseModel} (base model)`, state.baseModel));
  for (const p of personas) {
    const option = new Option(p.description ? `${p.name}: ${p.description}` : p.name, p.name);
    option.disabled = p.state === "failed";
    els.persona.append(option);
  }
  const available = [...els.persona.options].filter((o) => !o.disabled).map((o) => o.value);
  els.persona.value = available.includes(wanted) ? wanted : (available[0] || "");
  if (previous && els.persona.value !== previous) {
    addNote(`${previous} is no longer available: now talking to ${els.persona.value}`, "info");
  }
  // Reloading the list keeps the user's settings unless the persona itself changed.
  showPersona(els.persona.value !== previous);
}

function currentPersona() {
  return state.personas.get(els.persona.value) || null;
}

function showPersona(applyDefaults) {
  const persona = currentPersona();
  const name = els.persona.value || "the model";
  els.emptyTitle.textContent = `Chat with ${name}`;
  els.summary.textContent = persona
    ? (persona.description || "A LoRA persona on the base model.")
    : "The base model, without a persona.";
  els.system.placeholder = persona && persona.system_prompt
    ? `The persona's own: ${persona.system_prompt}` : "None";
  renderPersonaCard(persona);
  if (applyDefaults) applySettings(persona);
}

function renderPersonaCard(persona) {
  els.personaCard.replaceChildren();
  const rows = persona
    ? [["Persona", persona.name], ["Version", persona.version], ["State", persona.state],
       ["Rank", persona.rank], ["Base model", persona.base_model],
       ["Requests served", persona.requests_served]]
    : [["Model", state.baseModel || "unknown"], ["Persona", "none"]];
  for (const [label, value] of rows) {
    if (value === undefined || value === null) continue;
    const row = document.createElement("div");
    const dt = document.createElement("span"); dt.textContent = label;
    const dd = document.createElement("strong"); dd.textContent = String(value);
    row.append(dt, dd);
    els.personaCard.append(row);
  }
}

function applySettings(persona) {
  const defaults = { ...FALLBACK_DEFAULTS, ...((persona && persona.defaults) || {}) };
  setPair(els.temperature, els.temperatureNumber, defaults.temperature);
  setPair(els.topP, els.topPNumber, defaults.top_p);
  els.maxTokens.value = defaults.max_tokens;
}

function setPair(range, number, value) {
  if (value === undefined || value === null) return;
  range.value = value;
  number.value = value;
}

function linkPair(range, number) {
  range.addEventListener("input", () => { number.value = range.value; });
  number.addEventListener("input", () => { range.value = number.value; });
}

function numberOrNull(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

function requestBody() {
  const messages = [];
  const system = els.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = {
    model: els.persona.value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  // Values go to the gateway as typed: it is the one to judge them (its errors are shown).
  const fields = { temperature: els.temperatureNumber, top_p: els.topPNumber, max_tokens: els.maxTokens };
  for (const [field, input] of Object.entries(fields)) {
    const value = numberOrNull(input);
    if (value !== null) body[field] = value;
  }
  if (els.ignoreEos.checked) body.ignore_eos = true;
  const offer = toolOffer();
  if (offer.tools.length) {
    body.tools = offer.tools;
    const choice = els.toolChoice.value;
    body.tool_choice = TOOL_MODES.includes(choice) ? choice : { type: "function", function: { name: choice } };
  }
  return body;
}

// ---- tools: offered to the model, their calls shown (never run) ----------------------------

// The settings' tools: a JSON list of OpenAI function tools, or empty for none.
function toolOffer() {
  const text = els.tools.value.trim();
  if (!text) return { tools: [], error: null };
  let tools;
  try { tools = JSON.parse(text); } catch (err) { return { tools: [], error: `not JSON (${err.message})` }; }
  if (!Array.isArray(tools)) tools = [tools];
  const named = tools.every((t) => t && t.type === "function" && t.function && t.function.name);
  if (!named) return { tools: [], error: 'each tool is {"type": "function", "function": {"name": ..., "parameters": {...}}}' };
  return { tools, error: null };
}

function showTools() {
  const { tools, error } = toolOffer();
  const wanted = els.toolChoice.value || localStorage.getItem("loragate.toolChoice") || "auto";
  els.toolChoice.replaceChildren(...TOOL_MODES.map((m) => new Option(m, m)));
  for (const t of tools) els.toolChoice.append(new Option(`call ${t.function.name}`, t.function.name));
  const choices = [...els.toolChoice.options].map((o) => o.value);
  els.toolChoice.value = choices.includes(wanted) ? wanted : "auto";
  els.toolChoice.disabled = !tools.length;
  els.toolsStatus.classList.toggle("invalid", Boolean(error));
  els.toolsStatus.textContent = error ? `Tools: ${error}`
    : tools.length ? `Offered: ${tools.map((t) => t.function.name).join(", ")}` : "None offered";
}

// Adds one chunk's call deltas to `calls` (the id and name come with a call's first piece).
function gatherCalls(calls, pieces) {
  for (const piece of pieces) {
    const call = calls[piece.index] || (calls[piece.index] = { id: "", name: "", arguments: "" });
    call.id = call.id || piece.id || "";
    if (piece.function) {
      call.name = call.name || piece.function.name || "";
      call.arguments += piece.function.arguments || "";
    }
  }
}

function prettyArguments(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// Each call of the reply as its own block under the text: the function's name, its arguments.
function renderCalls(reply, calls, done) {
  if (!reply.calls) {
    reply.calls = document.createElement("div");
    reply.calls.className = "tool-calls";
    reply.bubble.after(reply.calls);
  }
  const list = calls.filter(Boolean);
  while (reply.calls.children.length < list.length) {
    const block = document.createElement("div");
    block.className = "tool-call";
    const head = document.createElement("div");
    head.className = "tool-call-head";
    const label = document.createElement("span");
    label.textContent = "Tool call";
    const name = document.createElement("code");
    name.className = "tool-name";
    const args = document.createElement("pre");
    args.className = "tool-args";
    head.append(label, name);
    block.append(head, args);
    reply.calls.append(block);
  }
  list.forEach((call, i) => {
    const block = reply.calls.children[i];
    block.querySelector(".tool-name").textContent = call.name;
    block.querySelector(".tool-args").textContent = done ? prettyArguments(call.arguments) : call.arguments;
  });
  reply.bubble.hidden = !reply.bubble.textContent && list.length > 0;
}

// ---- the conversation ------------------------------------------------------------------------

function scrollToEnd(force) {
  const m = els.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

function addMessage(role, text) {
  els.empty.hidden = true;
  const row = document.createElement("div");
  row.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "msg-body";
  if (role === "assistant") {
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    avatar.textContent = (els.persona.value || "?").slice(0, 1).toUpperCase();
    row.append(avatar);
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = els.persona.value;
    body.append(who);
  }
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  body.append(bubble);
  row.append(body);
  els.messages.append(row);
  scrollToEnd(true);
  return { row, body, bubble };
}

function addNote(text, kind) {
  els.empty.hidden = true;
  const note = document.createElement("div");
  note.className = `note ${kind}`;
  if (kind === "error") note.setAttribute("role", "alert");
  note.textContent = text;
  els.messages.append(note);
  scrollToEnd(true);
  return note;
}

function setMeta(message, text) {
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = text;
  message.body.append(meta);
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.persona.disabled = busy;
  els.composer.classList.toggle("busy", busy);
}

async function sendMessage(text) {
  if (state.controller || !text.trim() || !els.persona.value) return;
  const offer = toolOffer();
  if (offer.error) {
    addNote(`Tools in the settings: ${offer.error}`, "error");
    openSettings(true);
    return;
  }
  const user = addMessage("user", text);
  state.history.push({ role: "user", content: text });
  const reply = addMessage("assistant", "");
  reply.row.dataset.state = "waiting";
  const started = performance.now();
  let content = "", usage = null, finish = null;
  const calls = [];
  state.controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()),
      signal: state.controller.signal,
    });
    if (!response.ok) throw await failure(response);
    reply.row.dataset.state = "streaming";
    await readEvents(response.body, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      if (choice.delta && choice.delta.content) {
        content += choice.delta.content;
        reply.bubble.textContent = content;
        scrollToEnd(false);
      }
      if (choice.delta && choice.delta.tool_calls) {
        gatherCalls(calls, choice.delta.tool_calls);
        renderCalls(reply, calls, false);
        scrollToEnd(false);
      }
    });
    finishReply(reply, content, finish === "length" ? "length" : "done", usage, started, calls);
    loadPersonas().catch(() => {});  // fresh counters (requests served) in the persona card
  } catch (err) {
    if (err.name === "AbortError") {
      finishReply(reply, content, "stopped", usage, started, calls);
    } else {
      failReply(user, reply, content, err);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    els.prompt.focus();
  }
}

function finishReply(reply, content, how, usage, started, calls = []) {
  reply.row.dataset.state = how;
  const made = calls.filter(Boolean);
  // A call cut short (stopped, or at max tokens) is shown but not kept: its arguments are partial.
  if (made.length && how === "done") {
    const toolCalls = made.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    state.history.push({ role: "assistant", content: content || null, tool_calls: toolCalls });
  } else {
    state.history.push({ role: "assistant", content });
  }
  if (made.length) renderCalls(reply, calls, true);
  else if (!content) reply.bubble.textContent = how === "stopped" ? "(stopped)" : "(no reply)";
  const seconds = (performance.now() - started) / 1000;
  const parts = [];
  if (usage) parts.push(`${usage.completion_tokens} tokens`, `${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
  else parts.push(`${seconds.toFixed(1)} s`);
  if (made.length) parts.push(made.length === 1 ? "tool call" : `${made.length} tool calls`);
  if (how === "stopped") parts.push("stopped");
  if (how === "length") parts.push("max tokens reached");
  setMeta(reply, parts.join(" · "));
}

function failReply(user, reply, content, err) {
  // The failed turn leaves the history, so the next request does not carry it.
  state.history.pop();
  user.row.classList.add("failed");
  if (content) { reply.row.dataset.state = "error"; } else { reply.row.remove(); }
  addNote(err.message || String(err), "error");
  if (err.code === "model_not_found") loadPersonas().catch(() => {});
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  els.messages.replaceChildren(els.empty);
  els.empty.hidden = false;
  els.prompt.focus();
}

// ---- layout and wiring -----------------------------------------------------------------------

function openSettings(open) {
  els.settings.classList.toggle("open", open);
  els.toggleSettings.setAttribute("aria-expanded", String(open));
  els.backdrop.hidden = !(open && window.matchMedia("(max-width: 900px)").matches);
}

function autosize() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 200)}px`;
}

function submitPrompt() {
  const text = els.prompt.value;
  if (!text.trim() || state.controller) return;
  els.prompt.value = "";
  autosize();
  sendMessage(text);
}

function wire() {
  linkPair(els.temperature, els.temperatureNumber);
  linkPair(els.topP, els.topPNumber);
  els.composer.addEventListener("submit", (e) => { e.preventDefault(); submitPrompt(); });
  els.prompt.addEventListener("input", autosize);
  els.prompt.addEventListener("keydown", (e) => {
    // isComposing: Enter that confirms an IME candidate (Chinese, Japanese...) does not send.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submitPrompt();
    }
  });
  els.stop.addEventListener("click", () => state.controller && state.controller.abort());
  els.newChat.addEventListener("click", newChat);
  els.persona.addEventListener("change", () => {
    localStorage.setItem("loragate.persona", els.persona.value);
    showPersona(true);
    if (state.history.length) addNote(`Now talking to ${els.persona.value}`, "info");
  });
  els.toggleSettings.addEventListener("click", () => openSettings(!els.settings.classList.contains("open")));
  els.closeSettings.addEventListener("click", () => openSettings(false));
  els.backdrop.addEventListener("click", () => openSettings(false));
  els.resetSettings.addEventListener("click", () => applySettings(currentPersona()));
  els.tools.value = localStorage.getItem("loragate.tools") || "";
  els.tools.addEventListener("input", () => {
    localStorage.setItem("loragate.tools", els.tools.value);
    showTools();
  });
  els.toolChoice.addEventListener("change", () => localStorage.setItem("loragate.toolChoice", els.toolChoice.value));
  showTools();
  els.apiKey.value = localStorage.getItem("loragate.apiKey") || "";
  els.apiKey.addEventListener("change", () => {
    localStorage.setItem("loragate.apiKey", els.apiKey.value.trim());
    start();
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => sendMessage(chip.textContent));
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !state.controller) loadPersonas().catch(() => {});
  });
}

async function start() {
  try {
    await loadPersonas();
    document.body.dataset.ready = "true";
  } catch (err) {
    const hint = err.status === 401 ? " Enter the gateway's key in the settings." : "";
    addNote(`Cannot list the personas: ${err.message}${hint}`, "error");
    if (err.status === 401) openSettings(true);
    document.body.dataset.ready = "error";
  }
}

wire();
openSettings(window.matchMedia("(min-width: 901px)").matches);
start();
