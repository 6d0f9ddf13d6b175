// Live: the server's load now (running and waiting requests, KV cache, throughput, latency
// percentiles), polled from /console/api/live every REFRESH_MS while the page is shown; leaving
// the page stops the polling and aborts a poll in flight.

import { lineChart } from "../charts.js";
import { clear, el } from "../dom.js";
import { errorText, fmtDecimal, fmtInt, fmtSeconds } from "../format.js";

export const REFRESH_MS = 1500;
const HISTORY = 60;  // points kept for the chart: 90 s at REFRESH_MS

function tile(label, testid) {
  const value = el("strong", { "data-testid": testid }, "—");
  return { node: el("div", { class: "tile" }, el("span", {}, label), value), value };
}

function latencyRow(name, summary) {
  return el("tr", { "data-testid": `latency-${name}` },
            el("th", {}, name),
            ...["p50", "p90", "p99"].map((q) => el("td", { class: "num" },
                                                     fmtSeconds(summary[q]))),
            el("td", { class: "num" }, fmtInt(summary.count)));
}

export default {
  id: "live",
  title: "Live",
  roles: ["admin", "open"],  // server-wide load: the operator's view (see console/live.py)
  mount(root, ctx) {
    const tiles = {
      running: tile("Running", "live-running"),
      waiting: tile("Waiting", "live-waiting"),
      kv: tile("KV cache", "live-kv"),
      computed: tile("Tokens/s (model)", "live-computed"),
      generated: tile("Tokens/s (generated)", "live-generated"),
      requests: tile("Requests/s", "live-rps"),
      prefix: tile("Prefix-cache hits", "live-prefix"),
      preemptions: tile("Preemptions", "live-preemptions"),
    };
    const kvMeter = el("meter", { min: 0, max: 1, value: 0, "data-testid": "live-kv-meter" });
    tiles.kv.node.append(kvMeter);
    const latency = el("tbody", {});
    const chart = el("div", { class: "live-chart" });
    const updated = el("p", { class: "notice", "data-testid": "live-updated", role: "status",
                              dataset: { polls: "0" } }, "Connecting…");
    root.append(
      el("h2", {}, "Live"), updated,
      el("div", { class: "tiles" }, Object.values(tiles).map((t) => t.node)),
      el("h3", {}, "Latency over the last minute"),
      el("table", { class: "grid-table", "data-testid": "live-latency" },
         el("thead", {}, el("tr", {}, el("th", {}), ["p50", "p90", "p99", "requests"].map(
           (name) => el("th", { class: "num" }, name)))), latency),
      chart);

    const history = { labels: [], computed: [], running: [], waiting: [] };
    let polls = 0;
    let timer = null;
    let stopped = false;
    let inFlight = null;

    function show(snapshot) {
      polls += 1;
      tiles.running.value.textContent = fmtInt(snapshot.num_running);
      tiles.waiting.value.textContent = fmtInt(snapshot.num_waiting);
      tiles.kv.value.textContent = `${(snapshot.kv_cache_usage * 100).toFixed(1)}% ` +
        `(${fmtInt(snapshot.kv_blocks_used)}/${fmtInt(snapshot.kv_blocks_total)} blocks)`;
      kvMeter.value = snapshot.kv_cache_usage;
      tiles.computed.value.textContent = fmtDecimal(snapshot.computed_tokens_per_s);
      tiles.generated.value.textContent = fmtDecimal(snapshot.generated_tokens_per_s);
      tiles.requests.value.textContent = fmtDecimal(snapshot.requests_per_s);
      tiles.prefix.value.textContent = `${(snapshot.prefix_cache_hit_rate * 100).toFixed(1)}%`;
      tiles.preemptions.value.textContent = fmtInt(snapshot.num_preemptions);
      clear(latency).append(latencyRow("TTFT", snapshot.ttft_s),
                            latencyRow("Time per output token", snapshot.tpot_s),
                            latencyRow("End to end", snapshot.e2e_s));
      const now = new Date();
      history.labels.push(now.toISOString().slice(11, 19));
      history.computed.push(snapshot.computed_tokens_per_s);
      history.running.push(snapshot.num_running);
      history.waiting.push(snapshot.num_waiting);
      for (const series of Object.values(history)) series.splice(0, series.length - HISTORY);
      clear(chart).append(
        lineChart({ title: "Tokens per second through the model", testid: "chart-throughput",
                    labels: history.labels, format: fmtDecimal,
                    series: [{ name: "tokens/s", values: history.computed }] }),
        lineChart({ title: "Requests running and waiting", testid: "chart-queue",
                    labels: history.labels, format: fmtInt,
                    series: [{ name: "running", values: history.running },
                             { name: "waiting", values: history.waiting }] }));
      updated.dataset.polls = String(polls);
      updated.textContent = `${snapshot.model} · updated ${now.toLocaleTimeString()} ` +
        `(every ${REFRESH_MS / 1000} s)`;
    }

    async function poll() {
      inFlight = new AbortController();
      try {
        const response = await ctx.api("/console/api/live", { signal: inFlight.signal });
        if (stopped) return;
        if (response.ok) show(await response.json());
        else updated.textContent = await errorText(response);
      } catch (error) {
        if (stopped) return;
        updated.textContent = `The server did not answer: ${error.message || error}`;
      } finally {
        inFlight = null;
      }
      // The next poll is timed from the end of this one, so a slow answer never piles up polls.
      if (!stopped) timer = setTimeout(poll, REFRESH_MS);
    }

    poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
      if (inFlight) inFlight.abort();
    };
  },
};
