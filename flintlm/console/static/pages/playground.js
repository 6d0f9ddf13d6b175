// Playground: chat with the served model, streamed, with the sampling settings, a JSON schema
// and tools; each answer shows its TTFT, tokens/s, tokens and cost, and "View code" gives the
// same request as curl, Python and JavaScript. Model output is shown as text, never as HTML.

import { clear, el } from "../dom.js";

const CODE_LANGUAGES = ["curl", "Python", "JavaScript"];

export default {
  id: "playground",
  title: "Playground",
  roles: ["key", "open"],  // the admin key is not an API key: the API would refuse its chats
  mount,
};

function field(label, input, hint) {
  return el("label", {}, label, input, hint ? el("span", { class: "hint" }, hint) : null);
}

function numberInput(testid, attrs) {
  return el("input", { type: "number", "data-testid": testid, ...attrs });
}

async function mount(root, { api }) {
  const history = [];  // the conversation as sent: {role, content}
  let running = null;  // AbortController of the answer streaming now
  let prices = null;  // USD per 1M tokens of the served model, from GET /v1/prices

  const model = el("select", { "data-testid": "pg-model" });
  const system = el("textarea", { "data-testid": "pg-system", rows: 3,
                                  placeholder: "You are a helpful assistant." });
  const temperature = numberInput("pg-temperature", { min: 0, max: 2, step: 0.1, value: "0.7" });
  const topP = numberInput("pg-top-p", { min: 0, max: 1, step: 0.05, value: "1" });
  const maxTokens = numberInput("pg-max-tokens", { min: 1, step: 1, value: "256" });
  const seed = numberInput("pg-seed", { step: 1, placeholder: "random" });
  const schema = el("textarea", { class: "mono", "data-testid": "pg-schema", rows: 5,
                                  placeholder: '{"type": "object", "properties": {...}}' });
  const tools = el("textarea", { class: "mono", "data-testid": "pg-tools", rows: 5,
                                 placeholder: '[{"type": "function", "function": {...}}]' });
  const settingsError = el("p", { class: "error", "data-testid": "pg-settings-error" });

  const transcript = el("ol", { class: "transcript", "data-testid": "pg-transcript",
                                "aria-live": "polite" });
  const input = el("textarea", { "data-testid": "pg-input", rows: 3,
                                 placeholder: "Message (Ctrl+Enter sends)" });
  // Disabled until the model list has arrived: a question sent before it would name no model.
  const send = el("button", { type: "submit", class: "primary", "data-testid": "pg-send",
                              disabled: true }, "Send");
  const stop = el("button", { type: "button", "data-testid": "pg-stop", disabled: true,
                              onclick: () => running && running.abort() }, "Stop");
  const reset = el("button", { type: "button", "data-testid": "pg-clear",
                               onclick: () => { history.length = 0; clear(transcript); } },
                   "Clear");
  const codePanel = el("div", { class: "code-panel", "data-testid": "pg-code-panel",
                                hidden: true });
  const viewCode = el("button", { type: "button", "data-testid": "pg-view-code",
                                  onclick: () => toggleCode() }, "View code");

  root.append(
    el("h2", {}, "Playground"),
    el("div", { class: "pg-grid" },
      el("form", { class: "pg-settings", "data-testid": "pg-settings",
                   onsubmit: (event) => event.preventDefault() },
        field("Model", model),
        field("System prompt", system),
        el("div", { class: "pg-row" }, field("Temperature", temperature), field("top_p", topP)),
        el("div", { class: "pg-row" }, field("max_tokens", maxTokens), field("Seed", seed)),
        field("JSON schema (response_format)", schema, "Leave empty for free text."),
        field("Tools (JSON array)", tools, "OpenAI tool definitions; empty for none."),
        settingsError),
      el("div", { class: "pg-chat" },
        transcript,
        el("form", { class: "composer", onsubmit: (event) => { event.preventDefault(); ask(); } },
          input,
          el("div", { class: "buttons" }, send, stop, reset, viewCode)),
        codePanel)));

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); ask(); }
  });

  // The served models and their prices; the page works without prices (no cost shown).
  const [models, priceList] = await Promise.all([
    api("/v1/models").then((r) => (r.ok ? r.json() : { data: [] })).catch(() => ({ data: [] })),
    api("/v1/prices").then((r) => (r.ok ? r.json() : { data: [] })).catch(() => ({ data: [] })),
  ]);
  for (const entry of models.data || []) model.append(el("option", { value: entry.id }, entry.id));
  prices = Object.fromEntries((priceList.data || []).map((p) => [p.model, p]));
  send.disabled = false;

  /** The request the settings describe (throws with a message when a JSON field is bad). */
  function buildRequest(messages) {
    const body = { model: model.value, messages: [], stream: true,
                   stream_options: { include_usage: true } };
    if (system.value.trim()) body.messages.push({ role: "system", content: system.value });
    body.messages.push(...messages);
    for (const [name, node, parse] of [["temperature", temperature, Number.parseFloat],
                                       ["top_p", topP, Number.parseFloat],
                                       ["max_tokens", maxTokens, Number.parseInt],
                                       ["seed", seed, Number.parseInt]]) {
      if (node.value.trim() !== "") body[name] = parse(node.value);
    }
    if (schema.value.trim()) {
      body.response_format = { type: "json_schema",
                               json_schema: { name: "response", strict: true,
                                              schema: parseJson(schema.value, "JSON schema") } };
    }
    if (tools.value.trim()) body.tools = parseJson(tools.value, "Tools");
    return body;
  }

  function pendingMessages() {
    const text = input.value;
    return text.trim() ? [...history, { role: "user", content: text }] : [...history];
  }

  async function ask() {
    if (running || send.disabled || !input.value.trim()) return;
    settingsError.textContent = "";
    let body;
    try {
      body = buildRequest(pendingMessages());
    } catch (error) {
      settingsError.textContent = error.message;
      return;
    }
    const userText = input.value;
    history.push({ role: "user", content: userText });
    transcript.append(message("user", userText));
    input.value = "";
    const answer = message("assistant", "");
    transcript.append(answer);
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    try {
      const result = await streamAnswer(api, body, answer, running.signal);
      history.push({ role: "assistant", content: result.text || result.toolText });
      answer.append(stats(result, prices[body.model]));
    } catch (error) {
      answer.classList.add("msg-error");
      answer.dataset.testid = "msg-error";
      const reason = error.name === "AbortError" ? "stopped" : error.message;
      answer.append(el("div", { class: "msg-body" }, reason));
      history.pop();  // the question goes unanswered: keep the history as the server saw it
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      transcript.scrollTop = transcript.scrollHeight;
      if (!codePanel.hidden) renderCode();
    }
  }

  let language = CODE_LANGUAGES[0];

  function toggleCode() {
    codePanel.hidden = !codePanel.hidden;
    if (!codePanel.hidden) renderCode();
  }

  function renderCode() {
    clear(codePanel);
    let body;
    try {
      body = buildRequest(pendingMessages());
    } catch (error) {
      codePanel.append(el("p", { class: "error" }, error.message));
      return;
    }
    const tabs = el("div", { class: "tabs", role: "tablist" });
    for (const name of CODE_LANGUAGES) {
      tabs.append(el("button", { type: "button", role: "tab", "aria-selected": String(name === language),
                                 "data-testid": `pg-code-tab-${name.toLowerCase()}`,
                                 onclick: () => { language = name; renderCode(); } }, name));
    }
    const code = codeFor(language, location.origin, body);
    codePanel.append(tabs,
      el("pre", { "data-testid": "pg-code" }, el("code", {}, code)),
      el("p", { class: "hint" }, "Set FLINTLM_API_KEY to your key first: the console holds only a " +
         "session cookie and cannot show the key."));
  }

  return () => { if (running) running.abort(); };
}

