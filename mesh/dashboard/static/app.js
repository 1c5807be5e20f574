// fogmesh dashboard: hash-routed pages over /v1, live through one streamed snapshot a second.
// Hand-written, no dependencies; charts.js (loaded first) draws the charts, as in the report. The token lives in sessionStorage (this tab only) and is sent
// in the Authorization header, the stream included (fetch, not EventSource, which cannot).
"use strict";

const TOKEN_KEY = "fogmesh.token";
const state = { token: null, who: null, snap: null, stream: null, lastAt: 0, page: null,
  detail: null, runs: null, runsAt: 0, versions: {}, problem: null };

// ---------------------------------------------------------------- helpers

function ms(v) { return v == null ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(1) + " ms"; }
function pct(v) { return v == null ? "–" : v.toFixed(0) + " %"; }
function ago(seconds) {
  if (seconds == null) return "–";
  if (seconds < 1) return "just now";
  if (seconds < 90) return seconds.toFixed(0) + " s ago";
  if (seconds < 5400) return (seconds / 60).toFixed(0) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}
function clock(unix) { return unix ? new Date(unix * 1000).toLocaleTimeString() : "–"; }
function short(node) {
  const s = String(node ?? "–");
  return s.length > 16 && /^[0-9a-f]+$/.test(s) ? s.slice(0, 8) + "…" : s;
}
function tier(t) { return t ? `<span class="tier ${esc(t)}">${esc(t)}</span>` : ""; }
function healthPill(h) {
  const cls = h === "online" || h === "alive" || h === "serving" || h === "done" || h === "running" ? "ok"
    : h === "stale" || h === "restoring" || h === "starting" || h === "ready" || h === "switched"
      || h === "draining" || h === "drained" || h === "planned" ? "warn"
    : h === "unknown" || h === "finished" ? "" : "bad";
  return `<span class="pill ${cls}" data-health="${esc(h)}">${esc(h)}</span>`;
}
function bar(fraction, cls, marker) {
  const w = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const m = marker == null ? "" : `<b style="left:${Math.min(100, marker * 100)}%"></b>`;
  return `<span class="bar ${cls || ""}"><i style="width:${w}%"></i>${m}</span>`;
}
function usage(p) {
  if (p == null) return '<span class="muted">–</span>';
  return bar(p / 100, p > 90 ? "bad" : p > 70 ? "warn" : "ok") + pct(p);
}
function $(sel) { return document.querySelector(sel); }
// A live chart's x axis: the last minute at least, up to the snapshot, in clock time.
function live() {
  return { t1: state.snap?.at || undefined, minSpan: 60, xLabel: clock,
    empty: "No requests in the last ten minutes." };
}
function can(scope) {
  const order = ["read", "invoke", "admin"];
  return (state.who?.scopes || []).some((s) => order.indexOf(s) >= order.indexOf(scope));
}

// ---------------------------------------------------------------- API

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + state.token, ...(options.headers || {}) };
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) { signOut("Your token was refused (expired or revoked): sign in again."); throw new Error("401"); }
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(body?.error || `${res.status} ${res.statusText}`);
  return body;
}

async function openStream() {
  if (state.stream) return;
  const control = new AbortController();
  state.stream = control;
  try {
    const res = await fetch("/v1/dashboard/events", {
      headers: { Authorization: "Bearer " + state.token, Accept: "text/event-stream" },
      signal: control.signal,
    });
    if (res.status === 401) { signOut("Your token was refused: sign in again."); return; }
    if (!res.ok || !res.body) throw new Error(`stream: ${res.status}`);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        onEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (err) {
    if (control.signal.aborted) return;
    setLive(false, "reconnecting");
  } finally {
    if (state.stream === control) state.stream = null;
  }
  if (!control.signal.aborted && state.token) setTimeout(openStream, 1000);
}

function onEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (kind === "snapshot") {
    state.snap = payload;
    state.lastAt = Date.now();
    state.problem = null;
    setLive(true);
    refresh();
  } else if (kind === "problem") {
    state.problem = payload.error;
    refresh();
  } else if (kind === "end" && /expired|revoked/.test(payload.reason || "")) {
    signOut("Your token " + payload.reason.replace(/^token \S+ of /, "for ") + ": sign in again.");
  }
}

function setLive(on, text) {
  const live = $("#live");
  if (!live) return;
  live.className = "live " + (on ? "on" : "off");
  $("#live-text").textContent = text || "live";
}

// ---------------------------------------------------------------- sign-in

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.who = null;
  if (state.stream) { state.stream.abort(); state.stream = null; }
  renderSignIn(message);
}

