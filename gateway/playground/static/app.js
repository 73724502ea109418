// The playground: a client of the server's public OpenAI face, nothing more.
//   GET  /openai/v1/models             the served model (and LoRA adapters), with its tasks
//   POST /openai/v1/chat/completions   streamed (SSE) with stream_options.include_usage
//   POST /openai/v1/embeddings         for the "compare sentences" view of embedding models
// The conversation lives in this page; the API key and the settings in localStorage.

import { renderMarkdown } from "./markdown.js";
import { sseEvents } from "./sse.js";

const API = "/openai/v1";
const KEY_STORAGE = "hf-gateway.playground.apiKey";
const SETTINGS_STORAGE = "hf-gateway.playground.settings";
const SETTING_IDS = ["system-prompt", "temperature", "top-p", "max-tokens", "seed"];
const CHAT_TASKS = ["text_generation", "text2text_generation"];

const $ = (id) => document.getElementById(id);
const state = { cards: new Map(), history: [], controller: null, conversation: 0 };

class ApiError extends Error {
  constructor(status, message, code = "", { inBand = false, retryAfter = null, requestId = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.inBand = inBand;
    this.retryAfter = retryAfter;
    this.requestId = requestId;  // the server's x-request-id: what its access log and traces carry
  }

  get title() {
    if (this.inBand) return "The stream failed after it started";
    const label = { 400: "Bad request", 401: "Unauthorized", 404: "Not found", 413: "Too large", 429: "Busy", 503: "Unavailable" }[this.status];
    return [this.status, label, this.code].filter(Boolean).join(" · ");
  }
}

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// An error response in any envelope: OpenAI's {"error": {...}}, KServe's {"error": "..."}, or text.
async function errorFrom(response) {
  const text = await response.text();
  let message = text.slice(0, 1000) || response.statusText || "request failed";
  let code = "";
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error === "object") {
      message = error.message || message;
      code = error.code || error.type || "";
    } else if (typeof error === "string") {
      message = error;
    }
  } catch {
    // not JSON: keep the text
  }
  return new ApiError(response.status, message, code, {
    retryAfter: response.headers.get("retry-after"), requestId: response.headers.get("x-request-id"),
  });
}

async function api(path, body) {
  const init = body === undefined ? { headers: requestHeaders() } : { method: "POST", headers: requestHeaders(), body: JSON.stringify(body) };
  const response = await fetch(API + path, init);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

function errorBox(error) {
  const box = node("div", "error");
  box.setAttribute("role", "alert");
  if (error instanceof ApiError) {
    box.dataset.status = error.inBand ? "stream" : String(error.status);
    box.append(node("strong", "", error.title), node("span", "", error.message));
    if (error.retryAfter) box.append(node("span", "", `Retry after ${error.retryAfter} s.`));
    if (error.requestId) box.append(node("small", "request-id", `request id ${error.requestId}`));
  } else {
    box.dataset.status = "network";
    box.append(node("strong", "", "Network error"), node("span", "", String(error.message || error)));
  }
  return box;
}

// -- settings -------------------------------------------------------------------------------------

function restoreSettings() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) ?? "";
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) ?? "{}");
  } catch {
    saved = {};
  }
  for (const id of SETTING_IDS) if (typeof saved[id] === "string") $(id).value = saved[id];
}

function saveSettings() {
  localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(Object.fromEntries(SETTING_IDS.map((id) => [id, $(id).value]))));
}

// What the controls ask for. Values are sent as typed: the server, not the page, judges them.
function samplingParameters() {
  const out = {};
  const number = (id) => {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : Number(raw);
  };
  for (const [id, name] of [["temperature", "temperature"], ["top-p", "top_p"], ["max-tokens", "max_tokens"], ["seed", "seed"]]) {
    const value = number(id);
    if (value !== undefined) out[name] = value;
  }
  return out;
}

// -- models and views -----------------------------------------------------------------------------

function showView(name) {
  for (const view of ["chat", "embed", "other"]) $(`${view}-view`).hidden = view !== name;
  $("settings").hidden = name !== "chat";
  document.body.dataset.view = name;
}

function chooseView() {
  const card = state.cards.get($("model").value);
  if (!card) return;
  const tasks = card.tasks ?? ["text_generation"];  // a plain OpenAI server: assume chat
  const parts = [card.engine, card.dtype, card.max_model_len && `context ${card.max_model_len}`].filter(Boolean);
  $("server-status").textContent = parts.join(" · ");
  if (tasks.some((t) => CHAT_TASKS.includes(t))) showView("chat");
  else if (tasks.includes("text_embedding")) showView("embed");
  else {
    $("other-text").textContent =
      `${card.id} serves ${tasks.join(", ")}, which has no chat or embeddings here. ` +
      "Call it through KServe's /v1/models/<name>:predict or /v2/models/<name>/infer (see the README).";
    showView("other");
  }
}

async function loadModels() {
  const select = $("model");
  const previous = select.value;
  $("server-status").textContent = "connecting…";
  try {
    const { data } = await api("/models");
    state.cards = new Map(data.map((card) => [card.id, card]));
    select.replaceChildren(...data.map((card) => {
      const option = node("option", "", card.parent ? `${card.id} (adapter of ${card.parent})` : card.id);
      option.value = card.id;
      return option;
    }));
    if (state.cards.has(previous)) select.value = previous;
    $("server-status").classList.remove("bad");
    chooseView();
  } catch (error) {
    state.cards = new Map();
    select.replaceChildren();
    $("server-status").classList.add("bad");
    $("server-status").textContent = error.status === 401
      ? "This server needs an API key: enter it above."
      : `Cannot list models: ${error.message}`;
    showView("chat");
  }
}