function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}

/** A transcript entry; `content` becomes a text node, whatever it holds. */
function message(role, content) {
  return el("li", { class: `msg msg-${role}`, "data-testid": `msg-${role}` },
    el("div", { class: "msg-role" }, role),
    el("div", { class: "msg-body", "data-testid": "msg-body" }, content));
}

/** The server-sent events' data fields of a fetch Response, one JSON string at a time. */
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

async function errorMessage(response) {
  const answer = await response.json().catch(() => null);
  return (answer && answer.error && answer.error.message) || `HTTP ${response.status}`;
}

/** Stream one answer into `answer`'s body; returns its text, usage and timings. */
async function streamAnswer(api, body, answer, signal) {
  const startedMs = performance.now();
  const response = await api("/v1/chat/completions", { method: "POST", body, signal });
  if (!response.ok) throw new Error(await errorMessage(response));
  const bodyNode = answer.querySelector(".msg-body");
  const toolNode = el("div", { class: "msg-tools", "data-testid": "msg-tools" });
  const toolCalls = [];
  const result = { text: "", toolText: "", usage: null, startedMs, firstMs: null, endMs: null,
                   finishReason: null };
  for await (const data of sseData(response)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
    if (chunk.usage) result.usage = chunk.usage;
    const choice = (chunk.choices || [])[0];
    if (!choice) continue;
    const delta = choice.delta || {};
    if (choice.finish_reason) result.finishReason = choice.finish_reason;
    if (delta.content || delta.tool_calls) result.firstMs ??= performance.now();
    if (delta.content) {
      result.text += delta.content;
      bodyNode.textContent = result.text;
    }
    for (const call of delta.tool_calls || []) {
      const slot = (toolCalls[call.index ?? toolCalls.length] ??= { name: "", arguments: "" });
      if (call.function && call.function.name) slot.name += call.function.name;
      if (call.function && call.function.arguments) slot.arguments += call.function.arguments;
      result.toolText = toolCalls.map((c) => `${c.name}(${c.arguments})`).join("\n");
      toolNode.textContent = `tool calls:\n${result.toolText}`;
      if (!toolNode.parentNode) answer.append(toolNode);
    }
  }
  result.endMs = performance.now();
  return result;
}

