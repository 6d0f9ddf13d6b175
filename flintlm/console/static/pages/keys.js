// Keys (admin): create a key (its secret shown once, with a copy button), list every key with
// its limits, model scope and guardrail policy, change the policy, revoke. All through
// /admin/keys; every value from the server is shown as text.

import { clear, el } from "../dom.js";

export default {
  id: "keys",
  title: "Keys",
  roles: ["admin"],
  mount,
};

const LIMIT_FIELDS = [  // [body field, label, step]
  ["rpm", "Requests / min", 1], ["tpm", "Tokens / min", 1], ["token_quota", "Token quota", 1],
  ["budget_usd", "Budget (USD)", 0.01], ["max_tokens", "max_tokens ceiling", 1],
  ["max_concurrent", "Concurrent requests", 1],
];

async function errorText(response) {
  const answer = await response.json().catch(() => null);
  return (answer && answer.error && answer.error.message) || `HTTP ${response.status}`;
}

function limitsSummary(key) {
  const parts = [];
  if (key.rpm) parts.push(`${key.rpm} rpm`);
  if (key.tpm) parts.push(`${key.tpm} tpm`);
  if (key.token_quota) parts.push(`${key.token_quota} tokens/${key.quota_period}`);
  if (key.budget_usd) parts.push(`$${key.budget_usd}/${key.quota_period}`);
  if (key.max_tokens) parts.push(`max_tokens ${key.max_tokens}`);
  if (key.max_concurrent) parts.push(`${key.max_concurrent} concurrent`);
  return parts.length ? parts.join(", ") : "unlimited";
}