function renderSignIn(message) {
  document.body.dataset.page = "signin";
  $("#top").hidden = true;
  $("#main").innerHTML = `
    <form class="signin" id="signin-form" autocomplete="off">
      <h1><img src="/ui/static/icon.svg" alt="" width="28" height="28">fogmesh</h1>
      <p class="muted">Sign in with a bearer token of scope <b>read</b> or more:
        <span class="mono">mesh tokens create you --scope read</span>, or run
        <span class="mono">mesh ui</span>, which opens this page signed in.</p>
      <label for="token">Token</label>
      <input id="token" name="token" type="password" placeholder="mesh_…" required>
      <div class="error" id="signin-error">${esc(message || "")}</div>
      <button type="submit" id="signin-submit">Sign in</button>
    </form>`;
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (await signIn(token)) route();
    else $("#signin-error").textContent = "That token was refused: check it has scope read and has not expired.";
  });
}

async function signIn(token) {
  if (!token) return false;
  const res = await fetch("/v1/dashboard/whoami", { headers: { Authorization: "Bearer " + token } });
  if (!res.ok) return false;
  state.token = token;
  state.who = await res.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#top").hidden = false;
  const scopes = state.who.scopes.join(", ");
  $("#who").textContent = state.who.subject ? `${state.who.subject} · ${scopes}` : scopes;
  openStream();
  return true;
}

// ---------------------------------------------------------------- routing

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("/");
  state.page = { name: page || "overview", arg: decodeURIComponent(rest.join("/")) };
  state.detail = null;
  document.body.dataset.page = state.page.name;
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === state.page.name);
  }
  refresh(true);
}

let refreshing = false;
async function refresh(force) {
  if (!state.token || refreshing) return;
  refreshing = true;
  try {
    const page = state.page?.name || "overview";
    if (page === "module") await loadModule(state.page.arg);
    if (page === "runs" && (force || Date.now() - state.runsAt > 2000)) await loadRuns();
    render(page);
  } catch (err) {
    if (state.token) $("#main").innerHTML = `<div class="banner">${esc(err.message)}</div>`;
  } finally {
    refreshing = false;
  }
}

function render(page) {
  const main = $("#main");
  if (!state.snap && page !== "runs") { main.innerHTML = '<p class="muted">Waiting for the first snapshot…</p>'; return; }
  const problem = state.problem ? `<div class="banner">The last snapshot failed: ${esc(state.problem)}</div>` : "";
  const views = { overview: viewOverview, module: viewModule, agent: viewAgent, runs: viewRuns, scenario: viewScenario };
  const scenarioLink = document.querySelector('[data-nav="scenario"]');
  if (scenarioLink) scenarioLink.hidden = !state.snap?.scenario;
  const view = views[page] || (() => `<div class="banner">No page ${esc(page)}.</div>`);
  const focused = document.activeElement?.id;
  const caret = document.activeElement?.selectionStart;
  const open = [...main.querySelectorAll("details[open]")].map((d) => d.dataset.key);
  // Controls marked data-keep survive the re-render (a half-typed filter, a chosen option).
  const kept = new Map([...main.querySelectorAll("[data-keep]")].map((el) => [el.id, el]));
  main.innerHTML = problem + view();
  for (const el of main.querySelectorAll("[data-keep]")) {
    const old = kept.get(el.id);
    if (old && old.dataset.keep === el.dataset.keep) el.replaceWith(old);
  }
  for (const key of open) main.querySelector(`details[data-key="${CSS.escape(key || "")}"]`)?.setAttribute("open", "");
  if (focused && document.getElementById(focused)) {
    const el = document.getElementById(focused);
    el.focus();
    if (caret != null && el.setSelectionRange) el.setSelectionRange(caret, caret);
  }
  bindPage(page);
}

// ---------------------------------------------------------------- overview

