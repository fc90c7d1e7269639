// Live charts for /dashboard: the panel list comes from dashboard/api/panels, the data from
// dashboard/api/query_range (a proxy to Prometheus). Each panel element carries data-state
// (ok | empty | error), data-series and data-points so a test can read what was drawn.
"use strict";

const REFRESH_MS = 15000;
const TARGET_POINTS = 240;
const MIN_STEP_S = 5;
const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00",
  "#b82e2e", "#316395", "#994499", "#22aa99"];

const state = { rows: [], charts: new Map(), timer: null, busy: false };

// `extra` adds decimals where the usual ones would print two ticks alike (a flat 40 ms series).
function formatValue(value, unit, extra = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  switch (unit) {
    case "percentunit": return (value * 100).toFixed((abs < 0.1 ? 1 : 0) + extra) + "%";
    case "s":
      if (abs === 0) return "0";
      if (abs < 1) return (value * 1000).toFixed((abs < 0.01 ? 1 : 0) + extra) + " ms";
      return value.toFixed(2 + extra) + " s";
    case "reqps": return (abs < 10 ? value.toFixed(2 + extra) : value.toFixed(extra)) + "/s";
    case "celsius": return value.toFixed(extra) + " °C";
    case "bytes": {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let v = value, i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
      // Two decimals below 10 so neighbouring ticks (1.02 GiB, 1.04 GiB) stay distinct.
      return v.toFixed(i ? (Math.abs(v) < 10 ? 2 : 1) + extra : 0) + " " + units[i];
    }
    default:
      if (abs >= 1000) return value.toFixed(extra);
      if (abs >= 10) return value.toFixed(1 + extra);
      return Number(value.toPrecision(3 + extra)).toString();
  }
}

function tickLabels(splits, unit) {
  for (let extra = 0; extra < 3; extra += 1) {
    const labels = splits.map((v) => formatValue(v, unit, extra));
    if (new Set(labels).size === labels.length) return labels;
  }
  return splits.map((v) => formatValue(v, unit, 3));
}

// uPlot stretches a flat series to 0..100, which reads as 10000% on a ratio panel: ratios get 0..1
// (or more if a value exceeds 1), other units a range that starts at 0 and leaves headroom.
function yRange(unit) {
  return (u, min, max) => {
    if (min === null || max === null) return [0, 1];
    if (unit === "percentunit") return [Math.min(0, min), Math.max(1, max)];
    const lo = Math.min(0, min);
    const hi = max > lo ? max + (max - lo) * 0.1 : lo + 1;
    return [lo, hi];
  };
}

// Tick labels such as "153.7 MiB" need more room than "40 ms".
function axisSize(unit) {
  return unit === "bytes" ? 84 : 64;
}

function legendText(template, labels) {
  return template.replace(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g, (_, name) => labels[name] ?? "");
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

function buildLayout(rows) {
  const main = document.getElementById("rows");
  main.replaceChildren();
  for (const row of rows) {
    const section = el("section", { id: "row-" + row.id });
    section.appendChild(el("h2", {}, row.title));
    const grid = el("div", { class: "grid" });
    for (const panel of row.panels) {
      const card = el("div", { class: "panel", "data-panel": panel.id, "data-state": "loading", title: panel.description || "" });
      card.appendChild(el("h3", {}, panel.title));
      card.appendChild(el("div", { class: "chart" }));
      card.appendChild(el("div", { class: "note" }, "loading…"));
      grid.appendChild(card);
    }
    section.appendChild(grid);
    main.appendChild(section);
  }
}

async function fetchRange(expr, start, end, step) {
  const params = new URLSearchParams({ query: expr, start: String(start), end: String(end), step: String(step) });
  const response = await fetch("dashboard/api/query_range?" + params.toString());
  let body;
  try { body = await response.json(); } catch (e) { throw new Error("HTTP " + response.status + " without JSON"); }
  if (!response.ok || body.status !== "success") {
    const message = (body.error && (body.error.message || body.error)) || body.error || ("HTTP " + response.status);
    const err = new Error(typeof message === "string" ? message : JSON.stringify(message));
    err.status = response.status;
    throw err;
  }
  return body.data.result || [];
}

// Prometheus returns one [time, "value"] list per series; uPlot wants one shared x array.
function toUplotData(seriesList) {
  const times = new Set();
  for (const s of seriesList) for (const [t] of s.values) times.add(t);
  const xs = Array.from(times).sort((a, b) => a - b);
  const index = new Map(xs.map((t, i) => [t, i]));
  const ys = seriesList.map((s) => {
    const column = new Array(xs.length).fill(null);
    for (const [t, v] of s.values) {
      const num = Number(v);
      column[index.get(t)] = Number.isFinite(num) ? num : null;
    }
    return column;
  });
  return [xs, ...ys];
}

function chartWidth(card) {
  // The card's inner width: the chart node itself has no width until something is drawn in it.
  const style = getComputedStyle(card);
  return Math.max(card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight), 240);
}

