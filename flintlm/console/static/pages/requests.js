// Request log: the ledger's rows, newest first, filtered by key (admin), model, status and
// dates, a page at a time (/admin/requests for the admin, /v1/usage/requests for a key).

import { clear, el } from "../dom.js";
import {
  errorText, field, fmtInt, fmtSeconds, fmtTime, fmtUsd, nextDay, thisMonth,
} from "../format.js";

const STATUSES = ["", "finished", "aborted", "failed", "rejected"];
const PAGE_SIZES = [25, 50, 100, 200];
const COLUMNS = ["time (UTC)", "request id", "key", "model", "status"];
const NUMBER_COLUMNS = ["input", "cached", "output", "TTFT", "total", "cost"];

function row(entry, isAdmin) {
  const status = entry.error_code ? `${entry.status} (${entry.error_code})` : entry.status;
  return el("tr", { "data-testid": "request-row", dataset: { id: entry.id } },
    el("td", {}, fmtTime(entry.created_at)),
    el("td", { class: "mono" }, entry.id),
    el("td", { class: "mono" }, isAdmin ? entry.key_id : "you"),
    el("td", {}, entry.model),
    el("td", { class: `status status-${entry.status}` }, status),
    el("td", { class: "num" }, fmtInt(entry.prompt_tokens)),
    el("td", { class: "num" }, fmtInt(entry.cached_tokens)),
    el("td", { class: "num" }, fmtInt(entry.completion_tokens)),
    el("td", { class: "num" }, fmtSeconds(entry.ttft_s)),
    el("td", { class: "num" }, fmtSeconds(entry.total_time_s)),
    el("td", { class: "num" }, fmtUsd(entry.cost_usd)));
}

export default {
  id: "requests",
  title: "Request log",
  roles: ["admin", "key", "open"],
  mount(root, ctx) {
    const isAdmin = ctx.role === "admin";
    const month = thisMonth();
    const inputs = {
      key_id: isAdmin ? el("input", { placeholder: "any key", "data-testid": "log-key" }) : null,
      model: el("input", { placeholder: "any model", "data-testid": "log-model" }),
      status: el("select", { "data-testid": "log-status" },
                 STATUSES.map((s) => el("option", { value: s }, s || "any"))),
      start: el("input", { type: "date", value: month.first, "data-testid": "log-start" }),
      end: el("input", { type: "date", value: month.last, "data-testid": "log-end" }),
      limit: el("select", { "data-testid": "log-limit" },
                PAGE_SIZES.map((n) => el("option", { value: String(n), selected: n === 50 },
                                         String(n)))),
    };
    const status = el("p", { class: "notice", "data-testid": "log-status-line", role: "status" });
    const body = el("tbody", {});
    const newer = el("button", { type: "button", "data-testid": "log-first",
                                 disabled: true }, "« Newest");
    const older = el("button", { type: "button", "data-testid": "log-older",
                                 disabled: true }, "Older »");
    const cursors = [];  // `before` of each page shown so far; empty: the newest page
    let generation = 0;

    function query(before) {
      const params = new URLSearchParams({ limit: inputs.limit.value });
      for (const name of ["key_id", "model", "status"]) {
        const value = inputs[name] && inputs[name].value.trim();
        if (value) params.set(name, value);
      }
      if (inputs.start.value) params.set("start", inputs.start.value);
      if (inputs.end.value) params.set("end", nextDay(inputs.end.value));
      if (before) params.set("before", before);
      return `${isAdmin ? "/admin/requests" : "/v1/usage/requests"}?${params}`;
    }

    async function load(before) {
      const mine = ++generation;
      status.textContent = "Loading…";
      const response = await ctx.api(query(before));
      if (mine !== generation) return;
      if (!response.ok) {
        status.textContent = await errorText(response);
        return;
      }
      const page = await response.json();
      clear(body).append(...page.data.map((entry) => row(entry, isAdmin)));
      const pageNumber = cursors.length + 1;
      status.textContent = page.data.length
        ? `Page ${pageNumber}: ${page.data.length} requests, newest first.`
        : "No requests match.";
      older.disabled = !page.has_more;
      older.onclick = () => {
        cursors.push(page.last_id);
        load(page.last_id);
      };
      newer.disabled = cursors.length === 0;
    }

    function fromNewest() {
      cursors.length = 0;
      load(null);
    }

    newer.addEventListener("click", fromNewest);
    const form = el("form", { class: "toolbar", onsubmit: (event) => {
      event.preventDefault();
      fromNewest();
    } },
    inputs.key_id && field("Key id", inputs.key_id), field("Model", inputs.model),
    field("Status", inputs.status), field("From", inputs.start), field("To", inputs.end),
    field("Per page", inputs.limit),
    el("button", { type: "submit", class: "primary", "data-testid": "log-apply" }, "Filter"));
    root.append(
      el("h2", {}, isAdmin ? "Request log (every key)" : "Your requests"), form, status,
      el("div", { class: "table-scroll" },
         el("table", { class: "grid-table", "data-testid": "log-table" },
            el("thead", {}, el("tr", {}, COLUMNS.map((name) => el("th", {}, name)),
                                 NUMBER_COLUMNS.map((name) => el("th", { class: "num" }, name)))),
            body)),
      el("div", { class: "pager" }, newer, older));
    fromNewest();
  },
};
