// The sparkiot dashboard page: loads the state once from the JSON API, then follows the
// server-sent events. Every URL is relative, so the page works under any prefix.
"use strict";

// The browser gives up on a stream rejected with an HTTP error, such as the 503 of a server with
// --max-clients streams open. The page then tries again after a wait that doubles up to the maximum.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

const state = {
  fleet: new Map(),      // "device\u0000metric" -> row
  sites: [],
  alerts: [],
  series: null,          // the selected series' columns
  selection: null,       // {device, metric, window, around}
  following: true,       // the chart shows the whole series and extends with new data
  events: null,
  chart: null,
  serverOffset: 0,       // the server's clock minus the browser's, in seconds
  loading: false,        // a series is being fetched
  lost: false,           // the stream failed since it last opened; updates may have been missed
  retryDelay: RETRY_FIRST_MS,  // the wait before the next attempt after the browser gave up
  retryTimer: null,
};

// Seconds from a window row being written to its point being drawn, for tests and benchmarks.
window.sparkiotShown = [];
window.sparkiotStatus = { events: 0, windowEvents: 0, resyncs: 0, retries: 0, points: 0, lastHealth: null };

const MAX_ALERTS = 200;
const key = (device, metric) => device + "\u0000" + metric;

function $(selector) { return document.querySelector(selector); }

function text(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(digits);
  }
  return String(value);
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return (value * 1000).toFixed(0) + " ms";
  if (value < 120) return value.toFixed(value < 10 ? 2 : 1) + " s";
  if (value < 7200) return (value / 60).toFixed(1) + " min";
  return (value / 3600).toFixed(1) + " h";
}

function timeText(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Minutes are enough in the fleet table, which has little room.
function shortTime(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toISOString().slice(0, 16).replace("T", " ") + "Z";
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return response.json();
}

// -- health ---------------------------------------------------------------------------------

function renderHealth(health) {
  window.sparkiotStatus.lastHealth = health;
  state.serverOffset = health.time - Date.now() / 1000;
  $("#pipeline-name").textContent = health.pipeline || "";
  const shown = {
    input_rate: health.input_rate === null || health.input_rate === undefined ? "–" : text(health.input_rate, 1) + " /s",
    batch_seconds: seconds(health.batch_seconds),
    watermark_lag_seconds: seconds(health.watermark_lag_seconds),
    latency_p99_seconds: health.latency_p99_seconds === null ? "–" : "≤ " + seconds(health.latency_p99_seconds),
    readings_received_since_ingest_start: text(health.readings_received_since_ingest_start),
    readings_stored: text(health.readings_stored),
    windows: text(health.windows),
    alerts: text(health.alerts),
    late: text(health.late),
    dead_letters: text(health.dead_letters),
    executors: health.executors === null || health.executors === undefined
      ? "–" : (health.executors === 0 && (health.master || "").startsWith("local") ? `0 (${health.master})` : text(health.executors)),
    cost: costText(health),
  };
  for (const [name, value] of Object.entries(shown)) {
    const cell = document.querySelector(`[data-health="${name}"]`);
    if (cell) cell.textContent = value;
  }
  const reasons = Object.entries(health.dead_letters_by_reason || {});
  $("#dead-letter-reasons").textContent = reasons.length
    ? "dead letters by reason: " + reasons.map(([reason, count]) => `${reason} ${count}`).join(", ")
    : "";
}

function costText(health) {
  const costs = health.cost_usd || {};
  const platform = health.cost_platform in costs ? health.cost_platform : Object.keys(costs)[0];
  if (!platform) return "–";
  return `$${costs[platform]} (${platform.replace(/_/g, " ")})`;
}

// -- fleet and sites ------------------------------------------------------------------------

function renderFleet() {
  const body = $("#fleet-rows");
  const rows = [...state.fleet.values()].sort((a, b) => a.device_id.localeCompare(b.device_id) || a.metric.localeCompare(b.metric));
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.device = row.device_id;
    tr.dataset.metric = row.metric;
    if (row.stale) tr.classList.add("stale");
    const selected = state.selection && state.selection.device === row.device_id && state.selection.metric === row.metric;
    if (selected) tr.classList.add("selected");
    const cells = [
      row.device_id,
      row.metric,
      text(row.value) + (row.unit ? " " + row.unit : ""),
      row.site || "–",
      (row.stale ? "stale, " : "") + shortTime(row.ts),
    ];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => { location.hash = seriesHash(row.device_id, row.metric); });
    return tr;
  }));
}

