// Hand-drawn SVG charts for the console: stacked bars and lines, no library, no markup strings.
// Every chart states what it drew, for people and tests alike: the <svg> carries `data-total`
// (the sum of every value) and each series's <g> its own `data-total`; each bar and point has a
// <title> ("label: value") that browsers show on hover.

import { el, svg } from "./dom.js";

// Near the size a chart is shown at, so its text is drawn at about the page's size.
const WIDTH = 440;
const HEIGHT = 200;
const MARGIN = { top: 12, right: 8, bottom: 30, left: 72 };
const MAX_BAR_WIDTH = 56;
const MAX_X_LABELS = 8;

/** The series colours, as classes styled in views.css (inline styles are refused by the CSP). */
const seriesClass = (index) => `series-${index % 6}`;

function niceMax(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * magnitude >= value);
  return step * magnitude;
}

/** Sum that keeps decimal money exact enough: rounds to 1e-9 (the ledger's nano-USD). */
export function sum(values) {
  const total = values.reduce((acc, value) => acc + Number(value || 0), 0);
  return Math.round(total * 1e9) / 1e9;
}

function frame(title, testid, total, width, height) {
  return svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
    "aria-label": title, "data-testid": testid, "data-total": String(total),
  }, svg("title", {}, title));
}

/** An axis tick: short, and exact enough for the small fractions a tick can be. */
export function tickLabel(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 1000) {
    return new Intl.NumberFormat("en-US", { notation: "compact" }).format(value);
  }
  if (Math.abs(value) >= 1) return String(Math.round(value * 100) / 100);
  return String(Number(value.toPrecision(2)));
}

function yAxis(root, maxValue, unit, plotHeight) {
  const axis = svg("g", { class: "axis" });
  for (const fraction of [0, 0.5, 1]) {
    const y = MARGIN.top + plotHeight * (1 - fraction);
    axis.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y, class: "grid" }),
      svg("text", { x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" },
          `${unit}${tickLabel(maxValue * fraction)}`));
  }
  root.append(axis);
}

function xLabels(root, labels, slot) {
  const every = Math.max(1, Math.ceil(labels.length / MAX_X_LABELS));
  const axis = svg("g", { class: "axis" });
  labels.forEach((label, index) => {
    if (index % every !== 0) return;
    const x = MARGIN.left + slot * (index + 0.5);
    const shown = label.length > 14 ? `${label.slice(0, 13)}…` : label;
    axis.append(svg("text", { x, y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" },
                    shown));
  });
  root.append(axis);
}

function legend(series) {
  if (series.length < 2) return null;
  return el("ul", { class: "legend" }, series.map((s, index) =>
    el("li", { class: seriesClass(index) }, el("span", { class: "swatch" }), s.name)));
}

/**
 * Stacked bars, one per label.
 * @param {{title: string, testid: string, labels: string[],
 *          series: {name: string, key?: string, values: number[]}[],
 *          format?: (n: number) => string, unit?: string}} spec
 * @returns {HTMLElement} a <figure> holding the <svg> and its legend
 */
export function barChart({ title, testid, labels, series, format = String, unit = "" }) {
  const totals = labels.map((_, i) => sum(series.map((s) => s.values[i])));
  const total = sum(series.map((s) => sum(s.values)));
  const root = frame(title, testid, total, WIDTH, HEIGHT);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const maxValue = niceMax(Math.max(0, ...totals));
  yAxis(root, maxValue, unit, plotHeight);
  const slot = plotWidth / Math.max(labels.length, 1);
  const barWidth = Math.min(MAX_BAR_WIDTH, Math.max(1, slot * 0.7));
  const stackedHeights = labels.map(() => 0);
  series.forEach((s, seriesIndex) => {
    const group = svg("g", { class: seriesClass(seriesIndex), "data-series": s.key || s.name,
                             "data-total": String(sum(s.values)) });
    labels.forEach((label, i) => {
      const value = Number(s.values[i] || 0);
      const height = (value / maxValue) * plotHeight;
      stackedHeights[i] += height;
      const y = MARGIN.top + plotHeight - stackedHeights[i];
      group.append(svg("rect", {
        x: MARGIN.left + slot * i + (slot - barWidth) / 2, y, width: barWidth,
        height: Math.max(0, height), "data-value": String(value),
      }, svg("title", {}, `${label}: ${series.length > 1 ? `${s.name} ` : ""}${format(value)}`)));
    });
    root.append(group);
  });
  xLabels(root, labels, slot);
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, title,
    el("span", { class: "chart-total" }, ` — total ${format(total)}`)), root, legend(series));
}

/**
 * Lines over a shared x axis (the live page's history).
 * @param {{title: string, testid: string, labels: string[],
 *          series: {name: string, key?: string, values: (number|null)[]}[],
 *          format?: (n: number) => string, unit?: string}} spec
 */
export function lineChart({ title, testid, labels, series, format = String, unit = "" }) {
  const total = sum(series.map((s) => sum(s.values)));
  const root = frame(title, testid, total, WIDTH, HEIGHT);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const maxValue = niceMax(Math.max(0, ...values));
  yAxis(root, maxValue, unit, plotHeight);
  const slot = plotWidth / Math.max(labels.length, 1);
  series.forEach((s, seriesIndex) => {
    const group = svg("g", { class: `line ${seriesClass(seriesIndex)}`,
                             "data-series": s.key || s.name,
                             "data-total": String(sum(s.values)) });
    const points = [];
    s.values.forEach((value, i) => {
      if (value === null || value === undefined) return;
      const x = MARGIN.left + slot * (i + 0.5);
      const y = MARGIN.top + plotHeight * (1 - Number(value) / maxValue);
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      group.append(svg("circle", { cx: x, cy: y, r: 2.5, "data-value": String(value) },
                       svg("title", {}, `${labels[i]}: ${s.name} ${format(Number(value))}`)));
    });
    group.prepend(svg("polyline", { points: points.join(" ") }));
    root.append(group);
  });
  xLabels(root, labels, slot);
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, title), root,
            legend(series));
}