function drawPanel(panel, card, seriesList, start, end) {
  const chartNode = card.querySelector(".chart");
  const note = card.querySelector(".note");
  const old = state.charts.get(panel.id);
  if (old) { old.destroy(); state.charts.delete(panel.id); }
  const data = toUplotData(seriesList);
  const points = data.slice(1).reduce((n, col) => n + col.filter((v) => v !== null).length, 0);
  card.dataset.series = String(seriesList.length);
  card.dataset.points = String(points);
  if (!seriesList.length || !points) {
    card.dataset.state = "empty";
    note.textContent = "no data in this range";
    note.hidden = false;
    chartNode.hidden = true;
    return;
  }
  note.hidden = true;
  chartNode.hidden = false;
  card.dataset.state = "ok";
  const rightUnit = panel.right_unit;
  const opts = {
    width: chartWidth(card),
    height: 220,
    // The whole selected range, not just where data exists, so every chart shares one time axis.
    scales: { x: { time: true, range: () => [start, end] }, y: { range: yRange(panel.unit) } },
    series: [{}].concat(seriesList.map((s, i) => ({
      label: s.label,
      stroke: COLORS[i % COLORS.length],
      width: 1.5,
      spanGaps: false,
      scale: s.axis === "right" ? "y2" : "y",
      value: (u, v) => formatValue(v, s.axis === "right" ? rightUnit : panel.unit),
    }))),
    axes: [
      {},
      { scale: "y", size: axisSize(panel.unit), values: (u, splits) => tickLabels(splits, panel.unit) },
    ],
  };
  if (rightUnit) {
    opts.axes.push({ scale: "y2", side: 1, size: axisSize(rightUnit), grid: { show: false }, values: (u, splits) => tickLabels(splits, rightUnit) });
  }
  state.charts.set(panel.id, new uPlot(opts, data, chartNode));
}

async function refreshPanel(panel, card, start, end, step) {
  const results = await Promise.all(panel.queries.map((q) => fetchRange(q.expr, start, end, step)
    .then((series) => series.map((s) => ({ label: legendText(q.legend, s.metric), axis: q.axis, values: s.values })))));
  drawPanel(panel, card, results.flat(), start, end);
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const range = Number(document.getElementById("range").value);
  const end = Math.floor(Date.now() / 1000);
  const start = end - range;
  const step = Math.max(MIN_STEP_S, Math.ceil(range / TARGET_POINTS));
  const failures = [];
  const jobs = [];
  for (const row of state.rows) {
    for (const panel of row.panels) {
      const card = document.querySelector('.panel[data-panel="' + panel.id + '"]');
      jobs.push(refreshPanel(panel, card, start, end, step).catch((err) => {
        failures.push(err);
        const old = state.charts.get(panel.id);
        if (old) { old.destroy(); state.charts.delete(panel.id); }
        card.dataset.state = "error";
        card.dataset.series = "0";
        card.dataset.points = "0";
        const note = card.querySelector(".note");
        note.textContent = err.message;
        note.hidden = false;
        card.querySelector(".chart").hidden = true;
      }));
    }
  }
  await Promise.all(jobs);
  const when = new Date().toLocaleTimeString();
  if (failures.length) {
    setStatus(failures[0].message + " (" + when + ")", true);
  } else {
    setStatus("updated " + when + " · every " + REFRESH_MS / 1000 + " s", false);
  }
  document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
  state.busy = false;
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
}

async function start() {
  try {
    const response = await fetch("dashboard/api/panels");
    const body = await response.json();
    state.rows = body.rows;
  } catch (err) {
    setStatus("cannot load the panel list: " + err.message, true);
    return;
  }
  buildLayout(state.rows);
  // ?range=<seconds> preselects a range (e.g. a link to the last 15 minutes).
  const wanted = new URLSearchParams(location.search).get("range");
  const select = document.getElementById("range");
  if (wanted && Array.from(select.options).some((o) => o.value === wanted)) select.value = wanted;
  document.getElementById("range").addEventListener("change", refresh);
  document.getElementById("refresh").addEventListener("click", refresh);
  window.addEventListener("resize", () => {
    for (const [id, chart] of state.charts) {
      chart.setSize({ width: chartWidth(document.querySelector('.panel[data-panel="' + id + '"]')), height: 220 });
    }
  });
  await refresh();
  schedule();
}

start();