function renderSites() {
  const body = $("#site-rows");
  body.replaceChildren(...state.sites.map((site) => {
    const tr = document.createElement("tr");
    tr.dataset.site = site.site;
    if (site.offline_since) tr.classList.add("stale");
    const backlog = site.backlog_readings === null || site.backlog_readings === undefined ? "–" : text(site.backlog_readings) + " readings";
    for (const value of [site.site, text(site.devices), shortTime(site.last_sync), backlog, site.offline_since ? shortTime(site.offline_since) : "online"]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    return tr;
  }));
}

// -- alerts ---------------------------------------------------------------------------------

function seriesHash(device, metric, window, around) {
  let hash = `#series/${encodeURIComponent(device)}/${encodeURIComponent(metric)}`;
  if (window) hash += `/${encodeURIComponent(window)}`;
  if (around) hash += `@${around}`;
  return hash;
}

function renderAlerts() {
  const list = $("#alert-list");
  list.replaceChildren(...state.alerts.map((alert) => {
    const item = document.createElement("li");
    item.dataset.alertId = alert.alert_id;
    const link = document.createElement("a");
    link.href = seriesHash(alert.device_id, alert.metric, null, alert.ts);
    link.textContent = `${alert.device_id} ${alert.metric} = ${text(alert.value)} (z ${text(alert.score, 1)})`;
    const when = document.createElement("span");
    when.className = "note";
    when.textContent = " " + timeText(alert.ts) + (alert.site ? ", site " + alert.site : "");
    item.append(link, when);
    return item;
  }));
}

// -- the series chart -----------------------------------------------------------------------

function chartData(series) {
  return [series.start, series.mean, series.min, series.max];
}

function drawAlerts(u) {
  if (!state.series) return;
  const ctx = u.ctx;
  ctx.save();
  ctx.fillStyle = "#d62728";
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = devicePixelRatio;
  for (const alert of state.series.alerts) {
    if (alert.value === null) continue;
    const x = u.valToPos(alert.ts, "x", true);
    const y = u.valToPos(alert.value, "y", true);
    if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
    ctx.beginPath();
    ctx.arc(x, Math.min(Math.max(y, u.bbox.top), u.bbox.top + u.bbox.height), 3.5 * devicePixelRatio, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
  }
  ctx.restore();
}

// Return the x range of the whole series, from its first window's start to the later of its last
// window's end and its newest alert. An alert after the last window's start is then drawn too.
function fullRange(series) {
  let min = Infinity;
  let max = -Infinity;
  if (series.start.length) {
    // The windows of one name have one size, so in start order their ends are in order too.
    min = series.start[0];
    max = series.end[series.end.length - 1];
  }
  for (const alert of series.alerts) {
    min = Math.min(min, alert.ts);
    max = Math.max(max, alert.ts);
  }
  if (!(max > min)) {
    // A single instant gets an hour around it.
    min -= 1800;
    max += 1800;
  }
  return { min, max };
}

// Show the whole series, as the chart does while it follows new data.
function showAll() {
  if (state.chart && state.series && (state.series.start.length || state.series.alerts.length)) {
    state.chart.setScale("x", fullRange(state.series));
  }
}

function makeChart(series) {
  const element = $("#chart");
  element.replaceChildren();
  const options = {
    width: Math.max(320, element.clientWidth || 640),
    height: 320,
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    series: [
      {},
      { label: "mean", stroke: "#1f77b4", width: 1.5, spanGaps: false },
      { label: "min", stroke: "rgba(31,119,180,0.35)", width: 1 },
      { label: "max", stroke: "rgba(31,119,180,0.35)", width: 1 },
    ],
    bands: [{ series: [3, 2], fill: "rgba(31,119,180,0.15)" }],
    axes: [{}, { label: series.metric }],
    hooks: {
      draw: [drawAlerts],
      setSelect: [() => { state.following = false; }],
    },
  };
  state.chart = new uPlot(options, chartData(series), element);
  // uPlot's own double-click handler has reset the x scale to the windows by now.
  element.addEventListener("dblclick", () => { state.following = true; showAll(); });
  if (state.following) showAll();
}

function zoomAround(ts) {
  const series = state.series;
  if (!series || !series.start.length || !state.chart) return;
  const width = series.end[0] - series.start[0] || 3600;
  state.following = false;
  state.chart.setScale("x", { min: ts - 24 * width, max: ts + 24 * width });
}

function renderWindowChoices(series) {
  const select = $("#window-select");
  select.replaceChildren(...series.windows.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    option.selected = name === series.window;
    return option;
  }));
}

