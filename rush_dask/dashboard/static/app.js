// The rush_dask dashboard: reads server-sent snapshots and draws them. No libraries.
// Every value from Redis goes into the page as text (textContent), never as HTML.
"use strict";

const COLORS = { queued: "#f59e0b", priority: "#a855f7", running: "#3b82f6", finished: "#22a35a", failed: "#dc2626" };
const LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };
let config = null;
let source = null;
let last = null;
let points = [];  // the chart's points: in full with the first event, then only the new ones
const HISTORY = 600;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function clock(t) { return new Date(t * 1000).toISOString().slice(11, 23); }

async function start() {
  config = await (await fetch("/api/config")).json();
  const wanted = new URLSearchParams(location.search).get("network") || config.network;
  const select = $("network");
  for (const net of config.networks) select.append(el("option", { value: net }, net));
  select.value = wanted;
  select.addEventListener("change", () => connect(select.value));
  $("redis-url").textContent = config.url;
  $("control-note").textContent = config.allow_control ? "control on" : "read-only";
  $("log-worker").addEventListener("change", () => last && drawLog(last));
  $("log-level").addEventListener("change", () => last && drawLog(last));
  window.addEventListener("resize", () => last && draw(last));
  connect(wanted);
}

async function connect(network) {
  if (source) source.close();
  history.replaceState(null, "", `?network=${encodeURIComponent(network)}`);
  const probe = await fetch(`/api/snapshot?network=${encodeURIComponent(network)}`);
  if (!probe.ok) {  // an unknown network: say so instead of retrying forever
    $("live").className = "dot off";
    $("updated").textContent = (await probe.json().catch(() => ({}))).error || `error ${probe.status}`;
    return;
  }
  source = new EventSource(`/events?network=${encodeURIComponent(network)}`);
  points = [];
  source.onmessage = (event) => {
    const snap = JSON.parse(event.data);
    points = snap.history_delta ? points.concat(snap.history).slice(-HISTORY) : snap.history;
    last = { ...snap, history: points };
    draw(last);
    $("live").className = "dot on";
  };
  source.addEventListener("failure", (event) => {
    $("live").className = "dot off";
    $("updated").textContent = JSON.parse(event.data).error;
  });
  source.onerror = () => { $("live").className = "dot off"; $("updated").textContent = "disconnected, retrying…"; };
}

function drawNetworks(networks) {
  const select = $("network");
  const shown = [...select.options].map((o) => o.value);
  if (!networks.length || networks.join() === shown.join()) return;
  const chosen = select.value;
  select.replaceChildren(...networks.map((net) => el("option", { value: net }, net)));
  if (!networks.includes(chosen)) select.append(el("option", { value: chosen }, chosen));
  select.value = chosen;
}

function draw(s) {
  document.body.dataset.network = s.network;
  drawNetworks(s.networks);
  $("updated").textContent = `updated ${clock(s.time)} UTC`;
  $("updated").dataset.time = s.time;
  $("count-workers").textContent = s.workers.filter((w) => w.state === "running").length;
  $("count-lost").textContent = s.workers.filter((w) => w.state === "lost").length;
  for (const name of ["queued", "priority", "running", "finished", "failed"]) $(`count-${name}`).textContent = s.counts[name];
  $("throughput").textContent = s.throughput.toFixed(1);
  drawChart(s.history);
  drawComputes(s.computes);
  drawRedis(s.redis);
  drawWorkers(s.workers);
  drawStream(s);
  drawFailed(s.failed);
  drawLog(s);
}

function canvas(id) {
  const c = $(id);
  const ratio = window.devicePixelRatio || 1;
  const width = c.clientWidth, height = c.height / (c.dataset.ratio || 1);
  c.dataset.ratio = ratio;
  c.width = width * ratio; c.height = height * ratio;
  const ctx = c.getContext("2d");
  ctx.scale(ratio, ratio);
  return { ctx, width, height };
}

function drawChart(pts) {
  const { ctx, width, height } = canvas("chart");
  const series = ["queued", "priority", "running", "finished", "failed"];
  const legend = $("legend");
  legend.replaceChildren(...series.map((name) => el("span", {}, el("i", { style: `background:${COLORS[name]}` }), name)));
  if (pts.length < 2) return;
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  const max = Math.max(1, ...pts.flatMap((p) => series.map((name) => p[name])));
  const x = (t) => 40 + (width - 50) * (t - t0) / Math.max(1e-9, t1 - t0);
  const y = (v) => height - 20 - (height - 30) * v / max;
  ctx.fillStyle = "#8a93a6"; ctx.font = "11px sans-serif";
  ctx.fillText(String(max), 2, 12); ctx.fillText("0", 2, height - 20);
  ctx.fillText(`${Math.round(t1 - t0)} s`, width - 40, height - 4);
  ctx.strokeStyle = "#eef0f4"; ctx.beginPath(); ctx.moveTo(40, y(0)); ctx.lineTo(width - 10, y(0)); ctx.stroke();
  for (const name of series) {
    ctx.strokeStyle = COLORS[name]; ctx.lineWidth = 2; ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[name])) : ctx.moveTo(x(p.t), y(p[name]))));
    ctx.stroke();
  }
}

function drawComputes(computes) {
  const box = $("computes");
  if (!computes.length) { box.replaceChildren(el("p", { class: "muted" }, "none yet")); return; }
  box.replaceChildren(...computes.map((c) => {
    const pct = c.total ? Math.floor(100 * c.done / c.total) : 0;
    const label = c.state === "ended" ? "ended (finished or cancelled)" : "running";
    return el("div", { class: `compute ${c.state}`, "data-graph": c.graph_id, "data-pct": pct },
      el("div", {}, `${c.graph_id.slice(0, 12)} `, el("span", { class: "pct" }, `${pct} %`),
        el("span", { class: "muted" }, ` ${c.done} / ${c.total} nodes, ${label}`)),
      el("div", { class: "bar" }, el("div", { style: `width:${pct}%` })));
  }));
}

