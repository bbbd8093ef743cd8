/* ruleless Security view — vanilla JS, no build step, nothing fetched but the API.
 *
 * Every value that came from an event (command lines, hosts, reasons) is attacker
 * controlled: the DOM is built with createElement + textContent only, never innerHTML.
 */
"use strict";

const TOKEN_KEY = "ruleless.token";
const POLL_EVENTS_MS = 3000;
const POLL_SIDE_MS = 10000;
const PAGE = 100;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  me: null,
  workload: null,          // {org, workload} or null for all
  workloads: [],
  filters: {},
  events: [],              // newest first, as shown
  seen: new Set(),         // event ids already shown (to flash new rows)
  nextCursor: null,
  timers: [],
  openEventId: null,
  verdicts: {},            // event id -> label given in this tab (shown on the feed)
  gen: 0,                  // bumped when filters change: older answers are dropped
  polling: false,
};

/* ---------------------------------------------------------------- DOM helpers */

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);  // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function appendAll(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

// Attributes that make an element open something by click or by Enter (keyboard users).
function opens(fn) {
  return { tabindex: 0, onclick: fn, onkeydown: (ev) => { if (ev.key === "Enter") fn(); } };
}

function stateBox(kind, title, text) {
  const cls = kind === "error" ? "state state-error" : "state";
  const spin = kind === "loading" ? h("span", { class: "spinner" }) : null;
  return h("div", { class: cls }, h("strong", {}, spin, title), text || "");
}