async function mount(root, { api }) {
  const inputs = {
    name: el("input", { "data-testid": "key-name", required: true, maxlength: 200 }),
    tenant_id: el("input", { "data-testid": "key-tenant", placeholder: "own tenant" }),
    models: el("input", { "data-testid": "key-models", placeholder: "all models" }),
    expires_at: el("input", { type: "date", "data-testid": "key-expires" }),
    guardrail: el("input", { "data-testid": "key-guardrail", placeholder: "server default" }),
    quota_period: el("select", { "data-testid": "key-quota-period" },
                     el("option", { value: "month" }, "month"),
                     el("option", { value: "day" }, "day")),
    capture: el("select", { "data-testid": "key-capture" },
                el("option", { value: "" }, "server default"),
                ...["request", "all", "never"].map((m) => el("option", { value: m }, m))),
  };
  for (const [name, , step] of LIMIT_FIELDS) {
    inputs[name] = el("input", { type: "number", min: step, step, "data-testid": `key-${name}`,
                                 placeholder: "no limit" });
  }
  const formError = el("p", { class: "error", "data-testid": "key-form-error" });
  const created = el("div", { "data-testid": "key-created" });
  const includeRevoked = el("input", { type: "checkbox", checked: true,
                                       "data-testid": "keys-include-revoked",
                                       onchange: () => refresh() });
  const listError = el("p", { class: "error" });
  const tableBody = el("tbody", { "data-testid": "keys-rows" });

  root.append(
    el("h2", {}, "API keys"),
    el("form", { class: "key-form", "data-testid": "key-form",
                 onsubmit: (event) => { event.preventDefault(); create(); } },
      el("label", { class: "wide" }, "Name", inputs.name),
      el("label", {}, "Tenant", inputs.tenant_id),
      el("label", {}, "Expires", inputs.expires_at),
      ...LIMIT_FIELDS.map(([name, label]) => el("label", {}, label, inputs[name])),
      el("label", {}, "Quota period", inputs.quota_period),
      el("label", {}, "Stored completions", inputs.capture),
      el("label", { class: "wide" }, "Models (comma-separated)", inputs.models),
      el("label", { class: "wide" }, "Guardrail policy", inputs.guardrail),
      el("div", { class: "buttons" },
        el("button", { type: "submit", class: "primary", "data-testid": "key-create" },
           "Create key")),
      formError),
    created,
    el("label", { class: "inline" }, includeRevoked, "Show revoked keys"),
    listError,
    el("table", { "data-testid": "keys-table" },
      el("thead", {}, el("tr", {}, ...["Name", "Id", "Prefix", "Tenant", "Status", "Limits",
                                       "Models", "Guardrail", "Created", ""].map(
        (h) => el("th", {}, h)))),
      tableBody));

  function createBody() {
    const body = { name: inputs.name.value.trim(), quota_period: inputs.quota_period.value };
    for (const name of ["tenant_id", "guardrail", "capture"]) {
      if (inputs[name].value.trim()) body[name] = inputs[name].value.trim();
    }
    for (const [name] of LIMIT_FIELDS) {
      const value = inputs[name].value.trim();
      if (value) body[name] = name === "budget_usd" ? value : Number.parseInt(value, 10);
    }
    const models = inputs.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (models.length) body.models = models;
    if (inputs.expires_at.value) body.expires_at = inputs.expires_at.value;
    return body;
  }

  async function create() {
    formError.textContent = "";
    const response = await api("/admin/keys", { method: "POST", body: createBody() });
    if (!response.ok) {
      formError.textContent = await errorText(response);
      return;
    }
    const key = await response.json();
    showSecret(key);
    for (const input of Object.values(inputs)) if (input.tagName === "INPUT") input.value = "";
    await refresh();
  }

  function showSecret(key) {
    const secret = el("code", { "data-testid": "key-secret" }, key.secret);
    const copied = el("span", { class: "hint", "data-testid": "key-copied" });
    const copy = el("button", { type: "button", "data-testid": "key-copy", onclick: async () => {
      try {
        await navigator.clipboard.writeText(key.secret);
        copied.textContent = "Copied.";
      } catch {
        // no clipboard permission (plain http, not localhost): select it for Ctrl+C instead
        getSelection().selectAllChildren(secret);
        copied.textContent = "Selected: press Ctrl+C.";
      }
    } }, "Copy");
    clear(created).append(el("div", { class: "secret-box" },
      el("strong", {}, `Key "${key.name}" created. `),
      "Copy its secret now: it is shown this once and the server keeps only its hash.",
      secret,
      el("div", { class: "buttons" }, copy,
         el("button", { type: "button", "data-testid": "key-secret-done",
                        onclick: () => clear(created) }, "Done"), copied)));
  }

  function row(key) {
    const guardrail = el("input", { value: key.guardrail || "", placeholder: "default",
                                    "data-testid": `guardrail-${key.id}` });
    const rowError = el("span", { class: "error" });
    const saveGuardrail = el("button", { type: "button", "data-testid": `guardrail-save-${key.id}`,
                                         onclick: async () => {
      const policy = guardrail.value.trim() || null;
      const response = await api(`/admin/keys/${encodeURIComponent(key.id)}`,
                                 { method: "POST", body: { guardrail: policy } });
      rowError.textContent = response.ok ? "" : await errorText(response);
      if (response.ok) await refresh();
    } }, "Save");
    let armed = false;  // revoking takes two clicks: "Revoke", then "Confirm revoke"
    const revoke = el("button", { type: "button", class: "danger", "data-testid": `revoke-${key.id}`,
                                  onclick: async () => {
      if (!armed) {
        armed = true;
        revoke.textContent = "Confirm revoke";
        return;
      }
      const response = await api(`/admin/keys/${encodeURIComponent(key.id)}`,
                                 { method: "DELETE" });
      rowError.textContent = response.ok ? "" : await errorText(response);
      if (response.ok) await refresh();
    } }, "Revoke");
    const isActive = key.status === "active";
    return el("tr", { "data-testid": `key-row-${key.id}`, dataset: { status: key.status } },
      el("td", {}, key.name),
      el("td", {}, el("code", {}, key.id)),
      el("td", {}, el("code", {}, `${key.prefix}…`)),
      el("td", {}, key.tenant_id),
      el("td", { class: `status-${key.status}`, "data-testid": `status-${key.id}` }, key.status),
      el("td", {}, limitsSummary(key)),
      el("td", {}, key.models ? key.models.join(", ") : "all"),
      el("td", {}, isActive ? [guardrail, saveGuardrail] : (key.guardrail || "default")),
      el("td", { class: "when" }, key.created_at.replace("T", " ").replace("Z", "")),
      el("td", {}, isActive ? revoke : null, rowError));
  }

  async function refresh() {
    const query = includeRevoked.checked ? "" : "?include_revoked=false";
    const response = await api(`/admin/keys${query}`);
    if (!response.ok) {
      listError.textContent = await errorText(response);
      return;
    }
    listError.textContent = "";
    const { data } = await response.json();
    clear(tableBody).append(...data.map(row));
    if (!data.length) tableBody.append(el("tr", {}, el("td", { colspan: 10 }, "No keys yet.")));
  }

  await refresh();
}