// Fetch and draw a series; the event stream is opened again unless ``reopen`` is false (it already
// follows this series).
async function selectSeries(selection, reopen = true) {
  state.selection = selection;
  state.following = !selection.around;
  $("#series-title").textContent = `${selection.device} · ${selection.metric}`;
  renderFleet();
  const query = new URLSearchParams({ device_id: selection.device, metric: selection.metric });
  if (selection.window) query.set("window", selection.window);
  state.loading = true;
  try {
    state.series = await getJson("api/series?" + query);
    $("#series-note").textContent = "";
  } catch (error) {
    state.series = null;
    $("#chart").replaceChildren();
    $("#series-note").textContent = `No windows yet for this series (${error.message}).`;
    if (reopen) openEvents();
    return;
  } finally {
    state.loading = false;
  }
  state.selection.window = state.series.window;
  window.sparkiotStatus.points = state.series.start.length;
  renderWindowChoices(state.series);
  makeChart(state.series);
  if (selection.around) zoomAround(selection.around);
  if (reopen) openEvents();
}

function addWindows(points) {
  const series = state.series;
  if (!series) {
    // The series had no windows when it was selected; load it now that it has some.
    if (state.selection && !state.loading) selectSeries({ ...state.selection, around: null }, false);
    return;
  }
  for (const point of points) {
    // Points arrive in start order within an update; a late one is inserted in place.
    let index = series.start.length;
    while (index > 0 && series.start[index - 1] > point.start) index--;
    for (const [name, value] of [["start", point.start], ["end", point.end], ["count", point.count],
      ["mean", point.mean], ["min", point.min], ["max", point.max]]) {
      series[name].splice(index, 0, value);
    }
  }
  if (state.chart) {
    if (state.following) {
      state.chart.setData(chartData(series), true);
      showAll();
    } else {
      const x = state.chart.scales.x;
      state.chart.setData(chartData(series), false);
      state.chart.setScale("x", { min: x.min, max: x.max });
    }
  } else {
    makeChart(series);
  }
  window.sparkiotStatus.points = series.start.length;
  const now = Date.now() / 1000;
  for (const point of points) {
    window.sparkiotShown.push(now - point.written);
  }
  if (window.sparkiotShown.length > 10000) window.sparkiotShown.splice(0, window.sparkiotShown.length - 10000);
}

// -- the event stream -----------------------------------------------------------------------

function setConnection(name) {
  const element = $("#connection");
  element.dataset.state = name;
  element.textContent = name;
}

function onFleet(rows) {
  for (const row of rows) state.fleet.set(key(row.device_id, row.metric), row);
  renderFleet();
  if (!state.selection && state.fleet.size) route();
}

function onAlerts(alerts) {
  const fresh = alerts.reverse();
  state.alerts = fresh.concat(state.alerts).slice(0, MAX_ALERTS);
  renderAlerts();
  if (!state.series) return;
  for (const alert of fresh) {
    if (alert.device_id === state.series.device_id && alert.metric === state.series.metric) {
      state.series.alerts.push({ ts: alert.ts, value: alert.value, score: alert.score, alert_id: alert.alert_id });
    }
  }
  if (!state.chart) return;
  if (state.following) {
    showAll();
  } else {
    state.chart.redraw(false);
  }
}

