// Usage: requests, tokens and cost by day, model or key (admin) over a date range, drawn from
// the ledger's own report (/admin/usage for the admin, /v1/usage for a key), and its CSV.

import { barChart, sum } from "../charts.js";
import { clear, el } from "../dom.js";
import {
  daysBetween, download, errorText, field, fmtInt, fmtUsd, nextDay, thisMonth, toCsv,
} from "../format.js";

const CSV_HEADER = ["group", "requests", "input_tokens", "cached_input_tokens", "output_tokens",
                    "total_tokens", "cost_usd"];

function reportUrl(role, { first, last, groupBy }) {
  const query = new URLSearchParams({ start: first, end: nextDay(last), group_by: groupBy });
  return `${role === "admin" ? "/admin/usage" : "/v1/usage"}?${query}`;
}

/** The report's rows as one entry per label; days with no requests are drawn as zeros. */
function byLabel(report, groupBy, range) {
  const labelOf = { day: (row) => row.day, model: (row) => row.model, key: (row) => row.key_id };
  const rows = new Map(report.data.map((row) => [labelOf[groupBy](row), row]));
  const labels = groupBy === "day" ? daysBetween(range.first, range.last) : [...rows.keys()];
  const zero = { num_requests: 0, prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0,
                 total_tokens: 0, cost_usd: "0" };
  return labels.map((label) => ({ label, row: rows.get(label) || zero }));
}

function charts(entries, groupBy) {
  const labels = entries.map((entry) => entry.label);
  const column = (pick) => entries.map((entry) => pick(entry.row));
  return [
    barChart({ title: `Requests by ${groupBy}`, testid: "chart-requests", labels,
               series: [{ name: "requests", values: column((r) => r.num_requests) }],
               format: fmtInt }),
    barChart({ title: `Tokens by ${groupBy}`, testid: "chart-tokens", labels, format: fmtInt,
               series: [
                 { name: "input (uncached)", key: "input",
                   values: column((r) => r.prompt_tokens - r.cached_tokens) },
                 { name: "cached input", key: "cached", values: column((r) => r.cached_tokens) },
                 { name: "output", key: "output", values: column((r) => r.completion_tokens) },
               ] }),
    barChart({ title: `Cost (USD) by ${groupBy}`, testid: "chart-cost", labels, format: fmtUsd,
               unit: "$",
               series: [{ name: "cost", values: column((r) => Number(r.cost_usd)) }] }),
  ];
}

function table(entries, groupBy) {
  const head = el("tr", {}, el("th", {}, groupBy), ["requests", "input (all)",
                             "cached input", "output", "total", "cost"].map((name) => el("th", { class: "num" },
                                                                          name)));
  const body = entries.filter((entry) => entry.row.num_requests > 0).map(({ label, row }) =>
    el("tr", {}, el("td", {}, label), el("td", { class: "num" }, fmtInt(row.num_requests)),
       el("td", { class: "num" }, fmtInt(row.prompt_tokens)),
       el("td", { class: "num" }, fmtInt(row.cached_tokens)),
       el("td", { class: "num" }, fmtInt(row.completion_tokens)),
       el("td", { class: "num" }, fmtInt(row.total_tokens)),
       el("td", { class: "num" }, fmtUsd(row.cost_usd))));
  return el("table", { class: "grid-table", "data-testid": "usage-table" },
            el("thead", {}, head), el("tbody", {}, body));
}

function csv(entries) {
  return toCsv(CSV_HEADER, entries.map(({ label, row }) => [
    label, row.num_requests, row.prompt_tokens - row.cached_tokens, row.cached_tokens,
    row.completion_tokens, row.total_tokens, row.cost_usd]));
}

export default {
  id: "usage",
  title: "Usage",
  roles: ["admin", "key", "open"],
  mount(root, ctx) {
    const month = thisMonth();
    const first = el("input", { type: "date", value: month.first, "data-testid": "usage-start" });
    const last = el("input", { type: "date", value: month.last, "data-testid": "usage-end" });
    const dimensions = ctx.role === "admin" ? ["day", "model", "key"] : ["day", "model"];
    const groupBy = el("select", { "data-testid": "usage-group" },
                       dimensions.map((name) => el("option", { value: name }, name)));
    const status = el("p", { class: "notice", "data-testid": "usage-status", role: "status" });
    const output = el("div", { class: "usage-output" });
    const exportButton = el("button", { type: "button", "data-testid": "usage-csv",
                                        disabled: true }, "Export CSV");
    let shown = null;  // the entries drawn now, and their range, for the CSV
    let generation = 0;

    async function load() {
      const range = { first: first.value, last: last.value, groupBy: groupBy.value };
      if (!range.first || !range.last || range.first > range.last) {
        status.textContent = "Choose a start date on or before the end date.";
        return;
      }
      const mine = ++generation;
      status.textContent = "Loading…";
      const response = await ctx.api(reportUrl(ctx.role, range));
      if (mine !== generation) return;  // a newer load was asked for meanwhile
      if (!response.ok) {
        status.textContent = await errorText(response);
        return;
      }
      const report = await response.json();
      const entries = byLabel(report, range.groupBy, range);
      shown = { entries, range };
      exportButton.disabled = false;
      const requests = sum(report.data.map((row) => row.num_requests));
      status.textContent = `${fmtInt(requests)} requests from ${range.first} to ${range.last} ` +
        "(UTC days).";
      clear(output).append(el("div", { class: "chart-grid" }, charts(entries, range.groupBy)),
                           table(entries, range.groupBy));
    }

    exportButton.addEventListener("click", () => {
      if (!shown) return;
      const { first: from, last: to, groupBy: by } = shown.range;
      download(`flintlm-usage-${by}-${from}-${to}.csv`, "text/csv", csv(shown.entries));
    });
    const form = el("form", { class: "toolbar", onsubmit: (event) => {
      event.preventDefault();
      load();
    } }, field("From", first), field("To", last), field("By", groupBy),
    el("button", { type: "submit", class: "primary", "data-testid": "usage-refresh" }, "Show"),
    exportButton);
    groupBy.addEventListener("change", load);
    root.append(el("h2", {}, ctx.role === "admin" ? "Usage (every key)" : "Your usage"), form,
                status, output);
    load();
  },
};
