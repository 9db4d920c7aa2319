// The dashboard: one EventSource for the state (pushed when it changes), fetch for history and actions.
// Everything shown is set with textContent: names and commands come from users' configs, never markup.
"use strict";

// `reap` shows an argv as a list, and what it could only describe (a stale file, "?") as a string.
const commandText = (command) => (Array.isArray(command) ? command.join(" ") : command);

const $ = (id) => document.getElementById(id);
let range = "hour";
let logSource = null;
let lastState = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function bytes(count) {
  const sign = count < 0 ? "-" : "";
  let value = Math.abs(count || 0);
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (value < 1024 || unit === "GiB") return sign + (unit === "B" ? value.toFixed(0) : value.toFixed(1)) + " " + unit;
    value /= 1024;
  }
  return sign + value + " B";
}

function since(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (!isFinite(seconds)) return "?";
  if (seconds < 90) return seconds + "s";
  if (seconds < 5400) return Math.round(seconds / 60) + "m";
  if (seconds < 172800) return Math.round(seconds / 3600) + "h";
  return Math.round(seconds / 86400) + "d";
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleString();
}

// ---- the state -------------------------------------------------------------------------------------

function render(state) {
  lastState = state;
  const health = state.health || { status: "starting", reasons: [] };
  $("health").textContent = health.status;
  $("health").dataset.status = health.status;
  $("reasons").textContent = health.reasons.join(" · ");
  const totals = state.totals || {};
  $("t-backends").textContent = totals.backends;
  $("t-sessions").textContent = totals.sessions;
  $("t-processes").textContent = totals.processes;
  $("t-memory").textContent = bytes(totals.memory_bytes);
  $("t-direct").textContent = bytes(totals.direct_bytes);
  $("t-saved").textContent = bytes(totals.saved_bytes);
  $("t-saved").classList.toggle("negative", totals.saved_bytes < 0);
  renderLimits(state.limits || {}, totals);
  renderServers(state.servers || []);
  renderOrphans(state.orphans || [], state.reaped || {});
  const serve = state.serve || {};
  $("footer").textContent = `serve pid ${serve.pid}, ${bytes(serve.memory_bytes)} PSS · sampled ${clock(state.taken_at)}`;
}

function renderLimits(limits, totals) {
  const alerts = limits.alerts || {};
  let text = `alerts: processes warn ${alerts.warn_processes} / critical ${alerts.critical_processes}, ` +
    `memory warn ${bytes(alerts.warn_memory)} / critical ${bytes(alerts.critical_memory)}`;
  const budget = limits.budget;
  if (budget) {
    const parts = [];
    if (budget.max_backends) parts.push(`${totals.backends} of ${budget.max_backends} backends`);
    if (budget.max_memory) parts.push(`${bytes(totals.memory_bytes)} of ${bytes(budget.max_memory)}`);
    text += ` · budget: ${parts.join(", ")}`;
  }
  if (limits.config_error) text += ` · config.toml ignored: ${limits.config_error}`;
  $("limits").textContent = text;
}

function renderServers(servers) {
  const body = document.querySelector("#servers tbody");
  body.replaceChildren(...servers.map(serverRow));
  $("no-servers").hidden = servers.length > 0;
}

function serverRow(server) {
  const row = el("tr");
  row.dataset.key = server.key;
  row.dataset.name = server.name;
  row.dataset.state = server.state;
  const name = el("td");
  name.append(el("strong", server.name), el("div", `${server.key.slice(0, 12)} · scope ${server.scope}`, "sub"));
  const sharing = el("td", null, "sharing");
  sharing.append(el("div", server.sharing), el("div", server.policy, "sub"));
  const sessions = el("td", null, "num");
  sessions.append(el("span", server.clients.length, "session-count"));
  const list = el("ul", null, "sessions");
  for (const client of server.clients) {
    list.append(el("li", `${client.client || "?"} · pid ${client.pid} · ${client.cwd || "?"} · ${since(client.attached_at)}`));
  }
  sessions.append(list);
  const errors = server.errors + server.internal_errors + server.spawn_failures + server.backend_write_failures;
  const errorCell = el("td", errors, "num");
  errorCell.title = `errors ${server.errors}, internal ${server.internal_errors}, spawn failures ${server.spawn_failures}, ` +
    `write failures ${server.backend_write_failures}, dropped ${server.dropped}, rejected ${server.rejected}` +
    (server.budget_refusals ? `, refused by the budget ${server.budget_refusals}` : "");
  const actions = el("td");
  const box = el("div", null, "actions");
  box.append(
    button("Stop", "danger", () => confirmAction(`Stop ${server.name}? Its ${server.clients.length} session(s) end.`, [],
      () => act(`/api/servers/${encodeURIComponent(server.key)}/stop`))),
    button("Restart", "", () => act(`/api/servers/${encodeURIComponent(server.key)}/restart`)),
    button("Log", "", () => openLog(server)),
  );
  actions.append(box);
  const state = el("td", server.state);
  if (server.last_error) state.append(el("div", server.last_error, "sub error")); // from brokers that report it
  row.append(
    name,
    state,
    sharing,
    sessions,
    el("td", `${server.backend_pid || "–"} (${server.processes} proc)`, "num"),
    el("td", bytes(server.memory_bytes), "num"),
    el("td", `${server.cpu_percent}%`, "num"),
    el("td", server.restarts, "num"),
    errorCell,
    actions,
  );
  return row;
}