/** The answer's figures: TTFT, decode tokens/s, tokens (cached included) and cost. */
function stats(result, price) {
  const usage = result.usage;
  const parts = [];
  if (result.firstMs !== null) {
    parts.push(el("span", { "data-testid": "msg-ttft" },
                  `TTFT ${Math.round(result.firstMs - result.startedMs)} ms`));
  }
  if (usage) {
    const decodeS = (result.endMs - (result.firstMs ?? result.startedMs)) / 1000;
    // the first token's time is TTFT: the rate counts the tokens after it
    const rate = usage.completion_tokens > 1 && decodeS > 0
      ? `${((usage.completion_tokens - 1) / decodeS).toFixed(1)} tok/s` : "– tok/s";
    parts.push(el("span", { "data-testid": "msg-tps" }, rate));
    const cached = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
    parts.push(el("span", { "data-testid": "msg-tokens" },
                  `${usage.prompt_tokens} prompt (${cached} cached) + ` +
                  `${usage.completion_tokens} completion tokens`));
    if (price) {
      const perToken = (kind) => Number(price[kind]) / 1e6;
      const usd = (usage.prompt_tokens - cached) * perToken("input")
        + cached * perToken("cached_input") + usage.completion_tokens * perToken("output");
      parts.push(el("span", { "data-testid": "msg-cost" }, `$${formatUsd(usd)}`));
    }
  }
  if (result.finishReason) parts.push(el("span", {}, `finish: ${result.finishReason}`));
  return el("div", { class: "msg-stats", "data-testid": "msg-stats" }, parts);
}

/** Dollars to the ledger's precision (nano-USD) without trailing zeros: 0.0000031. */
function formatUsd(usd) {
  if (usd >= 0.01) return usd.toFixed(4);
  return usd.toFixed(9).replace(/0+$/, "").replace(/\.$/, ".0");
}

// --- View code: the same request for curl, the openai Python SDK and the openai JS SDK ---

function codeFor(language, origin, body) {
  if (language === "curl") return curlCode(origin, body);
  if (language === "Python") return pythonCode(origin, body);
  return javascriptCode(origin, body);
}

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function curlCode(origin, body) {
  return [`curl -N ${origin}/v1/chat/completions \\`,
          '  -H "Authorization: Bearer $FLINTLM_API_KEY" \\',
          '  -H "Content-Type: application/json" \\',
          `  -d ${shellQuote(JSON.stringify(body, null, 2))}`].join("\n");
}

/** A JSON value as a Python literal (JSON strings are valid Python strings). */
function python(value, indent = "") {
  const inner = `${indent}    `;
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + python(v, inner)).join(",\n")},\n${indent}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${python(v, inner)}`)
      .join(",\n")},\n${indent}}`;
  }
  return JSON.stringify(value);
}

function pythonCode(origin, body) {
  const args = Object.entries(body)
    .map(([name, value]) => `    ${name}=${python(value, "    ")},`).join("\n");
  return `import os

from openai import OpenAI

client = OpenAI(base_url="${origin}/v1", api_key=os.environ["FLINTLM_API_KEY"])
stream = client.chat.completions.create(
${args}
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print("\\n", chunk.usage)
`;
}

function javascriptCode(origin, body) {
  return `import OpenAI from "openai";

const client = new OpenAI({ baseURL: "${origin}/v1", apiKey: process.env.FLINTLM_API_KEY });
const stream = await client.chat.completions.create(${JSON.stringify(body, null, 2)});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
  if (chunk.usage) console.log("\\n", chunk.usage);
}
`;
}
