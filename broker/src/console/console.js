// Tradeplex console: polls /api/status every second and renders it. Data goes into the
// page only as text (textContent), never as HTML, so nothing a peer sends can inject
// markup. A token given as ?token= on the page is passed on to /api/status.
"use strict";

const POLL_MS = 1000;
const STALE_MS = 3000;
const token = new URLSearchParams(location.search).get("token");
const api = "api/status" + (token ? "?token=" + encodeURIComponent(token) : "");
let lastOk = 0;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  return n.toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function sum(obj) {
  return Object.values(obj || {}).reduce((a, b) => a + b, 0);
}

function ago(ms) {
  if (ms < 1000) return ms + " ms";
  return (ms / 1000).toFixed(1) + " s";
}

// rows: [{cells: [td…], key: optional data-key (tests and scripts find rows by it)}].
function fillTable(id, rows, empty) {
  const body = document.querySelector("#" + id + " tbody");
  const cols = document.querySelectorAll("#" + id + " thead th").length;
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr", null, "empty");
    const td = el("td", empty);
    td.colSpan = cols;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const r of rows) {
    const tr = el("tr");
    if (r.key !== undefined) tr.dataset.key = r.key;
    for (const c of r.cells) tr.appendChild(c);
    body.appendChild(tr);
  }
}

function num(v, digits, cls) {
  return el("td", fmt(v, digits), "num" + (cls ? " " + cls : ""));
}

function render(s) {
  document.getElementById("broker").textContent = "broker " + (s.broker || "starting");
  document.getElementById("build").textContent = "v" + s.version + " " + s.commit;
  document.getElementById("uptime").textContent =
    s.uptime_s === null ? "" : "up " + fmt(s.uptime_s, 0) + " s";
  document.getElementById("window").textContent = "(last " + fmt(s.window_s, 0) + " s)";
  document.getElementById("window-s").textContent = fmt(s.window_s, 0);

  const reqRate = s.services.reduce((a, x) => a + (x.request_rate || 0), 0);
  const errRate = s.services.reduce((a, x) => a + sum(x.error_rate), 0);
  const evRate = sum(Object.fromEntries(Object.entries(s.events.rate).filter(([k]) => k !== "hb")));
  document.getElementById("n-workers").textContent = s.workers.length;
  document.getElementById("n-rate").textContent = fmt(reqRate);
  const errs = document.getElementById("n-errors");
  errs.textContent = fmt(errRate);
  errs.className = "value" + (errRate > 0 ? " bad" : "");
  document.getElementById("n-events").textContent = fmt(evRate);
  document.getElementById("n-clients").textContent = s.clients;
  document.getElementById("n-subscribers").textContent = s.subscribers;
  const halts = document.getElementById("n-halts");
  halts.textContent = s.halts.length;
  halts.className = "value" + (s.halts.length > 0 ? " bad" : "");

  fillTable("halts", s.halts.map(h => ({ cells: [
    el("td", h.account === "*" ? "* (every account)" : h.account, "bad"),
    el("td", h.reason),
    el("td", new Date(h.since_ms).toLocaleString()),
  ] })), "no halt in force");

  fillTable("services", s.services.map(x => {
    const errors = Object.entries(x.error_rate).filter(([, v]) => v > 0)
      .map(([k, v]) => k + " " + fmt(v, 2)).join(", ");
    return { key: x.service, cells: [
      el("td", x.service),
      num(x.workers, 0, x.workers === 0 ? "bad" : ""),
      num(x.queued, 0, x.queued > 0 ? "warn" : ""),
      num(x.in_flight, 0),
      num(x.request_rate),
      el("td", errors || "–", errors ? "bad" : ""),
      num(x.p50_ms, 2),
      num(x.p99_ms, 2),
      num(x.received, 0, "received"),
      num(x.answered.ok || 0, 0, "ok"),
    ] };
  }), "no service registered");

  fillTable("workers", s.workers.map(w => ({ key: w.worker, cells: [
    el("td", w.worker, "mono"),
    el("td", w.state, "state-" + w.state),
    el("td", w.services.join(", ")),
    num(w.in_flight + " / " + w.capacity),
    num(ago(w.heartbeat_age_ms)),
    num(w.served, 0, "served"),
  ] })), "no worker registered");

  const kinds = Object.keys(s.events.total).sort();
  fillTable("events", kinds.map(k => ({ key: k, cells: [
    el("td", k), num(s.events.rate[k]), num(s.events.total[k], 0),
  ] })), "no events yet");
  const drops = Object.entries(s.events.drops).filter(([, v]) => v > 0);
  const dropEl = document.getElementById("drops");
  dropEl.textContent = drops.length === 0 ? "no events dropped"
    : "dropped: " + drops.map(([k, v]) => k + " " + fmt(v, 0)).join(", ");
  dropEl.className = drops.length === 0 ? "muted" : "bad";

  document.getElementById("risk-checked").textContent =
    "orders checked: " + fmt(s.risk.checked, 0);
  const rules = Object.entries(s.risk.rejected).filter(([, v]) => v > 0);
  fillTable("risk", rules.map(([k, v]) => ({ key: k, cells: [el("td", k), num(v, 0, "bad")] })),
    "no order rejected");

  fillTable("recent", s.recent.map(r => ({ cells: [
    el("td", new Date(r.unix_ms).toLocaleTimeString()),
    el("td", r.kind, r.kind === "request_error" ? "warn" : "bad"),
    el("td", Object.entries(r.labels).map(([k, v]) => k + "=" + v).join(" ")),
    num(r.count, 0),
  ] })), "nothing recent");
}

function setLive(live, why) {
  const b = document.getElementById("live");
  b.textContent = live ? "live" : why;
  b.className = "badge " + (live ? "live" : "stale");
}

async function poll() {
  try {
    const resp = await fetch(api, { cache: "no-store", credentials: "same-origin" });
    if (!resp.ok) {
      setLive(false, resp.status === 401 ? "unauthorized" : "HTTP " + resp.status);
    } else {
      const status = await resp.json();
      render(status);
      lastOk = Date.now();
      // The HTTP thread answers even when the socket loop is stuck; a snapshot that stops
      // refreshing (normally every 250 ms) says so.
      const stalled = status.snapshot_age_ms !== null && status.snapshot_age_ms > STALE_MS;
      setLive(!stalled, "broker loop stalled " + ago(status.snapshot_age_ms || 0));
    }
  } catch (e) {
    if (Date.now() - lastOk > STALE_MS) setLive(false, "broker unreachable");
  }
  setTimeout(poll, POLL_MS);
}

if (token) document.getElementById("api-link").href = api;
poll();