function button(label, className, onClick) {
  const node = el("button", label, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function renderOrphans(orphans, reaped) {
  const last = reaped.last_at ? `, last ${clock(reaped.last_at)}` : "";
  $("reaped").textContent = `${orphans.length} found by the last scan · ${reaped.total || 0} reaped so far${last}`;
  $("orphans").replaceChildren(...orphans.map((o) => el("li", `${o.kind} · pid ${o.pid} · ${commandText(o.command)} — ${o.reason}`)));
}

function renderEvents(events) {
  $("events").replaceChildren(...events.map((event) => {
    const item = el("li");
    item.append(el("span", clock(event.at), "when"), el("span", event.text));
    return item;
  }));
}

// ---- actions ---------------------------------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

async function act(path) {
  notice(`working: ${path.split("/").slice(-2).join(" ")}…`);
  try {
    await post(path);
    notice("");
  } catch (error) {
    notice(String(error.message));
  }
}

function confirmAction(text, items, onConfirm) {
  $("confirm-text").textContent = text;
  $("confirm-list").replaceChildren(...items.map((item) => el("li", item)));
  const dialog = $("confirm");
  dialog.returnValue = "";
  dialog.onclose = () => { if (dialog.returnValue === "ok") onConfirm(); };
  dialog.showModal();
}

async function reap() {
  try {
    const dry = await post("/api/reap", { confirm: false });
    if (!dry.findings.length) {
      notice("nothing to reap");
      return;
    }
    const items = dry.findings.map((f) => `${f.action} pid ${f.pid}: ${commandText(f.command)} — ${f.reason}`);
    confirmAction(`Reap ${dry.findings.length}? This is the dry run:`, items, async () => {
      try {
        const done = await post("/api/reap", { confirm: true });
        notice(`reaped: ${done.findings.map((f) => `${f.pid} ${f.action}`).join(", ") || "nothing"}`);
      } catch (error) {
        notice(String(error.message));
      }
    });
  } catch (error) {
    notice(String(error.message));
  }
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// ---- the log tail ----------------------------------------------------------------------------------

function openLog(server) {
  if (logSource) logSource.close();
  $("log-panel").hidden = false;
  $("log-name").textContent = server.name;
  const pre = $("log-lines");
  pre.textContent = "";
  logSource = new EventSource(`/api/servers/${encodeURIComponent(server.key)}/log`);
  logSource.addEventListener("lines", (event) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(JSON.parse(event.data).join("\n") + "\n");
    if (pre.childNodes.length > 2000) pre.removeChild(pre.firstChild);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
}

function closeLog() {
  if (logSource) logSource.close();
  logSource = null;
  $("log-panel").hidden = true;
}

// ---- history ---------------------------------------------------------------------------------------

async function loadHistory() {
  const response = await fetch(`/api/history?range=${range}`, { credentials: "same-origin" });
  if (!response.ok) return;
  const history = await response.json();
  for (const [field, format] of [["memory_bytes", bytes], ["processes", String], ["sessions", String], ["saved_bytes", bytes]]) {
    drawChart($(`c-${field}`), history, field, format);
  }
  renderEvents(history.events);
}

function drawChart(svg, history, field, format) {
  const points = history.points;
  const span = history.to - history.from;
  const values = points.map((p) => p[field]);
  const top = Math.max(1, ...values);
  const bottom = Math.min(0, ...values);
  const x = (at) => ((at - history.from) / span) * 300;
  const y = (value) => 95 - ((value - bottom) / (top - bottom)) * 85;
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => `${x(p.at).toFixed(1)},${y(p[field]).toFixed(1)}`).join(" "));
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "9");
  const shown = points.length ? `max ${format(Math.max(...values))} · now ${format(values[values.length - 1])}` : "";
  label.textContent = points.length > 1 ? shown : "collecting samples (one every 30 s)";
  svg.replaceChildren(line, label);
}

// ---- live updates ----------------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    document.body.classList.remove("stale");
    $("connection").textContent = "live";
  });
  source.addEventListener("state", (event) => render(JSON.parse(event.data)));
  source.addEventListener("events", (event) => renderEvents(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    document.body.classList.add("stale");
    $("connection").textContent = "reconnecting…";
    if (source.readyState === EventSource.CLOSED) lost();
  });
}

async function lost() {
  // The stream was refused: serve restarted with a new token, or is gone. Say which; retry while gone.
  try {
    const response = await fetch("/api/health", { credentials: "same-origin" });
    if (response.status === 401) {
      $("connection").textContent = "serve restarted with a new token: run `mcpsingleton dashboard` to open it";
      return;
    }
    connect();
  } catch {
    $("connection").textContent = "serve is not running; retrying…";
    setTimeout(lost, 3000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("reap").addEventListener("click", reap);
  $("log-close").addEventListener("click", closeLog);
  for (const node of document.querySelectorAll(".ranges button")) {
    node.addEventListener("click", () => {
      range = node.dataset.range;
      for (const other of document.querySelectorAll(".ranges button")) other.classList.toggle("active", other === node);
      loadHistory();
    });
  }
  connect();
  loadHistory();
  setInterval(loadHistory, 60000);
  setInterval(() => { if (lastState) renderServers(lastState.servers || []); }, 30000); // the "since" column
});