// Reload what the page shows without opening a new stream: after a reconnect, or when the
// server dropped updates for this page.
async function resync() {
  window.sparkiotStatus.resyncs++;
  await loadLists();
  if (state.selection) await selectSeries({ ...state.selection, around: null }, false);
}

function openEvents() {
  if (state.events) state.events.close();
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const query = new URLSearchParams();
  if (state.selection) {
    query.set("device_id", state.selection.device);
    query.set("metric", state.selection.metric);
    if (state.selection.window) query.set("window", state.selection.window);
  }
  const events = new EventSource("api/events?" + query);
  state.events = events;

  events.addEventListener("open", () => {
    setConnection("live");
    state.retryDelay = RETRY_FIRST_MS;
    // Updates made while the stream was down are not replayed.
    if (state.lost) resync();
    state.lost = false;
  });
  events.addEventListener("error", () => {
    state.lost = true;
    setConnection("reconnecting");
    // The browser reconnects by itself after a dropped connection (CONNECTING), but not after
    // an HTTP error such as 503 (CLOSED).
    if (events.readyState !== EventSource.CLOSED || events !== state.events) return;
    events.close();
    window.sparkiotStatus.retries++;
    state.retryTimer = setTimeout(openEvents, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
  });

  events.addEventListener("hello", () => { window.sparkiotStatus.events++; });
  events.addEventListener("health", (event) => { window.sparkiotStatus.events++; renderHealth(JSON.parse(event.data)); });
  events.addEventListener("sites", (event) => { state.sites = JSON.parse(event.data); renderSites(); });
  events.addEventListener("fleet", (event) => onFleet(JSON.parse(event.data)));
  events.addEventListener("alert", (event) => onAlerts(JSON.parse(event.data)));
  events.addEventListener("window", (event) => {
    window.sparkiotStatus.windowEvents++;
    addWindows(JSON.parse(event.data));
  });
  events.addEventListener("resync", () => resync());
}

// -- start ----------------------------------------------------------------------------------

function parseHash() {
  const match = /^#series\/([^/@]+)\/([^/@]+)(?:\/([^@]+))?(?:@([0-9.]+))?$/.exec(location.hash);
  if (!match) return null;
  return {
    device: decodeURIComponent(match[1]),
    metric: decodeURIComponent(match[2]),
    window: match[3] ? decodeURIComponent(match[3]) : null,
    around: match[4] ? Number(match[4]) : null,
  };
}

function route() {
  let selection = parseHash();
  if (!selection && state.fleet.size) {
    const first = [...state.fleet.values()].sort((a, b) => a.device_id.localeCompare(b.device_id) || a.metric.localeCompare(b.metric))[0];
    selection = { device: first.device_id, metric: first.metric, window: null, around: null };
  }
  if (selection) {
    selectSeries(selection);
  } else {
    openEvents();
  }
}

async function loadLists() {
  try {
    const [fleet, health, alerts] = await Promise.all([getJson("api/fleet"), getJson("api/health"), getJson("api/alerts?limit=" + MAX_ALERTS)]);
    state.fleet = new Map(fleet.fleet.map((row) => [key(row.device_id, row.metric), row]));
    state.sites = fleet.sites;
    state.alerts = alerts.alerts;
    renderFleet();
    renderSites();
    renderAlerts();
    renderHealth(health);
  } catch (error) {
    setConnection("error: " + error.message);
  }
}

async function loadAll() {
  await loadLists();
  route();
}

$("#window-select").addEventListener("change", (event) => {
  const selection = state.selection;
  if (selection) location.hash = seriesHash(selection.device, selection.metric, event.target.value);
});
// Staleness changes with time alone; the rows are marked again from their own figures.
setInterval(() => {
  const now = Date.now() / 1000 + state.serverOffset;
  let changed = false;
  for (const row of state.fleet.values()) {
    const stale = now - row.arrived > row.stale_after;
    if (stale !== row.stale) { row.stale = stale; changed = true; }
  }
  if (changed) renderFleet();
}, 2000);
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => {
  if (state.chart) state.chart.setSize({ width: Math.max(320, $("#chart").clientWidth), height: 320 });
});
loadAll();