// -- chat -----------------------------------------------------------------------------------------

function appendMessage(role, text) {
  const item = node("li", `message ${role}`);
  item.append(node("div", "role", role === "user" ? "You" : "Assistant"));
  const content = node("div", "content");
  if (role === "user") content.textContent = text;
  else content.append(renderMarkdown(text));
  item.append(content);
  $("messages").append(item);
  scrollToEnd(true);
  return item;
}

function scrollToEnd(force = false) {
  const list = $("messages");
  if (force || list.scrollHeight - list.scrollTop - list.clientHeight < 80) list.scrollTop = list.scrollHeight;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("prompt").disabled = busy;
  $("model").disabled = busy;
}

// The line under an answer: measured here, in the browser, plus the server's usage chunk.
function statsLine(stats) {
  const line = node("div", "stats");
  const add = (name, text) => {
    const span = node("span", name, text);
    line.append(span);
  };
  if (stats.ttft !== null) add("ttft", `TTFT ${Math.round(stats.ttft)} ms`);
  if (stats.usage && stats.decodeSeconds > 0 && stats.usage.completion_tokens > 1) {
    // Tokens after the first over the time they took: the decode speed a reader sees.
    add("tps", `${((stats.usage.completion_tokens - 1) / stats.decodeSeconds).toFixed(1)} tok/s`);
  }
  if (stats.usage) add("usage", `${stats.usage.prompt_tokens} prompt + ${stats.usage.completion_tokens} completion tokens`);
  add("finish", `finish: ${stats.finish ?? "unknown"}`);
  return line;
}

async function send(text) {
  const user = { role: "user", content: text };
  const userItem = appendMessage("user", text);
  const answer = appendMessage("assistant", "");
  answer.classList.add("streaming");
  const content = answer.querySelector(".content");

  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, user);
  const body = { model: $("model").value, messages, stream: true, stream_options: { include_usage: true }, ...samplingParameters() };

  const controller = new AbortController();
  state.controller = controller;
  const conversation = state.conversation;  // "New chat" while this streams must not get this turn
  const keep = () => {
    if (state.conversation === conversation) state.history.push(user, { role: "assistant", content: answerText });
  };
  setBusy(true);
  const started = performance.now();
  const stats = { ttft: null, usage: null, finish: null, decodeSeconds: 0 };
  let firstAt = null;
  let answerText = "";
  let frame = 0;
  const render = () => {
    frame = 0;
    content.replaceChildren(renderMarkdown(answerText));
    scrollToEnd();
  };

  try {
    const response = await fetch(`${API}/chat/completions`, {
      method: "POST", headers: requestHeaders(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) {
        const e = chunk.error;
        throw new ApiError(0, e.message ?? String(e), e.code || e.type || "", { inBand: true, requestId: response.headers.get("x-request-id") });
      }
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta?.content ?? "";
        if (delta) {
          const now = performance.now();
          if (firstAt === null) {
            firstAt = now;
            stats.ttft = now - started;
          }
          stats.decodeSeconds = (now - firstAt) / 1000;
          answerText += delta;
          if (!frame) frame = requestAnimationFrame(render);
        }
        if (choice.finish_reason) stats.finish = choice.finish_reason;
      }
      if (chunk.usage) stats.usage = chunk.usage;
    }
    keep();
  } catch (error) {
    if (error.name === "AbortError") {
      stats.finish = "stopped";  // the browser closed the connection; the server aborted the generation
      if (answerText) keep();  // what was said so far stays in the conversation
    } else {
      userItem.classList.add("failed");
      userItem.title = "Not kept in the conversation";
      answer.classList.add("failed");
      answer.append(errorBox(error));
      if (!answerText) $("prompt").value = text;  // nothing came back: give the message back to edit
      stats.finish = null;
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    render();
    answer.classList.remove("streaming");
    if (!answer.classList.contains("failed") || answerText) answer.append(statsLine(stats));
    if (state.controller === controller) {  // not already handed over by "New chat"
      state.controller = null;
      setBusy(false);
      $("prompt").focus();
    }
  }
}

// -- embeddings -----------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

async function compare() {
  const result = $("compare-result");
  result.replaceChildren(node("span", "", "…"));
  const started = performance.now();
  try {
    const { data, usage } = await api("/embeddings", { model: $("model").value, input: [$("text-a").value, $("text-b").value] });
    const [a, b] = [data[0].embedding, data[1].embedding];
    const similarity = cosine(a, b);
    result.replaceChildren(
      node("div", "similarity", `cosine similarity ${similarity.toFixed(4)}`),
      node("div", "stats", `${a.length} dimensions · ${usage?.prompt_tokens ?? "?"} tokens · ${Math.round(performance.now() - started)} ms`),
    );
    result.dataset.similarity = String(similarity);
  } catch (error) {
    result.replaceChildren(errorBox(error));
  }
}

// -- wiring ---------------------------------------------------------------------------------------

function main() {
  restoreSettings();
  for (const id of SETTING_IDS) $(id).addEventListener("change", saveSettings);
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadModels();
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("api-key").dispatchEvent(new Event("change"));
  });
  $("model").addEventListener("change", chooseView);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", () => {
    const streaming = state.controller;
    state.controller = null;
    streaming?.abort();
    setBusy(false);
    state.conversation += 1;
    state.history = [];
    $("messages").replaceChildren();
    $("prompt").focus();
  });
  $("compare").addEventListener("click", compare);
  loadModels();
}

main();
