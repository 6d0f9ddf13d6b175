// Formatting and small helpers shared by the usage, live, request-log and data pages.

import { el } from "./dom.js";

const INTEGER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const DECIMAL = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

export const fmtInt = (n) => INTEGER.format(Number(n || 0));
export const fmtDecimal = (n) => DECIMAL.format(Number(n || 0));
/** USD with enough digits for per-request cents (the ledger keeps nano-USD). */
export const fmtUsd = (n) => {
  const value = Number(n || 0);
  return `$${value === 0 || Math.abs(value) >= 1 ? value.toFixed(2) : value.toPrecision(3)}`;
};
/** Seconds as ms under 10 s, else seconds; "—" when unknown. */
export const fmtSeconds = (s) => {
  if (s === null || s === undefined) return "—";
  return s < 10 ? `${(s * 1000).toFixed(s < 0.1 ? 1 : 0)} ms` : `${s.toFixed(1)} s`;
};
/** "2026-12-03T10:04:05Z" -> "2026-12-03 10:04:05" (UTC, as the API sends it). */
export const fmtTime = (iso) => (iso || "").replace("T", " ").replace("Z", "");

/** A Date's UTC day as "YYYY-MM-DD", the value a <input type=date> holds. */
export const isoDay = (date) => date.toISOString().slice(0, 10);
/** The day after "YYYY-MM-DD": the API's `end` is exclusive, a date input's end inclusive. */
export const nextDay = (day) => isoDay(new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000));
/** Every day from `first` to `last` inclusive ("YYYY-MM-DD"), at most `limit`. */
export function daysBetween(first, last, limit = 400) {
  const days = [];
  for (let day = first; day <= last && days.length < limit; day = nextDay(day)) days.push(day);
  return days;
}

/** The first of this month and today (UTC), the default range of the usage and log pages. */
export function thisMonth() {
  const today = isoDay(new Date());
  return { first: `${today.slice(0, 8)}01`, last: today };
}

/** A labelled form control. */
export const field = (label, control) => el("label", {}, label, control);

/** An API error's message (the OpenAI-shaped body), or the HTTP status. */
export async function errorText(response) {
  const body = await response.json().catch(() => ({}));
  return (body.error && body.error.message) || `HTTP ${response.status}`;
}

/** Save `text` as a file: a Blob, a temporary object URL, and a click on a download link. */
export function download(filename, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** RFC 4180 CSV: a field is quoted when it holds a comma, quote or newline; text starting with
 * = + - @ gets a leading ' so a spreadsheet shows it rather than runs it as a formula. */
export function toCsv(header, rows) {
  const cell = (value) => {
    let textValue = value === null || value === undefined ? "" : String(value);
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(value)) textValue = `'${textValue}`;
    return /[",\n\r]/.test(textValue) ? `"${textValue.replaceAll('"', '""')}"` : textValue;
  };
  return [header, ...rows].map((row) => row.map(cell).join(",")).join("\r\n") + "\r\n";
}
