// Data: the tenant's stored chat completions (OpenAI's /v1/chat/completions listing), their
// prompts on demand, a rating each (metadata `rating`, as `flintlm data rate` sets it), and the
// fine-tuning JSONL export (/console/api/data/export, the lines `flintlm data export` writes).

import { clear, el } from "../dom.js";
import { download, errorText, field, fmtTime } from "../format.js";

const PAGE_SIZE = 20;
const RATINGS = [{ value: "1", label: "+1 good", testid: "rate-up" },
                 { value: "-1", label: "−1 bad", testid: "rate-down" }];

const answerOf = (completion) => (completion.choices || [])
  .map((choice) => (choice.message && choice.message.content) || "").join("\n---\n");

async function showPrompt(ctx, completionId, target) {
  const response = await ctx.api(
    `/v1/chat/completions/${encodeURIComponent(completionId)}/messages?limit=100`);
  if (!response.ok) {
    clear(target).append(el("p", { class: "error" }, await errorText(response)));
    return;
  }
  const { data } = await response.json();
  clear(target).append(...data.map((message) => el("div", { class: "message" },
    el("span", { class: "role" }, message.role), el("pre", {}, message.content || ""))));
}

function metadataList(metadata) {
  const pairs = Object.entries(metadata || {}).filter(([name]) => name !== "rating");
  if (!pairs.length) return null;
  return el("dl", { class: "metadata", "data-testid": "metadata" },
            pairs.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

function card(ctx, completion, onRated) {
  const created = `${new Date(completion.created * 1000).toISOString().slice(0, 19)}Z`;
  const rating = completion.metadata && completion.metadata.rating;
  const ratingLine = el("span", { class: "rating", "data-testid": "rating" },
                        rating === undefined ? "unrated" : `rated ${rating}`);
  const prompt = el("div", { class: "prompt" });
  const details = el("details", {}, el("summary", {}, "Prompt"), prompt);
  details.addEventListener("toggle", () => {
    if (details.open && !prompt.firstChild) showPrompt(ctx, completion.id, prompt);
  });

  async function rate(value) {
    // The metadata is replaced whole: send every other pair back with the new rating.
    const metadata = { ...(completion.metadata || {}), rating: value };
    const response = await ctx.api(`/v1/chat/completions/${encodeURIComponent(completion.id)}`,
                                   { method: "POST", body: { metadata } });
    if (!response.ok) {
      ratingLine.textContent = await errorText(response);
      return;
    }
    onRated(await response.json());
  }

  return el("article", { class: "completion", "data-testid": "completion",
                         dataset: { id: completion.id } },
    el("header", {}, el("span", { class: "mono" }, completion.id),
       el("span", {}, completion.model), el("span", {}, fmtTime(created)), ratingLine),
    el("pre", { class: "answer", "data-testid": "answer" }, answerOf(completion)),
    metadataList(completion.metadata),
    details,
    el("div", { class: "actions" }, RATINGS.map(({ value, label, testid }) =>
      el("button", { type: "button", "data-testid": testid, onclick: () => rate(value),
                     class: rating === value ? "chosen" : null }, label))));
}

function exportForm(ctx) {
  const format = el("select", { "data-testid": "export-format" },
                    el("option", { value: "openai-chat" }, "openai-chat (supervised)"),
                    el("option", { value: "preference" }, "preference (DPO pairs)"));
  const minRating = el("input", { type: "number", step: "1", placeholder: "any",
                                  "data-testid": "export-min-rating" });
  const note = el("span", { class: "notice", "data-testid": "export-status" });
  return el("form", { class: "toolbar", onsubmit: async (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ format: format.value });
    if (minRating.value !== "") query.set("min_rating", minRating.value);
    const response = await ctx.api(`/console/api/data/export?${query}`);
    if (!response.ok) {
      note.textContent = await errorText(response);
      return;
    }
    const body = await response.text();
    const lines = body ? body.trimEnd().split("\n").length : 0;
    note.textContent = `${lines} lines exported (cut-off answers are left out).`;
    download(`flintlm-${format.value}.jsonl`, "application/jsonl", body);
  } }, field("Format", format), field("Min rating", minRating),
  el("button", { type: "submit", "data-testid": "export-jsonl" }, "Export JSONL"), note);
}

export default {
  id: "data",
  title: "Data",
  roles: ["key", "open"],  // stored completions belong to a tenant; the admin has none
  mount(root, ctx) {
    const list = el("div", { class: "completions", "data-testid": "completions" });
    const status = el("p", { class: "notice", "data-testid": "data-status", role: "status" });
    const more = el("button", { type: "button", "data-testid": "data-more", hidden: true },
                    "Older »");

    // A card replaces itself with a fresh one once rated, showing what the server kept.
    function cardFor(completion) {
      const node = card(ctx, completion, (updated) => node.replaceWith(cardFor(updated)));
      return node;
    }

    async function load(after) {
      const query = new URLSearchParams({ order: "desc", limit: String(PAGE_SIZE) });
      if (after) query.set("after", after);
      const response = await ctx.api(`/v1/chat/completions?${query}`);
      if (!response.ok) {
        status.textContent = await errorText(response);
        return;
      }
      const page = await response.json();
      if (!after) clear(list);
      list.append(...page.data.map(cardFor));
      status.textContent = list.childElementCount
        ? `${list.childElementCount} stored completions, newest first.`
        : "No stored completions yet: requests sent with store: true (or under a capture " +
          "policy) appear here.";
      more.hidden = !page.has_more;
      more.onclick = () => load(page.last_id);
    }

    root.append(el("h2", {}, "Stored completions"), exportForm(ctx), status, list, more);
    load(null);
  },
};