function viewOverview() {
  const s = state.snap;
  const online = s.agents.filter((a) => a.health === "online").length;
  const missing = s.modules.filter((m) => m.observed && m.observed.p95_ms > m.slo_ms).length;
  const nodes = s.nodes.map((n) => `
    <tr data-node="${esc(n.name)}" class="${n.alive ? "" : "down"}">
      <td>${tier(n.tier)}</td><td class="mono" title="${esc(n.name)}">${esc(short(n.name))}</td>
      <td>${esc(n.site || "–")}</td><td>${healthPill(n.alive ? "alive" : "dead")}</td>
      <td>${usage(n.cpu_percent)}</td><td class="num">${n.memory_mb ? (n.memory_mb / 1024).toFixed(1) + " GiB free" : "–"}</td>
      <td class="num">${n.rtt_ms == null ? "–" : ms(n.rtt_ms)}</td><td class="muted">${n.alive ? "Ray GCS: alive" : "Ray GCS: dead"}</td></tr>`);
  const agents = s.agents.map((a) => `
    <tr data-agent="${esc(a.agent_id)}" data-health="${esc(a.health)}" class="${a.health === "online" ? "" : "down"}">
      <td>${tier("edge")}</td><td><a href="#/agent/${encodeURIComponent(a.agent_id)}">${esc(a.agent_id)}</a></td>
      <td>${esc(a.site || "–")}</td><td>${healthPill(a.health)}</td><td>${usage(a.cpu_percent)}</td>
      <td class="num">${pct(a.mem_percent)} used</td><td class="num">–</td>
      <td>${a.heartbeat_age_s == null ? "–" : "heartbeat " + ago(a.heartbeat_age_s)}</td></tr>`);
  const down = new Map([...s.agents.filter((a) => a.health !== "online").map((a) => [a.agent_id, a.health]),
    ...s.nodes.filter((n) => !n.alive).map((n) => [n.name, "dead"])]);
  const modules = s.modules.map((m) => {
    const o = m.observed || {};
    const ratio = o.p95_ms == null ? null : o.p95_ms / m.slo_ms;
    const cls = ratio == null ? "" : ratio > 1 ? "bad" : ratio > 0.8 ? "warn" : "ok";
    return `<tr data-module="${esc(m.module)}">
      <td><a href="#/module/${encodeURIComponent(m.module)}">${esc(m.module)}</a></td>
      <td class="mono">${esc(m.model || "")} ${esc(m.version)}</td><td>${tier(m.tier)}</td>
      <td class="mono" title="${esc(m.node)}">${esc(short(m.node))}${m.pin ? ' <span class="pill">pinned</span>' : ""}${
        down.has(m.node) ? ` ${healthPill(down.get(m.node))}` : ""}</td>
      <td>${ratio == null ? '<span class="muted">no traffic</span>' : bar(ratio / 1.5, cls, 1 / 1.5) + ms(o.p95_ms)}</td>
      <td class="num">${ms(m.slo_ms)}</td><td class="num">${o.rate_per_s == null ? "–" : o.rate_per_s.toFixed(1) + "/s"}</td>
      <td class="num">${m.error_rate == null ? "–" : (m.error_rate * 100).toFixed(1) + " %"}</td></tr>`;
  });
  return `
    <h1>Overview</h1><div class="sub">Where every module runs now and how each tier is doing · snapshot ${clock(s.at)}</div>
    <div class="grid cards">
      <div class="card"><div class="k">Ray nodes</div><div class="v">${s.nodes.filter((n) => n.alive).length}<small> / ${s.nodes.length} alive</small></div></div>
      <div class="card"><div class="k">Edge agents</div><div class="v">${online}<small> / ${s.agents.length} online</small></div></div>
      <div class="card"><div class="k">Modules</div><div class="v">${s.modules.length}<small> · ${missing} over SLO</small></div></div>
      <div class="card"><div class="k">Migrations</div><div class="v">${s.running.length}<small> running · ${s.migrations.length} recent</small></div></div>
    </div>
    <section class="panel"><h2>Modules</h2>${s.modules.length ? `<table><thead><tr><th>Module</th><th>Model</th><th>Tier</th><th>Runs on</th>
      <th>p95 (${s.window_s}s) vs SLO</th><th class="num">SLO</th><th class="num">Rate</th><th class="num">Errors</th></tr></thead>
      <tbody>${modules.join("")}</tbody></table>` : '<div class="empty">No module is served: <span class="mono">mesh modules deploy</span>.</div>'}</section>
    <section class="panel"><h2>Tiers and nodes</h2><table><thead><tr><th>Tier</th><th>Node</th><th>Site</th><th>Health</th><th>CPU</th>
      <th class="num">Memory</th><th class="num">RTT</th><th>Last heard</th></tr></thead>
      <tbody>${nodes.join("")}${agents.join("")}</tbody></table></section>
    <section class="panel"><h2>Recent migrations</h2>${migrationTable(s.migrations, true)}</section>
    <section class="panel" id="faults"><h2>Faults and recoveries</h2>${faultTable(s.faults || [])}</section>`;
}