function toast(text, isError) {
  const t = $("toast");
  t.textContent = text;
  t.className = isError ? "toast error" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

/* ---------------------------------------------------------------- formatting */

function toDate(v) {
  if (v === undefined || v === null || v === "") return null;
  if (typeof v === "number") return new Date(v < 1e12 ? v * 1000 : v);
  const n = Number(v);
  if (!Number.isNaN(n) && String(v).trim() !== "") return toDate(n);
  const s = String(v);
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : s.replace(" ", "T") + "Z");
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(v) {
  const d = toDate(v);
  if (!d) return "–";
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return today ? time : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function fmtAgo(v) {
  const d = toDate(v);
  if (!d) return "–";
  const s = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function fmtNum(n) {
  if (n === undefined || n === null || Number.isNaN(Number(n))) return "–";
  return Number(n).toLocaleString();
}

function fmtScore(s) {
  return s === undefined || s === null ? "–" : Number(s).toFixed(2);
}

function severityOf(e) {
  const s = String(e.severity || "").toLowerCase();
  if (s === "alert" || s === "warn" || s === "ok") return s;
  return Number(e.score) >= 0.9 ? "alert" : Number(e.score) >= 0.7 ? "warn" : "ok";
}

function badge(sev) {
  return h("span", { class: `badge badge-${sev}` }, sev);
}

function scoreCell(score, sev) {
  const pct = Math.round(Math.max(0, Math.min(1, Number(score) || 0)) * 100);
  const colour = sev === "alert" ? "var(--alert)" : sev === "warn" ? "var(--warn)" : "var(--ok)";
  const bar = h("span", { class: "scorebar" }, h("span", { style: { width: `${pct}%`, background: colour } }));
  return [h("span", { class: `score score-${sev}` }, fmtScore(score)), bar];
}

/* ---------------------------------------------------------------- response shapes */

// The API answers with objects ({events: [...], next_cursor}) — accept a bare list too.
function listOf(resp, ...keys) {
  if (Array.isArray(resp)) return resp;
  for (const k of keys) if (resp && Array.isArray(resp[k])) return resp[k];
  return [];
}

function pick(obj, ...keys) {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return undefined;
}

function eventId(e) {
  return pick(e, "event_id", "id");
}

function programOf(e) {
  return pick(e, "process_name", "program") || "";
}

// A workload as the caller knows it: an admin reads every org, so sees "org/workload".
function shardName(org, workload) {
  return state.me && state.me.admin && org ? `${org}/${workload || ""}` : workload || "";
}

/* ---------------------------------------------------------------- API */

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts) {
  const init = { method: (opts && opts.method) || "GET", headers: { Authorization: `Bearer ${state.token}` } };
  if (opts && opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) { signOut("That token was refused (expired, revoked or mistyped)."); throw new ApiError(401, "unauthorised"); }
  const text = await resp.text();
  const body = text ? safeJson(text) : null;
  if (resp.status === 404 && body && body.detail === "Not Found") throw new ApiError(404, `this API does not serve ${path.split("?")[0]} (404)`);
  if (!resp.ok) throw new ApiError(resp.status, errorText(body, text, resp.status));
  return body;
}

function safeJson(text) {
  try { return JSON.parse(text); } catch { return text; }
}

function errorText(body, text, status) {
  const detail = body && typeof body === "object" ? body.detail : null;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `HTTP ${status}${text ? `: ${String(text).slice(0, 200)}` : ""}`;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function scopeParams() {
  if (!state.workload) return {};
  const p = { workload: state.workload.workload };
  if (state.me && state.me.admin) p.org = state.workload.org;
  return p;
}

/* ---------------------------------------------------------------- sign in / out */

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token-input").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  stopPolling();
  showLogin(message);
}

async function signIn(token) {
  state.token = token.trim();
  if (!state.token) return showLogin("Paste a token first.");
  try {
    state.me = await api("/api/me");
  } catch (err) {
    if (err.status !== 401) showLogin(`Could not reach the API: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("login").hidden = true;
  $("app").hidden = false;
  renderWho();
  startPolling();
}

function renderWho() {
  const me = state.me || {};
  const org = pick(me, "org", "org_id") || "all orgs";
  $("who").textContent = me.admin ? "admin · every org" : `org · ${org}`;
  $("who").title = me.admin ? `admin token of ${org}: reads every org` : `this token reads ${org} only`;
}

/* ---------------------------------------------------------------- polling */

function startPolling() {
  stopPolling();
  refreshAll();
  state.timers.push(setInterval(refreshEvents, POLL_EVENTS_MS));
  state.timers.push(setInterval(refreshSide, POLL_SIDE_MS));
}

function stopPolling() {
  state.timers.forEach(clearInterval);
  state.timers = [];
}

function refreshAll() {
  refreshEvents(true);
  refreshSide();
}

function refreshSide() {
  refreshWorkloads();
  refreshAlerts();
  if (state.workload) refreshWorkloadPanel();
}

function setLive(kind, text) {
  $("live").className = `live ${kind}`;
  $("live-text").textContent = text;
}

/* ---------------------------------------------------------------- events table */

function eventParams() {
  const { window: span, ...filters } = state.filters;
  const since = span ? Math.floor(Date.now() / 1000 - Number(span)) : undefined;
  return { ...scopeParams(), ...filters, since, limit: PAGE };
}

async function refreshEvents(initial) {
  if (!initial && state.polling) return;  // the previous poll is still out
  const gen = initial ? ++state.gen : state.gen;
  const body = $("events");
  if (initial) clear(body, loadingRow("Loading events…"));
  state.polling = true;
  try {
    const resp = await api(`/api/events${query(eventParams())}`);
    if (gen !== state.gen) return;  // filters changed meanwhile: a newer answer is coming
    const events = listOf(resp, "events", "items", "results");
    state.nextCursor = pick(resp, "next_cursor", "cursor", "next");
    mergeEvents(events, initial);
    setLive("", "live");
  } catch (err) {
    if (err.status === 401) return;
    setLive("down", "offline");
    if (initial || !state.events.length) clear(body, errorRow(err));
  } finally {
    if (gen === state.gen) state.polling = false;
  }
}

function mergeEvents(events, initial) {
  const older = state.events.length > PAGE ? state.events.slice(PAGE) : [];
  state.events = dedupe([...events, ...older]);
  renderEvents(initial);
}

function dedupe(events) {
  const ids = new Set();
  return events.filter((e) => {
    const id = eventId(e);
    if (ids.has(id)) return false;
    ids.add(id);
    return true;
  });
}

function renderEvents(initial) {
  const body = $("events");
  if (!state.events.length) {
    clear(body, emptyRow());
  } else {
    clear(body, state.events.map((e) => eventRow(e, !initial && !state.seen.has(eventId(e)))));
  }
  state.events.forEach((e) => state.seen.add(eventId(e)));
  $("more").hidden = !state.nextCursor;
  $("events-status").textContent = `${fmtNum(state.events.length)} shown · updated ${fmtTime(Date.now())}`;
  renderKpis();
}

function eventRow(e, fresh) {
  const sev = severityOf(e);
  const cls = `sev-${sev}${fresh ? " fresh" : ""}${state.openEventId === eventId(e) ? " selected" : ""}`;
  return h("tr", { class: cls, dataset: { eventId: eventId(e) }, ...opens(() => openDrawer(eventId(e), e)) },
    h("td", { class: "time", title: String(toDate(e.ts) || "") }, fmtTime(e.ts)),
    h("td", {}, badge(sev)),
    h("td", {}, scoreCell(e.score, sev)),
    h("td", { class: "wl" }, shardName(e.org_id, e.workload), e.learning ? h("span", { class: "chip chip-learning", title: "baseline still learning" }, " learning") : null),
    h("td", {}, e.host || "–"),
    h("td", {}, programOf(e)),
    h("td", { class: "cmd", title: e.cmdline || "" }, e.cmdline || ""));
}

function loadingRow(text) {
  return h("tr", {}, h("td", { colspan: 7 }, stateBox("loading", text)));
}

function emptyRow() {
  const filtered = Object.keys(state.filters).length > 0;
  const text = filtered ? "Nothing matches these filters — try clearing some." : "Events appear here as agents report them.";
  return h("tr", {}, h("td", { colspan: 7 }, stateBox("empty", "No events yet", text)));
}

function errorRow(err) {
  return h("tr", {}, h("td", { colspan: 7 }, stateBox("error", "Could not load events", err.message)));
}

async function loadOlder() {
  if (!state.nextCursor) return;
  const btn = $("more");
  btn.disabled = true;
  try {
    const resp = await api(`/api/events${query({ ...eventParams(), cursor: state.nextCursor })}`);
    state.nextCursor = pick(resp, "next_cursor", "cursor", "next");
    state.events = dedupe([...state.events, ...listOf(resp, "events", "items", "results")]);
    renderEvents(true);
  } catch (err) {
    if (err.status !== 401) toast(`Could not load older events: ${err.message}`, true);
  } finally {
    btn.disabled = false;
  }
}

function renderKpis() {
  const ev = state.events;
  $("kpi-events").textContent = fmtNum(ev.length);
  $("kpi-alerts").textContent = fmtNum(ev.filter((e) => severityOf(e) === "alert").length);
  $("kpi-warns").textContent = fmtNum(ev.filter((e) => severityOf(e) === "warn").length);
  $("kpi-hosts").textContent = fmtNum(new Set(ev.map((e) => e.host)).size);
}

/* ---------------------------------------------------------------- filters */

function readFilters() {
  const form = $("filters");
  const f = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    const v = el.value.trim();
    if (v) f[el.name] = v;
  }
  return f;
}

let filterTimer = null;
function onFilterInput() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    state.filters = readFilters();
    state.events = [];
    refreshEvents(true);
  }, 250);
}

function clearFilters() {
  $("filters").reset();
  onFilterInput();
}

/* ---------------------------------------------------------------- alert feed */

async function refreshAlerts() {
  const list = $("alerts");
  if (!list.childElementCount) clear(list, stateBox("loading", "Loading alerts…"));
  try {
    const resp = await api(`/api/alerts${query({ ...scopeParams(), limit: 50 })}`);
    renderAlerts(listOf(resp, "alerts", "groups", "items"), pick(resp, "total_groups"));
  } catch (err) {
    if (err.status !== 401) clear(list, stateBox("error", "Could not load alerts", err.message));
  }
}

function renderAlerts(groups, total) {
  $("alert-count").textContent = fmtNum(total ?? groups.length);
  $("alert-count").title = "behaviours with warnings or alerts";
  if (!groups.length) {
    clear($("alerts"), stateBox("empty", "All quiet", "No warnings or alerts in this view."));
    return;
  }
  clear($("alerts"), groups.map(alertCard));
}

function alertCard(g) {
  const sample = pick(g, "sample", "sample_event", "event") || {};
  const score = pick(g, "max_score", "score") ?? sample.score;
  const sev = String(pick(g, "severity") || severityOf({ score, severity: sample.severity }));
  const hosts = listOf(pick(g, "hosts") || []);
  const cmd = sample.cmdline || pick(g, "cmdline", "behaviour") || "";
  const id = eventId(sample) || pick(g, "event_id", "sample_event_id");
  const verdict = state.verdicts[id];
  return h("li", { class: `alert-card sev-${sev}${verdict ? " judged" : ""}`, dataset: { eventId: id || "" }, ...opens(() => id && openDrawer(id, sample)) },
    h("div", { class: "alert-top" },
      h("span", {}, badge(sev), " ", h("span", { class: "score score-" + sev }, fmtScore(score)),
        verdict ? h("span", { class: `chip verdict-${verdict}`, title: "your verdict, sent from this tab" }, verdict) : null),
      h("span", { class: "alert-count", title: "events in this group" }, `×${fmtNum(pick(g, "count") ?? 1)}`)),
    h("div", { class: "alert-cmd", title: cmd }, cmd),
    h("div", { class: "alert-meta" },
      h("span", {}, shardName(pick(g, "org_id") || sample.org_id, pick(g, "workload") || sample.workload)),
      h("span", {}, programOf(sample) || pick(g, "process_name") || ""),
      h("span", { title: String(toDate(pick(g, "last", "last_ts", "last_seen")) || "") }, `last ${fmtAgo(pick(g, "last", "last_ts", "last_seen"))}`)),
    h("div", { class: "alert-meta" }, hosts.slice(0, 4).map((x) => h("span", { class: "host-chip" }, x)),
      moreHosts(hosts, pick(g, "host_count"))));
}

function moreHosts(hosts, total) {
  const more = Math.max(Number(total) || hosts.length, hosts.length) - Math.min(hosts.length, 4);
  return more > 0 ? h("span", {}, `+${more} more host${more > 1 ? "s" : ""}`) : null;
}

/* ---------------------------------------------------------------- workloads */

async function refreshWorkloads() {
  try {
    const resp = await api("/api/workloads");
    state.workloads = listOf(resp, "workloads", "items");
    renderWorkloads();
  } catch (err) {
    if (err.status !== 401) clear($("workloads"), h("li", {}, stateBox("error", "Workloads unavailable", err.message)));
  }
}

// "learning" | "learned", a boolean, or {state: ...} (the stats answer).
function isLearning(w) {
  let v = pick(w, "learning_state", "learning", "state");
  if (v && typeof v === "object") v = v.state;
  if (typeof v === "boolean") return v;
  return String(v || "") === "learning";
}

// How far a workload is through its learning period (0..1), or null when unknown.
function learningProgress(w) {
  if (!isLearning(w)) return 1;
  const l = typeof w.learning === "object" && w.learning ? w.learning : w;
  const need = Number(pick(l, "learning_events"));
  const have = Number(pick(l, "events"));
  return need > 0 && have >= 0 ? Math.min(1, have / need) : null;
}

function volumeOf(s) {
  const v = pick(s, "volume", "events", "count");
  return v && typeof v === "object" ? v.events : v;
}

function renderWorkloads() {
  const ws = state.workloads;
  $("workload-count").textContent = fmtNum(ws.length);
  $("kpi-learning").textContent = fmtNum(ws.filter(isLearning).length);
  if (!ws.length) {
    clear($("workloads"), h("li", {}, stateBox("empty", "No workloads yet", "They appear with their first event.")));
    return;
  }
  const multiOrg = new Set(ws.map((w) => pick(w, "org_id", "org"))).size > 1;
  clear($("workloads"), ws.map((w) => h("li", {}, workloadItem(w, multiOrg))));
}

function workloadItem(w, multiOrg) {
  const org = pick(w, "org_id", "org");
  const active = state.workload && state.workload.org === org && state.workload.workload === w.workload;
  const learning = isLearning(w);
  const learned = pick(w, "learned_behaviours", "learned", "behaviours");
  const progress = learningProgress(w);
  const alerts = Number(pick(w, "alert") || 0) + Number(pick(w, "warn") || 0);
  return h("button", { type: "button", class: `wl-item${active ? " active" : ""}`, dataset: { workload: w.workload, org },
    onclick: () => selectWorkload({ org, workload: w.workload }) },
  h("div", { class: "wl-name" }, h("span", {}, multiOrg ? `${org} / ${w.workload}` : w.workload),
    h("span", { class: `chip ${learning ? "chip-learning" : "chip-ready"}` }, learning ? "learning" : "learned")),
  h("div", { class: "wl-meta" },
    h("span", {}, `${fmtNum(volumeOf(w))} events`),
    learned !== undefined ? h("span", {}, `${fmtNum(learned)} behaviours`) : null,
    alerts ? h("span", { class: "wl-alerts", title: "warnings and alerts" }, `⚑ ${fmtNum(alerts)}`) : null),
  h("div", { class: `wl-bar${learning ? "" : " ready"}${progress === null ? " unknown" : ""}` },
    h("span", { style: { width: `${Math.round((progress ?? 1) * 100)}%` } })));
}

function selectWorkload(w) {
  state.workload = w;
  $("all-workloads").classList.toggle("active", !w);
  renderWorkloads();
  $("workload-panel").hidden = !w;
  state.events = [];
  if (w) refreshWorkloadPanel(true);
  refreshAll();
}

/* ---------------------------------------------------------------- workload panel */

function workloadPath(w) {
  return `/api/workloads/${encodeURIComponent(w.org)}/${encodeURIComponent(w.workload)}`;
}

async function refreshWorkloadPanel(initial) {
  const w = state.workload;
  $("wl-title").textContent = state.me && state.me.admin ? `${w.org} / ${w.workload}` : w.workload;
  if (initial) {
    for (const id of ["chart-volume", "chart-scores", "chart-baseline"]) clear($(id), stateBox("loading", "Loading…"));
    loadThresholds(w);
  }
  try {
    const stats = await api(`${workloadPath(w)}/stats`);
    if (state.workload !== w) return;
    renderWorkloadStats(stats);
  } catch (err) {
    if (err.status === 401) return;
    for (const id of ["chart-volume", "chart-scores", "chart-baseline"]) clear($(id), stateBox("error", "No stats", err.message));
  }
}

function renderWorkloadStats(s) {
  const learning = isLearning(s);
  const chip = $("wl-state");
  chip.className = `chip ${learning ? "chip-learning" : "chip-ready"}`;
  chip.textContent = learning ? "learning baseline" : "baseline learned";
  const vol = pick(s, "volume") || {};
  const learned = pick(s, "learned_behaviours", "learned", "behaviours");
  const hosts = typeof vol === "object" && vol.hosts !== undefined ? ` · ${fmtNum(vol.hosts)} hosts` : "";
  $("wl-summary").textContent = `${fmtNum(volumeOf(s))} events${hosts} · ${fmtNum(learned)} learned behaviours`;
  const th = thresholdsOf(pick(s, "thresholds") || {});
  renderChart("chart-volume", seriesOf(pick(s, "events_over_time", "over_time", "timeline", "volume_over_time")), "bars", pick(s, "bucket_s"));
  renderHistogram("chart-scores", histogramOf(pick(s, "score_distribution", "score_histogram", "histogram", "scores")), th);
  renderChart("chart-baseline", seriesOf(pick(s, "baseline_growth", "baseline", "learned_over_time")), "line");
}

// {warn, alert} or the API's {effective: {warn, alert}, source, note}.
function thresholdsOf(t) {
  const e = pick(t, "effective") || t;
  return { warn: Number(pick(e, "warn") ?? 0.7), alert: Number(pick(e, "alert") ?? 0.9), source: pick(t, "source", "origin"), note: pick(t, "note") };
}

async function loadThresholds(w) {
  $("th-status").textContent = "";
  try {
    const t = thresholdsOf(await api(`${workloadPath(w)}/thresholds`));
    $("th-warn").value = t.warn.toFixed(2);
    $("th-alert").value = t.alert.toFixed(2);
    if (t.source) $("th-status").textContent = t.source === "override" ? "(set here, overrides the configured ones)" : `(${t.source})`;
    $("th-reset").hidden = t.source !== "override";
    $("th-status").title = t.note || "";
  } catch (err) {
    if (err.status !== 401) $("th-status").textContent = `thresholds unavailable: ${err.message}`;
  }
}

async function saveThresholds(ev) {
  ev.preventDefault();
  const w = state.workload;
  const warn = Number($("th-warn").value);
  const alert = Number($("th-alert").value);
  if (!(warn >= 0 && alert <= 1 && warn <= alert)) {
    $("th-status").textContent = "warn must be ≤ alert, both between 0 and 1";
    return;
  }
  $("th-status").textContent = "saving…";
  try {
    await api(`${workloadPath(w)}/thresholds`, { method: "PUT", body: { warn, alert } });
    $("th-status").textContent = "saved — new events use these thresholds";
    $("th-reset").hidden = false;
    toast(`Thresholds for ${w.workload}: warn ≥ ${warn.toFixed(2)}, alert ≥ ${alert.toFixed(2)}`);
    refreshWorkloadPanel();
  } catch (err) {
    if (err.status !== 401) $("th-status").textContent = `not saved: ${err.message}`;
  }
}

async function resetThresholds() {
  const w = state.workload;
  $("th-status").textContent = "resetting…";
  try {
    await api(`${workloadPath(w)}/thresholds`, { method: "DELETE" });
    toast(`Thresholds for ${w.workload} back to the configured ones`);
    loadThresholds(w);
    refreshWorkloadPanel();
  } catch (err) {
    if (err.status !== 401) $("th-status").textContent = `not reset: ${err.message}`;
  }
}

/* ---------------------------------------------------------------- charts (inline SVG) */

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { w: 320, h: 130, left: 30, right: 6, top: 8, bottom: 18 };

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  appendAll(el, children);
  return el;
}

// A series is [{x: Date|number, y: number}], from [[t, n]] or [{ts|t|bucket|time, count|n|...}].
function seriesOf(raw) {
  return listOf(raw || [], "points", "series", "buckets").map((p) => {
    if (Array.isArray(p)) return { x: toDate(p[0]), y: Number(p[1]) };
    const x = pick(p, "ts", "t", "time", "bucket", "start", "day", "hour");
    const y = pick(p, "count", "n", "events", "value", "learned", "behaviours", "total");
    return { x: toDate(x), y: Number(y), warn: Number(p.warn || 0), alert: Number(p.alert || 0) };
  }).filter((p) => p.x && Number.isFinite(p.y));
}

// A histogram is [{lo, hi, count}] over 0..1, from a list of counts or of bucket objects.
function histogramOf(raw) {
  const items = listOf(raw || [], "buckets", "bins", "histogram");
  if (!items.length && raw && Array.isArray(raw.counts)) return histogramOf(raw.counts);
  return items.map((b, i) => {
    if (typeof b === "number") return { lo: i / items.length, hi: (i + 1) / items.length, count: b };
    if (Array.isArray(b)) return { lo: Number(b[0]), hi: Number(b[0]) + 1 / items.length, count: Number(b[1]) };
    const lo = Number(pick(b, "lo", "low", "from", "bucket", "le", "min") ?? i / items.length);
    const hi = Number(pick(b, "hi", "high", "to", "max") ?? lo + 1 / items.length);
    return { lo, hi, count: Number(pick(b, "count", "n", "events") ?? 0) };
  });
}

function chartFrame(maxY) {
  const { w, h: ht, left, right, top, bottom } = CHART;
  const svg = s("svg", { viewBox: `0 0 ${w} ${ht}`, preserveAspectRatio: "none", role: "img" });
  const y0 = ht - bottom;
  for (const f of [0.5, 1]) {
    const y = y0 - f * (y0 - top);
    svg.append(s("line", { class: "grid", x1: left, x2: w - right, y1: y, y2: y }));
    svg.append(s("text", { x: left - 4, y: y + 3, "text-anchor": "end" }, compact(maxY * f)));
  }
  svg.append(s("line", { class: "axis", x1: left, x2: w - right, y1: y0, y2: y0 }));
  return svg;
}

function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}k`;
  return String(Math.round(n));
}

// Bars span [t, t + bucket); a line's points sit at their t.
function renderChart(id, points, kind, bucketS) {
  const el = $(id);
  if (!points.length) return clear(el, stateBox("empty", "No data yet"));
  const { w, h: ht, left, right, top, bottom } = CHART;
  const maxY = Math.max(1, ...points.map((p) => p.y));
  const xs = points.map((p) => p.x.getTime());
  const step = kind === "bars" ? (bucketS ? bucketS * 1000 : minGap(xs)) : 0;
  const x0 = Math.min(...xs), x1 = Math.max(...xs) + step;
  const sx = (t) => left + (x1 === x0 ? 0.5 : (t - x0) / (x1 - x0)) * (w - left - right);
  const sy = (v) => ht - bottom - (v / maxY) * (ht - bottom - top);
  const svg = chartFrame(maxY);
  if (kind === "bars") drawBars(svg, points, sx, sy, step);
  else drawLine(svg, points, sx, sy);
  svg.append(s("text", { x: left, y: ht - 4 }, fmtTime(points[0].x)));
  svg.append(s("text", { x: w - right, y: ht - 4, "text-anchor": "end" }, fmtTime(points[points.length - 1].x)));
  clear(el, svg);
}

function minGap(xs) {
  let gap = Infinity;
  for (let i = 1; i < xs.length; i++) gap = Math.min(gap, xs[i] - xs[i - 1] || Infinity);
  return Number.isFinite(gap) ? gap : 60000;
}

// One bar per bucket, stacked: routine events, then warnings, then alerts on top.
function drawBars(svg, points, sx, sy, step) {
  for (const p of points) {
    const t = p.x.getTime();
    const slot = sx(t + step) - sx(t);
    const x = sx(t) + Math.min(2, slot * 0.12), bw = Math.max(1.5, slot - 2 * Math.min(2, slot * 0.12));
    const ok = Math.max(0, p.y - p.warn - p.alert);
    const g = s("g", {}, s("title", {}, `${fmtTime(p.x)}: ${fmtNum(p.y)} events, ${fmtNum(p.warn)} warn, ${fmtNum(p.alert)} alert`));
    let base = 0;
    for (const [n, fill] of [[ok, "var(--accent)"], [p.warn, "var(--warn)"], [p.alert, "var(--alert)"]]) {
      if (n <= 0) continue;
      const height = Math.max(2, sy(base) - sy(base + n));  // a single alert stays visible
      g.append(s("rect", { x, y: sy(base) - height, width: bw, height, fill, opacity: 0.85 }));
      base += n;
    }
    svg.append(g);
  }
}

function drawLine(svg, points, sx, sy) {
  const pts = points.map((p) => `${sx(p.x.getTime()).toFixed(1)},${sy(p.y).toFixed(1)}`);
  const first = sx(points[0].x.getTime()), last = sx(points[points.length - 1].x.getTime());
  svg.append(s("path", { class: "area-learn", d: `M${first},${sy(0)} L${pts.join(" L")} L${last},${sy(0)} Z` }));
  svg.append(s("path", { class: "line-learn", d: `M${pts.join(" L")}` }));
  const end = points[points.length - 1];
  svg.append(s("circle", { cx: last, cy: sy(end.y), r: 3, fill: "var(--learning)" }, s("title", {}, `${fmtNum(end.y)} behaviours`)));
}

function renderHistogram(id, bins, th) {
  const el = $(id);
  if (!bins.length || !bins.some((b) => b.count > 0)) return clear(el, stateBox("empty", "No scores yet"));
  const { w, h: ht, left, right, top, bottom } = CHART;
  const maxY = Math.max(1, ...bins.map((b) => b.count));
  const sx = (v) => left + v * (w - left - right);
  const sy = (v) => ht - bottom - (v / maxY) * (ht - bottom - top);
  const svg = chartFrame(maxY);
  for (const b of bins) {
    const mid = (b.lo + b.hi) / 2;
    const fill = mid >= th.alert ? "var(--alert)" : mid >= th.warn ? "var(--warn)" : "var(--ok)";
    const x = sx(b.lo) + 1, bw = Math.max(1, sx(b.hi) - sx(b.lo) - 2);
    const height = b.count > 0 ? Math.max(2, sy(0) - sy(b.count)) : 0;  // rare high scores stay visible
    svg.append(s("rect", { x, y: sy(0) - height, width: bw, height, rx: 1, fill, opacity: 0.85 },
      s("title", {}, `score ${b.lo.toFixed(2)}–${b.hi.toFixed(2)}: ${fmtNum(b.count)} events`)));
  }
  for (const [v, colour] of [[th.warn, "var(--warn)"], [th.alert, "var(--alert)"]]) {
    svg.append(s("line", { class: "thr", x1: sx(v), x2: sx(v), y1: top, y2: sy(0), stroke: colour }));
  }
  for (const v of [0, 0.5, 1]) svg.append(s("text", { x: sx(v), y: ht - 4, "text-anchor": v === 0 ? "start" : v === 1 ? "end" : "middle" }, v.toFixed(1)));
  clear(el, svg);
}

/* ---------------------------------------------------------------- search */

function runSearch(ev) {
  ev.preventDefault();
  const text = $("search-input").value.trim();
  if (text) search({ query: text }, `for “${text}”`);
}

// Behaviours like an event's ("more like this"), from the drawer.
function searchLike(e) {
  closeDrawer();
  search({ like_event_id: eventId(e) }, `like “${e.cmdline || eventId(e)}”`);
}

async function search(request, title) {
  $("search-panel").hidden = false;
  $("search-query").textContent = title;
  $("main").scrollTop = 0;
  const list = $("search-results");
  clear(list, h("li", {}, stateBox("loading", "Searching learned behaviours…")));
  const body = { ...request, limit: 20 };
  if (state.workload) body.workload = state.workload.workload;
  if (state.workload && state.me && state.me.admin) body.org = state.workload.org;
  try {
    const resp = await api("/telemetry/security/search", { method: "POST", body });
    renderHits(listOf(resp, "hits", "results", "items"));
  } catch (err) {
    if (err.status !== 401) clear(list, h("li", {}, stateBox("error", "Search failed", err.message)));
  }
}

function hitEvent(hit) {
  const e = pick(hit, "event") || {};
  return {
    ...hit, ...e,
    event_id: eventId(e) || eventId(hit),
    cmdline: e.cmdline || pick(hit, "cmdline", "exemplar") || "",
    host: e.host || hit.host,
    ts: e.ts ?? pick(hit, "ts", "time", "last_ts"),
    score: e.score ?? pick(hit, "event_score", "max_score"),
  };
}

function renderHits(hits) {
  if (!hits.length) {
    clear($("search-results"), h("li", {}, stateBox("empty", "No matching behaviour", "Nothing learned so far looks like that.")));
    return;
  }
  clear($("search-results"), hits.map((hit, i) => hitItem(hit, i + 1)));
  $("search-query").textContent += ` · ${hits.length} behaviour${hits.length === 1 ? "" : "s"}, best first`;
}

function hitItem(hit, rank) {
  const e = hitEvent(hit);
  const sev = severityOf(e);
  const relevance = pick(hit, "relevance", "similarity", "rank_score", "match");
  return h("li", { class: "hit", dataset: { eventId: e.event_id || "", rank }, ...opens(() => e.event_id && openDrawer(e.event_id, e)) },
    h("span", { class: "hit-rank" }, rank),
    h("div", {},
      h("div", { class: "hit-cmd" }, e.cmdline),
      h("div", { class: "hit-meta" },
        h("span", {}, shardName(e.org_id, e.workload)), h("span", { class: "host-chip" }, e.host || "–"),
        h("span", {}, programOf(e)), h("span", {}, fmtTime(e.ts)),
        pick(hit, "count") !== undefined ? h("span", {}, `seen ×${fmtNum(hit.count)}`) : null)),
    h("div", { class: "hit-side" }, h("span", {}, badge(sev), " ", h("span", { class: `score score-${sev}` }, fmtScore(e.score))),
      relevance !== undefined ? h("span", { class: "sim", title: "how well it matches the query" }, `match ${Number(relevance).toFixed(2)}`) : null));
}

function closeSearch() {
  $("search-panel").hidden = true;
  $("search-input").value = "";
}

/* ---------------------------------------------------------------- event drawer */

async function openDrawer(id, preview) {
  state.openEventId = id;
  $("drawer").classList.add("open");
  $("drawer").setAttribute("aria-hidden", "false");
  $("scrim").hidden = false;
  $("d-title").textContent = (preview && preview.cmdline) || id;
  $("d-sub").textContent = "";
  clear($("d-body"), stateBox("loading", "Loading event…"));
  try {
    const detail = await api(`/api/events/${encodeURIComponent(id)}`);
    if (state.openEventId === id) renderDrawer(detail);
  } catch (err) {
    if (err.status !== 401) clear($("d-body"), stateBox("error", "Could not load this event", err.message));
  }
}

function closeDrawer() {
  state.openEventId = null;
  $("drawer").classList.remove("open");
  $("drawer").setAttribute("aria-hidden", "true");
  $("scrim").hidden = true;
}

function renderDrawer(d) {
  const e = { ...d, ...(pick(d, "event") || {}) };
  const sev = severityOf(e);
  $("d-title").textContent = e.cmdline || eventId(e);
  $("d-sub").textContent = `${e.org_id ? e.org_id + " / " : ""}${e.workload} · ${e.host || "?"} · ${fmtTime(e.ts)}`;
  clear($("d-body"),
    verdictSection(e, sev),
    section("Why it was flagged", reasonsList(listOf(pick(d, "reasons") ?? e.reasons ?? []))),
    section("Lineage", lineageView(e, pick(d, "lineage"))),
    section("Nearest known behaviours of this workload", knownList(listOf(pick(d, "nearest_known", "nearest", "known") || [], "hits", "items"), "None indexed yet (the sink indexes new behaviours every few seconds).")),
    section(`Usual arguments of ${programOf(e) || "this program"}`, knownList(usualArgs(d), "No history for this program here yet.")),
    section("Details", detailsList(e)));
}

function section(title, body) {
  return h("section", { class: "d-section" }, h("h3", {}, title), body);
}

function verdictSection(e, sev) {
  const actions = h("div", { class: "verdict-actions" },
    h("button", { type: "button", class: "btn btn-expected", dataset: { label: "expected" }, onclick: () => sendFeedback(e, "expected") }, "✓ Expected"),
    h("button", { type: "button", class: "btn btn-malicious", dataset: { label: "malicious" }, onclick: () => sendFeedback(e, "malicious") }, "⚠ Malicious"),
    h("button", { type: "button", class: "btn btn-sm btn-ghost", title: "Search behaviours like this one", onclick: () => searchLike(e) }, "More like this"));
  const note = h("input", { id: "feedback-note", class: "feedback-note", placeholder: "Note for the record (optional)" });
  return h("section", { class: "d-section" },
    h("div", { class: "verdict" },
      h("span", { class: `big-score score-${sev}` }, fmtScore(e.score)),
      h("div", {}, badge(sev), h("div", { class: "muted" }, e.learning ? "workload still learning" : (e.model || "anomaly score"))),
      actions),
    note, h("div", { id: "feedback-status", class: "feedback-done" }));
}

// "program's argument template: new here (+0.42)" → text and contribution.
function parseReason(r) {
  const text = typeof r === "string" ? r : pick(r, "text", "reason", "description") || JSON.stringify(r);
  const m = /\(\+(\d*\.?\d+)\)\s*$/.exec(text);
  const weight = m ? Number(m[1]) : Number(pick(r, "contribution", "weight"));
  return { text: m ? text.slice(0, m.index).trim() : text, weight: Number.isFinite(weight) ? weight : null };
}

function reasonsList(reasons) {
  if (!reasons.length) return h("p", { class: "muted" }, "No reasons recorded.");
  return h("ul", { class: "reasons" }, reasons.map(parseReason).map((r) =>
    h("li", { class: "reason" }, h("span", {}, r.text),
      r.weight === null ? h("span") : h("span", { class: "reason-weight", title: "contribution to the score" },
        h("span", { class: "mono" }, `+${r.weight.toFixed(2)}`),
        h("div", { class: "reason-bar" }, h("span", { style: { width: `${Math.round(Math.min(1, r.weight) * 100)}%` } }))))));
}

// Ancestors come parent first (agent/ebpf.py); shown root first, ending at the event.
function lineageView(e, lineage) {
  let chain = listOf(pick(lineage, "ancestors") || e.ancestors || []).slice().reverse();
  const parentName = pick(lineage, "parent_process") || e.parent_process;
  if (!chain.length && parentName) chain = [parentName];
  const nodes = [...chain, programOf(e)].filter(Boolean);
  if (!nodes.length) return h("p", { class: "muted" }, "No lineage recorded.");
  const parts = [];
  nodes.forEach((n, i) => {
    if (i) parts.push(h("span", { class: "arrow" }, "→"));
    parts.push(h("span", { class: `node${i === nodes.length - 1 ? " self" : ""}` }, n));
  });
  const parent = pick(lineage, "parent");
  const children = listOf(pick(lineage, "children") || []);
  return h("div", {}, h("div", { class: "lineage" }, parts),
    parent ? relatedList("parent", [parent]) : null,
    children.length ? relatedList(`started ${children.length}`, children) : null);
}

// The parent's or children's stored events, each opening its own drawer.
function relatedList(title, events) {
  return h("div", { class: "related" }, h("div", { class: "related-title" }, title),
    h("ul", { class: "known" }, events.map((r) => {
      const sev = severityOf(r);
      return h("li", { class: "clickable", ...opens(() => openDrawer(eventId(r), r)) },
        h("span", {}, r.cmdline || programOf(r)), h("span", { class: `n score-${sev}` }, `${fmtScore(r.score)} · pid ${r.pid}`));
    })));
}

function usualArgs(d) {
  const raw = pick(d, "usual_arguments", "usual_args", "program_args", "usual");
  return listOf(raw || [], "args", "items", "templates");
}

function knownList(items, emptyText) {
  if (!items.length) return h("p", { class: "muted" }, emptyText);
  return h("ul", { class: "known" }, items.slice(0, 8).map((k) => {
    if (typeof k === "string") return h("li", {}, h("span", {}, k));
    const text = pick(k, "exemplar", "cmdline", "template", "args", "text") || JSON.stringify(k);
    const n = pick(k, "count", "n", "episodes");
    const sim = pick(k, "similarity");
    const tail = [n !== undefined ? `×${fmtNum(n)}` : "", sim !== undefined ? `sim ${Number(sim).toFixed(2)}` : ""].filter(Boolean).join(" · ");
    return h("li", {}, h("span", {}, text), h("span", { class: "n" }, tail));
  }));
}

function detailsList(e) {
  const rows = [
    ["event id", eventId(e)], ["user", e.user !== undefined ? `${e.user ?? ""} (uid ${e.uid})` : null],
    ["parent", e.parent_process], ["exe", e.exe], ["pid / ppid", e.pid !== undefined ? `${e.pid} / ${e.ppid}` : null],
    ["remote", e.remote_ip ? `${e.remote_ip}:${e.remote_port ?? ""}` : null], ["container", e.container_id],
    ["exec id", e.exec_id], ["source", e.source], ["model", e.model],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  return h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

async function sendFeedback(e, label) {
  const status = $("feedback-status");
  const buttons = document.querySelectorAll(".verdict-actions button[data-label]");
  buttons.forEach((b) => { b.disabled = true; });
  status.className = "feedback-done muted";
  status.textContent = "sending…";
  try {
    const note = ($("feedback-note") || {}).value || "";
    await api("/api/feedback", { method: "POST", body: { event_id: eventId(e), label, note } });
    state.verdicts[eventId(e)] = label;
    refreshAlerts();
    status.className = "feedback-done";
    status.textContent = label === "expected"
      ? "Marked expected — the workload learns this behaviour; its next runs score lower."
      : "Marked malicious — the behaviour stays flagged.";
    toast(`Feedback sent: ${label}`);
  } catch (err) {
    buttons.forEach((b) => { b.disabled = false; });
    status.className = "feedback-done form-error";
    if (err.status !== 401) status.textContent = `Not sent: ${err.message}`;
  }
}

/* ---------------------------------------------------------------- wiring */

function wire() {
  $("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("token-input").value); });
  $("logout").addEventListener("click", () => signOut(""));
  $("search-form").addEventListener("submit", runSearch);
  $("search-close").addEventListener("click", closeSearch);
  $("filters").addEventListener("input", onFilterInput);
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("filters-clear").addEventListener("click", clearFilters);
  $("more").addEventListener("click", loadOlder);
  $("all-workloads").addEventListener("click", () => selectWorkload(null));
  $("thresholds").addEventListener("submit", saveThresholds);
  $("th-reset").addEventListener("click", resetThresholds);
  $("d-close").addEventListener("click", closeDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", onKey);
}

function onKey(ev) {
  if (ev.key === "Escape") closeDrawer();
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement && document.activeElement.tagName);
  if (ev.key === "/" && !typing) {
    ev.preventDefault();
    $("search-input").focus();
  }
}

function main() {
  wire();
  if (state.token) signIn(state.token);
  else showLogin("");
}

main();