function drawRedis(r) {
  const rows = [["memory used", bytes(r.used_memory)], ["memory peak", bytes(r.used_memory_peak)],
    ["max memory", r.maxmemory ? bytes(r.maxmemory) : "no limit"], ["connected clients", r.connected_clients],
    ["keys of this network", r.network_keys ?? "counting…"], ["Redis version", r.redis_version]];
  $("redis").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { "data-key": k }, v ?? "–"))));
}

function drawWorkers(workers) {
  const body = $("workers").querySelector("tbody");
  body.replaceChildren(...workers.map((w) => {
    const beat = w.redis_state !== "running" ? "–" : (w.heartbeat_age === null ? "expired" : `${w.heartbeat_age.toFixed(1)} s ago`);
    const cells = [
      el("td", { class: "id" }, w.worker_id),
      el("td", {}, el("span", { class: `state state-${w.state}`, title: w.note || w.state }, w.state)),
      el("td", {}, w.hostname || "–"), el("td", {}, w.pid ?? "–"), el("td", {}, beat),
      el("td", { class: "done" }, w.n_done), el("td", { class: "current", title: w.current.join(" ") }, w.current.join(" ") || "–"),
      el("td", { class: "memory" }, bytes(w.rss)), el("td", { class: "held" }, bytes(w.bytes_held)),
      el("td", { class: "control" }, ...controls(w)),
    ];
    return el("tr", { "data-worker": w.worker_id, "data-state": w.state, class: w.state === "running" ? "" : "gone" }, ...cells);
  }));
}

function controls(w) {
  if (!config.allow_control || w.redis_state !== "running") return [];
  return ["terminate", "kill"].map((type) => el("button", { "data-action": type, onclick: () => stopWorker(w.worker_id, type) },
    type === "kill" ? "kill" : "stop"));
}

async function stopWorker(workerId, type) {
  const what = type === "kill" ? "Kill worker %s now? Its running task fails." : "Stop worker %s after its running task?";
  if (!window.confirm(what.replace("%s", workerId))) return;
  const response = await fetch("/api/stop", {
    method: "POST", headers: { "Content-Type": "application/json", "X-Rush-Token": config.token },
    body: JSON.stringify({ network: last.network, worker_id: workerId, type }),
  });
  if (!response.ok) window.alert(`stop failed: ${await response.text()}`);
}

function drawStream(s) {
  const ids = s.workers.map((w) => w.worker_id);
  const c = $("stream");
  c.height = Math.max(60, 18 * ids.length + 20) * (c.dataset.ratio || 1);
  const { ctx, width, height } = canvas("stream");
  const t1 = s.time, t0 = t1 - 60;
  const x = (t) => 100 + (width - 110) * Math.max(0, t - t0) / 60;
  ctx.font = "11px monospace"; ctx.fillStyle = "#4a5163";
  ids.forEach((id, i) => ctx.fillText(id.slice(0, 12), 2, 14 + 18 * i));
  for (const task of s.stream) {
    const row = ids.indexOf(task.worker_id);
    const end = task.end ?? t1;
    if (row < 0 || end < t0) continue;
    ctx.fillStyle = task.end === null ? COLORS.running : (task.graph ? "#0ea5e9" : COLORS.finished);
    ctx.fillRect(x(task.start), 4 + 18 * row, Math.max(2, x(end) - x(task.start) - 1), 14);
  }
  ctx.fillStyle = "#8a93a6"; ctx.fillText("-60 s", 100, height - 4); ctx.fillText("now", width - 30, height - 4);
}

const openFailures = new Set();  // failed tasks whose traceback the person unfolded
let shownFailures = "";

function drawFailed(failed) {
  const box = $("failed");
  const key = JSON.stringify(failed);
  if (key === shownFailures) return;  // redraw only on change: an open traceback stays open
  shownFailures = key;
  if (!failed.length) { box.replaceChildren(el("p", { class: "muted" }, "none")); return; }
  box.replaceChildren(...failed.map((f) => {
    const item = el("details", { class: "failed-task", "data-key": f.key },
      el("summary", {}, `${f.time ? clock(f.time) : ""} ${f.key} on ${f.worker_id || "–"}: `, el("b", {}, f.error)),
      el("pre", {}, f.traceback || "(no traceback)"));
    item.open = openFailures.has(f.key);
    item.addEventListener("toggle", () => (item.open ? openFailures.add(f.key) : openFailures.delete(f.key)));
    return item;
  }));
}

function drawLog(s) {
  const select = $("log-worker");
  const chosen = select.value;
  const ids = s.workers.map((w) => w.worker_id);
  if (select.options.length - 1 !== ids.length) {
    select.replaceChildren(el("option", { value: "" }, "all"), ...ids.map((id) => el("option", { value: id }, id)));
    select.value = ids.includes(chosen) ? chosen : "";
  }
  const min = LEVELS[$("log-level").value] || 0;
  const lines = s.logs.filter((r) => (!select.value || r.worker_id === select.value) && (LEVELS[r.level] ?? 20) >= min);
  const pre = $("log");
  const key = `${select.value}|${min}|${lines.length}|${lines.length ? lines[lines.length - 1].time : 0}`;
  if (pre.dataset.shown === key) return;  // unchanged: keep the reader's scroll and selection
  pre.dataset.shown = key;
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 5;
  pre.replaceChildren(...lines.map((r) => el("div", { class: `lvl-${r.level}` },
    `${clock(r.time)} ${r.worker_id} ${r.level.padEnd(7)} ${r.logger}: ${r.message}`)));
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

start();