function faultTable(rows) {
  if (!rows.length) return '<div class="empty">No node or agent has changed health since the control plane started.</div>';
  const body = rows.map((f) => `<tr data-fault="${esc(f.kind)}:${esc(f.name)}"><td class="num">${clock(f.at)}</td>
    <td>${f.kind === "agent" ? `<a href="#/agent/${encodeURIComponent(f.name)}">${esc(f.name)}</a>` : `<span class="mono" title="${esc(f.name)}">${esc(short(f.name))}</span>`}
      <span class="muted">${f.kind === "agent" ? "edge agent" : "Ray node"}</span></td>
    <td>${f.from ? healthPill(f.from) : ""}<span class="arrow">→</span>${healthPill(f.to)}</td></tr>`);
  return `<table><thead><tr><th class="num">At</th><th>What</th><th>Health</th></tr></thead><tbody>${body.join("")}</tbody></table>`;
}

function shortIds(text) { return String(text ?? "").replace(/\b([0-9a-f]{8})[0-9a-f]{24,}\b/g, "$1…"); }

function migrationTable(rows, withModule) {
  if (!rows.length) return '<div class="empty">No migration yet.</div>';
  const body = rows.map((r) => `
    <tr data-migration="${esc(r.id)}">
      <td class="num">${clock(r.decided_at)}</td>
      ${withModule ? `<td><a href="#/module/${encodeURIComponent(r.module)}">${esc(r.module)}</a></td>` : ""}
      <td class="nowrap">${tier(r.from_tier)} <span class="mono">${esc(short(r.from_node || "new"))}</span><span class="arrow">→</span>${tier(r.to_tier)} <span class="mono">${esc(short(r.to_node))}</span></td>
      <td>${esc(shortIds(r.reason))}${r.error ? `<div class="muted">${esc(r.error)}</div>` : ""}
        ${r.explanation ? `<details data-key="m-${esc(r.id)}"><summary>the engine's decision</summary><pre class="explain">${esc(r.explanation)}</pre></details>` : ""}</td>
      <td>${healthPill(r.status)}</td>
      <td class="num">${r.switch_s == null ? "–" : r.switch_s.toFixed(2) + " s"}</td>
      <td class="num">${r.lost ?? 0} / ${r.requests ?? 0}</td></tr>`);
  return `<table><thead><tr><th class="num">Decided</th>${withModule ? "<th>Module</th>" : ""}<th>Move</th><th>Reason</th>
    <th>Phase</th><th class="num">Switch</th><th class="num">Lost / answered</th></tr></thead><tbody>${body.join("")}</tbody></table>`;
}

// ---------------------------------------------------------------- module

async function loadModule(name) {
  state.detail = await api("/v1/dashboard/modules/" + encodeURIComponent(name));
  const model = state.detail.module.model;
  const cached = state.versions[model];
  if (model && (!cached || Date.now() - cached.at > 5000)) {
    try { state.versions[model] = { at: Date.now(), data: await api("/v1/models/" + encodeURIComponent(model)) }; }
    catch (err) { state.versions[model] = { at: Date.now(), data: null, error: err.message }; }
  }
}

function viewModule() {
  const d = state.detail;
  if (!d) return '<p class="muted">Loading…</p>';
  const m = d.module, o = m.observed || {};
  const nodes = [...new Set(d.latency.map((s) => s.node))];
  const color = (node) => COLORS[nodes.indexOf(node) % COLORS.length];
  const latency = nodes.flatMap((node) => {
    const rows = d.latency.filter((s) => s.node === node);
    return [
      { color: color(node), points: rows.filter((s) => s.p95_ms != null).map((s) => [s.at, s.p95_ms]) },
      { color: color(node), dash: true, width: 1.5, points: rows.filter((s) => s.p50_ms != null).map((s) => [s.at, s.p50_ms]) },
    ];
  });
  const marks = d.placements.filter((r) => r.switched_at).map((r) => ({ at: r.switched_at, label: "→ " + short(r.to_node) }));
  const rate = nodes.map((node) => ({ color: color(node),
    points: d.latency.filter((s) => s.node === node).map((s) => [s.at, s.rate_per_s]) }));
  const legend = nodes.map((n) => `<span><i style="background:${color(n)}"></i>${esc(short(n))}</span>`).join("")
    + '<span><i class="dash"></i>SLO</span><span class="muted">solid p95 · dashed p50</span>';
  const v = state.versions[m.model];
  const versions = v?.data ? `<table><thead><tr><th>Version</th><th>Stage</th><th>Code</th><th>Metric</th></tr></thead><tbody>${
    v.data.versions.slice().reverse().map((r) => `<tr><td class="mono">${esc(r.version)}${r.version === m.version ? ' <span class="pill ok">serving</span>' : ""}</td>
      <td>${esc(r.stage)}</td><td class="mono">${esc(r.code_version)}</td><td class="mono">${r.metric ? esc(`${r.metric.name} ${r.metric.value}`) : "–"}</td></tr>`).join("")
  }</tbody></table>${v.data.history?.length ? `<details data-key="stages"><summary>promote / rollback history</summary><pre class="explain">${
    esc(v.data.history.map((h) => `${clock(h.at)}  ${h.action} ${h.version}${h.previous ? ` (was ${h.previous})` : ""}`).join("\n"))}</pre></details>` : ""}`
    : `<div class="empty">${esc(v?.error || "No registry model recorded for this module.")}</div>`;
  const targets = state.snap ? [...state.snap.nodes.map((n) => [n.name, `${n.tier} · ${short(n.name)}`]),
    ...state.snap.agents.map((a) => [a.agent_id, `edge · ${a.agent_id}`])] : [];
  const keep = esc(m.module + "|" + (m.pin ? "pinned" : "") + "|" + targets.map(([id]) => id).join(","));
  const admin = can("admin") ? `<section class="panel admin-actions"><h2>Operator actions</h2><div class="admin" id="admin-box" data-keep="${keep}">
      <label for="pin-node">Pin to</label><select id="pin-node">${targets.map(([id, label]) =>
        `<option value="${esc(id)}">${esc(label)}</option>`).join("")}</select>
      <button type="button" id="pin">Pin here</button>
      ${m.pin ? '<button type="button" class="danger" id="unpin">Unpin: let the engine place it</button>' : ""}
      <span class="muted" id="admin-result"></span></div></section>` : "";
  return `
    <h1>${esc(m.module)} ${tier(m.tier)}</h1>
    <div class="sub"><span class="mono">${esc(m.model || "")} ${esc(m.version)}</span> on <span class="mono" title="${esc(m.node)}">${esc(short(m.node))}</span>
      · epoch ${esc(m.epoch)} · SLO p95 ${ms(m.slo_ms)} · tiers ${esc((m.tiers || []).join(", "))}${m.pin ? ` · pinned to ${esc(short(m.pin.node || m.pin.tier))}` : ""}</div>
    <div class="grid cards">
      <div class="card"><div class="k">p95 now</div><div class="v">${ms(o.p95_ms)}</div></div>
      <div class="card"><div class="k">p50 now</div><div class="v">${ms(o.p50_ms)}</div></div>
      <div class="card"><div class="k">Requests</div><div class="v">${o.rate_per_s == null ? "–" : o.rate_per_s.toFixed(1)}<small> /s</small></div></div>
      <div class="card"><div class="k">Errors</div><div class="v">${m.error_rate == null ? "–" : (m.error_rate * 100).toFixed(1) + " %"}</div></div>
    </div>
    ${admin}
    <div class="grid two">
      <section class="panel chart"><h2>Latency per node <span class="muted">(ms, ${esc(state.snap?.window_s ?? 5)} s windows)</span></h2>${chart(latency, { ...live(), slo: m.slo_ms, unit: "ms", marks })}<div class="legend">${legend}</div></section>
      <section class="panel chart"><h2>Request rate per node <span class="muted">(requests/s)</span></h2>${chart(rate, { ...live(), unit: "req/s", marks })}</section>
    </div>
    ${m.decision ? `<section class="panel"><h2>The engine's current decision</h2><pre class="explain">${esc(m.decision)}</pre></section>` : ""}
    <section class="panel" id="placement-history"><h2>Placement history</h2>${migrationTable(d.placements, false)}</section>
    <section class="panel"><h2>Versions</h2>${versions}</section>`;
}

// ---------------------------------------------------------------- agent

function viewAgent() {
  const a = state.snap.agents.find((x) => x.agent_id === state.page.arg);
  if (!a) return `<div class="banner">No agent ${esc(state.page.arg)} is known to the broker.</div>`;
  const outbox = a.outbox || {};
  const installed = a.installed.map((m) => `<tr><td>${esc(m.name)}</td><td class="mono">${esc(m.version)}</td>
    <td>${esc(m.route_mode)}</td><td class="num">${esc(m.route_epoch)}</td><td>${esc(m.provider || "–")}</td>
    <td class="num">${a.modules[m.name] ? a.modules[m.name].requests : "–"}</td><td class="num">${a.modules[m.name] ? a.modules[m.name].errors : "–"}</td></tr>`);
  const beats = a.heartbeats.slice().reverse().map((h) => `<tr><td class="num">${clock(h.received_at)}</td><td class="num">${esc(h.seq)}</td>
    <td>${usage(h.cpu_percent)}</td><td class="num">${pct(h.mem_percent)}</td><td class="num">${esc(h.outbox_depth)}</td></tr>`);
  const inSync = a.desired_version == null || a.desired_version === a.observed_version;
  return `
    <h1 data-agent="${esc(a.agent_id)}" data-health="${esc(a.health)}">${esc(a.agent_id)} ${healthPill(a.health)}</h1>
    <div class="sub">edge agent at site ${esc(a.site || "–")} · ${esc(a.agent_version || "")} · last heartbeat ${ago(a.heartbeat_age_s)}
      ${a.period_s ? `(every ${a.period_s} s)` : ""}${a.reason ? ` · ${esc(a.reason)}` : ""}</div>
    <div class="grid cards">
      <div class="card"><div class="k">CPU</div><div class="v">${pct(a.cpu_percent)}</div></div>
      <div class="card"><div class="k">Memory</div><div class="v">${pct(a.mem_percent)}<small> · agent ${a.rss_mb == null ? "–" : a.rss_mb.toFixed(0) + " MB"}</small></div></div>
      <div class="card"><div class="k">Desired / observed</div><div class="v">${esc(a.desired_version ?? "–")} / ${esc(a.observed_version ?? "–")}
        <small>${inSync ? "in sync" : "catching up"}</small></div></div>
      <div class="card"><div class="k">Outbox</div><div class="v">${esc(outbox.depth ?? "–")}<small> queued · ${esc(outbox.dropped ?? 0)} dropped${outbox.full ? " · disk full" : ""}</small></div></div>
    </div>
    <section class="panel"><h2>Installed models</h2>${installed.length ? `<table><thead><tr><th>Module</th><th>Version</th><th>Route</th>
      <th class="num">Route epoch</th><th>Provider</th><th class="num">Requests</th><th class="num">Errors</th></tr></thead><tbody>${installed.join("")}</tbody></table>`
      : '<div class="empty">Nothing installed.</div>'}
      ${a.errors.length ? `<div class="banner">${a.errors.map((e) => `${esc(e.module)}: ${esc(e.code)} ${esc(e.message)}`).join("<br>")}</div>` : ""}</section>
    <div class="grid two">
      <section class="panel"><h2>Host over the last heartbeats <span class="muted">(%)</span></h2><div class="chart">${chart([
          { color: COLORS[0], points: a.heartbeats.map((h) => [h.received_at, h.cpu_percent]) },
          { color: COLORS[1], points: a.heartbeats.map((h) => [h.received_at, h.mem_percent]) },
        ], { ...live(), unit: "%", height: 150, empty: "No heartbeat yet." })}</div><div class="legend"><span><i style="background:${COLORS[0]}"></i>CPU</span>
          <span><i style="background:${COLORS[1]}"></i>memory</span></div>
        <h2 style="margin-top:14px">Pipelines</h2>${a.pipelines.length ? a.pipelines.map((p) => `<div class="mono">${esc(p)}</div>`).join("") : '<div class="empty">None.</div>'}
        ${a.faults && (a.faults.quarantined.length || Object.keys(a.faults.thread_failures).length) ? `<h2 style="margin-top:14px">Faults</h2><pre class="explain">${esc(JSON.stringify(a.faults, null, 1))}</pre>` : ""}</section>
      <section class="panel"><h2>Last heartbeats</h2>${beats.length ? `<table><thead><tr><th class="num">At</th><th class="num">Seq</th><th>CPU</th>
        <th class="num">Memory</th><th class="num">Outbox</th></tr></thead><tbody>${beats.join("")}</tbody></table>` : '<div class="empty">None yet.</div>'}</section>
    </div>`;
}

// ---------------------------------------------------------------- scenario

function timeline(sc) {
  const W = 1180, L = 190, R = 16, rowH = 26;
  const ends = sc.planned.map((f) => (f.at_s || 0) + (f.duration_s || 0));
  const span = Math.max(sc.duration_s || 0, sc.sim_s || 0, ...ends, 1);
  const x = (t) => L + (t / span) * (W - L - R);
  const rows = sc.planned.map((f, i) => {
    const y = 22 + i * rowH;
    const label = `${f.kind}${f.target ? " · " + f.target : ""}`;
    const active = sc.sim_s >= f.at_s && (f.duration_s == null || sc.sim_s <= f.at_s + f.duration_s);
    const shape = f.duration_s ? `<rect x="${x(f.at_s)}" y="${y - 8}" width="${Math.max(3, x(f.at_s + f.duration_s) - x(f.at_s))}" height="16" rx="4"
        fill="${active ? "#d33a2c" : sc.sim_s > f.at_s ? "#e9a39c" : "#f3c9c4"}"/>`
      : `<path d="M${x(f.at_s)},${y - 8} l8,8 l-8,8 l-8,-8Z" fill="${sc.sim_s >= f.at_s ? "#d33a2c" : "#f3c9c4"}"/>`;
    return `<text x="${L - 10}" y="${y + 4}" text-anchor="end" font-size="13" fill="#17212b">${esc(label.length > 26 ? label.slice(0, 25) + "…" : label)}</text>${shape}`;
  });
  const H = 40 + Math.max(1, sc.planned.length) * rowH;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => `<line x1="${x(span * f)}" x2="${x(span * f)}" y1="8" y2="${H - 22}" stroke="#edf1f5"/>
    <text x="${x(span * f)}" y="${H - 6}" text-anchor="${f === 1 ? "end" : "middle"}" font-size="12" fill="#66727f">t=${(span * f).toFixed(0)} s</text>`);
  const now = `<line x1="${x(sc.sim_s)}" x2="${x(sc.sim_s)}" y1="4" y2="${H - 22}" stroke="#1769aa" stroke-width="2"/>
    <text x="${x(sc.sim_s) + 4}" y="14" font-size="12" fill="#1769aa">now</text>`;
  const none = sc.planned.length ? "" : `<text x="${L}" y="30" font-size="13" fill="#66727f">no fault planned</text>`;
  return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="fault timeline">${ticks.join("")}${rows.join("")}${none}${now}</svg>`;
}

function viewScenario() {
  const sc = state.snap.scenario;
  if (!sc) return '<h1>Scenario</h1><div class="empty">No scenario runs on this control plane: <span class="mono">mesh run FILE</span> or <span class="mono">mesh demo</span> shows one here.</div>';
  const numeric = Object.entries(sc.kpis).filter(([, v]) => typeof v === "number");
  const other = Object.entries(sc.kpis).filter(([, v]) => typeof v !== "number");
  const cards = numeric.map(([k, v], i) => `<div class="card" data-kpi="${esc(k)}"><div class="k">${esc(k.replace(/_/g, " "))}</div>
    <div class="v">${+v.toFixed(3)}</div>${sparkline(sc.kpi_history.map((h) => h[k]).filter((x) => typeof x === "number"), COLORS[i % COLORS.length])}</div>`);
  const progress = sc.duration_s ? Math.min(1, sc.sim_s / sc.duration_s) : null;
  const log = sc.log.slice().reverse().map((l) => `<tr><td class="num">t=${l.sim_s.toFixed(0)} s</td><td class="num muted">${clock(l.at)}</td><td>${esc(l.what)}</td></tr>`);
  return `
    <h1>Scenario · ${esc(sc.name)} ${healthPill(sc.running ? "running" : "finished")}</h1>
    <div class="sub">sim time t=${sc.sim_s.toFixed(0)} s${sc.duration_s ? ` of ${sc.duration_s.toFixed(0)} s` : ""} · wall ${sc.wall_s.toFixed(0)} s
      ${sc.wall_s > 0 ? ` · ×${(sc.sim_s / sc.wall_s).toFixed(1)} real time` : ""}</div>
    ${progress == null ? "" : `<div class="progress">${bar(progress, "", null)}<span class="muted">${(progress * 100).toFixed(0)} %</span></div>`}
    <div class="grid cards">${cards.join("") || '<div class="card"><div class="k">KPIs</div><div class="v"><small>none reported yet</small></div></div>'}</div>
    ${other.length ? `<section class="panel"><h2>Other KPIs</h2><dl class="kv">${other.map(([k, v]) => `<dt>${esc(k)}</dt><dd class="mono">${esc(v)}</dd>`).join("")}</dl></section>` : ""}
    <section class="panel chart" id="fault-timeline"><h2>Faults on the timeline <span class="muted">(sim seconds)</span></h2>${timeline(sc)}</section>
    <section class="panel"><h2>What happened</h2>${log.length ? `<table><thead><tr><th class="num">Sim time</th><th class="num">At</th><th>Fault, migration or version change</th></tr></thead><tbody>${log.join("")}</tbody></table>` : '<div class="empty">Nothing has happened yet: no fault, no migration.</div>'}</section>`;
}

// ---------------------------------------------------------------- runs

const filters = { function: "", status: "", tier: "" };
async function loadRuns() {
  const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  state.runs = await api("/v1/dashboard/runs?" + q.toString());
  state.runsAt = Date.now();
}

function viewRuns() {
  const select = (id, values) => `<select id="${id}"><option value="">any ${id.replace("f-", "")}</option>${
    values.map((v) => `<option value="${v}" ${filters[id.slice(2)] === v ? "selected" : ""}>${v}</option>`).join("")}</select>`;
  const rows = (state.runs || []).map((r) => `<tr data-run="${esc(r.id)}"><td class="num">${clock(r.started_at)}</td>
    <td>${esc(r.function)}</td><td class="muted">${esc(r.kind)}</td><td>${tier(r.tier)}</td>
    <td class="mono" title="${esc(r.node)}">${esc(short(r.node))}</td><td>${healthPill(r.status === "succeeded" ? "done" : r.status === "running" ? "starting" : r.status)}</td>
    <td class="num">${r.duration_s == null ? "–" : r.duration_s < 1 ? (r.duration_s * 1000).toFixed(0) + " ms" : r.duration_s.toFixed(2) + " s"}</td>
    <td class="mono muted">${esc(r.error || r.args || "")}</td></tr>`);
  return `<h1>Runs</h1><div class="sub">Function runs from the run store, newest first</div>
    <section class="panel"><div class="filters" id="runs-filters" data-keep="runs">
      <input id="f-function" placeholder="function" value="${esc(filters.function)}">
      ${select("f-status", ["running", "succeeded", "failed", "timed_out", "cancelled"])}
      ${select("f-tier", ["cloud", "fog", "edge"])}</div>
    ${rows.length ? `<table><thead><tr><th class="num">Started</th><th>Function</th><th>Kind</th><th>Tier</th><th>Node</th><th>Status</th>
      <th class="num">Duration</th><th>Arguments / error</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
      : '<div class="empty">No run matches. Runs appear here as <span class="mono">mesh invoke</span>, streams and jobs run.</div>'}</section>`;
}

// ---------------------------------------------------------------- events on a page

function bind(el, kind, handler) {
  if (!el || el.dataset.bound) return;  // a kept control has its listener already
  el.dataset.bound = "1";
  el.addEventListener(kind, handler);
}

function bindPage(page) {
  if (page === "runs") {
    for (const id of ["f-function", "f-status", "f-tier"]) {
      const el = document.getElementById(id);
      bind(el, id === "f-function" ? "input" : "change", () => {
        filters[id.slice(2)] = el.value.trim();
        state.runsAt = 0;
        refresh();
      });
    }
  }
  if (page === "module" && can("admin")) {
    const name = state.page.arg;
    const result = (text) => { const r = $("#admin-result"); if (r) r.textContent = text; };
    bind($("#pin"), "click", async () => {
      const node = $("#pin-node").value;
      try { await api(`/v1/placements/${encodeURIComponent(name)}/pin`, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ node }) });
        result(`pinned to ${node}: the engine moves it now`);
      } catch (err) { result(err.message); }
    });
    bind($("#unpin"), "click", async () => {
      try { await api(`/v1/placements/${encodeURIComponent(name)}/pin`, { method: "DELETE" }); result("unpinned"); }
      catch (err) { result(err.message); }
    });
  }
}

// ---------------------------------------------------------------- start

setInterval(() => {
  if (state.token && state.lastAt) {
    const age = (Date.now() - state.lastAt) / 1000;
    setLive(age < 3, age < 3 ? "live" : `last update ${age.toFixed(0)} s ago`);
  }
}, 1000);

// `mesh ui` hands the token over in the fragment (never sent to a server): keep it in this
// tab's sessionStorage and take it out of the address bar and the history.
function takeFragmentToken() {
  const fragment = location.hash.match(/^#token=([^&]+)/);
  if (!fragment) return false;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fragment[1]));
  history.replaceState(null, "", location.pathname + "#/overview");
  return true;
}

async function start() {
  if (state.stream) { state.stream.abort(); state.stream = null; }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && (await signIn(token))) route();
  else renderSignIn(token ? "Your token was refused (expired or revoked): sign in again." : "");
}

window.addEventListener("hashchange", () => {
  if (takeFragmentToken()) start();
  else if (state.token) route();
});
document.addEventListener("DOMContentLoaded", () => {
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));
  takeFragmentToken();
  start();
});
