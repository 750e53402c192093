// The operator dashboard of labs-cleanup: no framework, nothing from another site. Everything it
// shows comes from the API, called with the operator token kept in sessionStorage (this tab only).
"use strict";

const TOKEN_KEY = "labs-cleanup.operator-token";
const $ = (selector) => document.querySelector(selector);

const state = {
  query: new URLSearchParams(), // the filters applied
  cursors: [null], // the cursor of each page seen so far; the last one is the current page
  next: null,
  open: null, // the lab shown in the detail panel
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** An API error, in words. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.message} (${this.status} ${this.code})`;
  }
}

async function api(method, path, body = undefined, extraHeaders = {}) {
  let response;
  const sent = token();
  const headers = { Authorization: `Bearer ${sent}`, ...extraHeaders };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network_error", `The worker could not be reached: ${e.message}`);
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // not JSON: described below
  }
  if (!response.ok) {
    const error = answer && answer.error;
    // Only the token this request carried is forgotten: a refusal still on its way for an
    // earlier token must not log out the one just entered.
    if (response.status === 401 && token() === sent) forget();
    throw new ApiError(
      response.status,
      error ? error.code : "unexpected_answer",
      error ? error.message : `The worker answered ${response.status} ${response.statusText}.`,
    );
  }
  return answer;
}

function say(text, kind = "error") {
  const box = $("#message");
  box.textContent = visible(text);
  box.className = kind;
  box.hidden = !text;
}

function forget(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#forget").hidden = true;
  $("#login").hidden = false;
  $("#token").value = "";
  if (why) say(why);
}

function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

/**
 * Text from the API made safe to look at: control characters (Cc), format characters (Cf: bidi
 * overrides such as U+202E, zero-width characters) and U+2028/U+2029 shown as `\u{202e}`, the
 * way the worker's log shows them. An id, a `vm.name` or a backend's error may hold any of them.
 */
const UNSAFE = /[\p{Cc}\p{Cf}\u2028\u2029]/gu;
function visible(text) {
  return String(text ?? "").replace(UNSAFE, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(visible(child)));
  }
  return node;
}

function badge(status, stuck) {
  const span = el("span", { class: `badge ${status}`, "data-status": status }, status.replace("_", " "));
  if (!stuck) return span;
  return el("span", {}, span, " ", el("span", { class: "badge stuck", "data-stuck": "true" }, "stuck"));
}

async function loadStats() {
  const s = await api("GET", "/api/v1/labs/stats");
  const cards = [
    ["Scheduled", s.by_status.scheduled],
    ["Stopped", s.by_status.stopped],
    ["Cleaning up", s.by_status.cleaning_up],
    ["Retrying", s.by_status.retrying],
    ["Completed", s.by_status.completed],
    ["Stuck", s.stuck, s.stuck > 0 ? "alert" : ""],
    ["VMs still to delete", s.vms_pending],
    ["VMs stopped, kept", s.vms_stopped],
    ["Oldest pending expiry", s.oldest_pending_expiry ? time(s.oldest_pending_expiry) : "none", "date"],
    ["VMs already gone (404)", s.vms_already_gone],
  ];
  // A secret rotation left half done: each `_PREVIOUS` secret still set, in the worker's words.
  const rotations = s.rotations || [];
  $("#rotations").replaceChildren(...rotations.map((r) => el("p", { "data-setting": r.setting }, r.notice)));
  $("#rotations").hidden = rotations.length === 0;
  $("#stats").replaceChildren(
    ...cards.map(([label, value, kind]) =>
      el("div", { class: `card ${kind || ""}` }, el("div", { class: "value" }, value), el("div", { class: "label" }, label))),
  );
  const r = s.reconcile;
  const line = r
    ? `Last reconciliation of the backend's inventory (${r.source}${r.act ? "" : ", dry run"}) ${time(r.at)}: ` +
      `${r.tracked} tracked, ${r.overdue} overdue, ${r.finished} finished yet running, ${r.unknown} unknown; ${r.scheduled} scheduled.`
    : "No reconciliation of the backend's inventory yet.";
  $("#reconcile").textContent = visible(line);
  $("#reconcile").dataset.reconcile = r ? r.source : "";
  const lag = s.cleanup_lag_seconds;
  $("#levels").textContent = lag
    ? `Last 24 hours: ${s.completed_24h} labs completed; VMs outlived their labs by ${seconds(lag.p50)} at the median, ${seconds(lag.p95)} at p95, ${seconds(lag.p99)} at p99, ${seconds(lag.max)} at most; ${s.overdue_vms} VMs overdue now.`
    : `Last 24 hours: no lab completed; ${s.overdue_vms} VMs overdue now.`;
  drawPlots(s.hourly);
}

/** Seconds, short: 0.4 s, 12 s, 3.5 min, 2.1 h. */
function seconds(n) {
  if (n < 10) return `${n.toFixed(1)} s`;
  if (n < 120) return `${Math.round(n)} s`;
  if (n < 7200) return `${(n / 60).toFixed(1)} min`;
  return `${(n / 3600).toFixed(1)} h`;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

/**
 * One plot of the last 24 hours: bars (`bars`, left axis) and a line (`line`, right axis), one
 * point per hour. Drawn with the page's own SVG, no library.
 */
function plot(id, title, hourly, bars, line) {
  const W = 560, H = 204, L = 44, R = 52, T = 50, B = 26;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, id });
  root.append(svg("text", { x: L, y: 16, class: "plot-title" }, title));
  const n = hourly.length || 1;
  const step = (W - L - R) / n;
  const maxBar = Math.max(1, ...hourly.map((h) => h[bars.key] || 0));
  const maxLine = Math.max(1, ...hourly.map((h) => h[line.key] || 0));
  const y = (v, max) => T + (H - T - B) * (1 - v / max);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("text", { x: L - 6, y: T + 4, class: "tick", "text-anchor": "end" }, String(maxBar)));
  root.append(svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, "0"));
  root.append(svg("text", { x: W - R + 6, y: T + 4, class: "tick line-tick" }, line.format(maxLine)));
  hourly.forEach((h, i) => {
    const v = h[bars.key] || 0;
    if (v > 0) {
      root.append(svg("rect", {
        x: L + i * step + 1, y: y(v, maxBar), width: Math.max(1, step - 2), height: H - B - y(v, maxBar),
        class: "bar", "data-hour": h.hour, "data-value": v,
      }));
    }
    if (i % 6 === 0) {
      const d = new Date(h.hour);
      root.append(svg("text", { x: L + i * step, y: H - 8, class: "tick" },
        d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })));
    }
  });
  const points = hourly
    .map((h, i) => [h[line.key], i])
    .filter(([v]) => v !== null && v !== undefined)
    .map(([v, i]) => `${(L + (i + 0.5) * step).toFixed(1)},${y(v, maxLine).toFixed(1)}`);
  if (points.length) root.append(svg("polyline", { points: points.join(" "), class: "line" }));
  root.append(svg("text", { x: L, y: 34, class: "tick plot-legend" },
    bars.key === line.key ? `bars: ${bars.label}` : `bars: ${bars.label} · line: ${line.label}`));
  return root;
}

function drawPlots(hourly) {
  if (!hourly) return;
  $("#plots").replaceChildren(
    plot("plot-completed", "Labs completed per hour, and the p95 lag", hourly,
      { key: "completed", label: "labs completed" },
      { key: "p95_lag_seconds", label: "p95 lag", format: seconds }),
    plot("plot-backlog", "The backlog: VMs past their lab's end, not yet deleted", hourly,
      { key: "vms_pending", label: "VMs pending" },
      { key: "vms_pending", label: "VMs pending", format: (v) => String(Math.round(v)) }),
  );
}

async function loadLabs() {
  const query = new URLSearchParams(state.query);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) query.set("cursor", cursor);
  const page = await api("GET", `/api/v1/labs/sessions?${query}`);
  state.next = page.next_cursor;
  const rows = page.sessions.map((lab) =>
    el(
      "tr",
      { "data-lab": lab.lab_request_id, "data-origin": lab.origin },
      el("td", {}, el("button", { type: "button", class: "link", "data-open": lab.lab_request_id }, lab.lab_request_id),
        el("div", { class: "muted" }, `${lab.lab_type === "multi_node" ? "multi-node" : "single VM"}, ${lab.vm_count} VM${lab.vm_count === 1 ? "" : "s"}${lab.origin === "inventory" ? ", orphan" : ""}`)),
      el("td", {}, lab.user_id),
      el("td", {}, badge(lab.status, lab.stuck)),
      el("td", { "data-end-reason": lab.end_reason || "" }, REASONS[lab.end_reason] || "—"),
      el("td", { class: "num" }, lab.pending_count),
      el("td", { class: "num" }, lab.attempts),
      el("td", {}, time(lab.expires_at)),
      el("td", {}, time(lab.next_attempt_at)),
      el("td", { class: "error-text" }, lab.last_error || ""),
    ));
  $("#labs tbody").replaceChildren(...rows);
  $("#empty").hidden = rows.length > 0;
  $("#prev").disabled = state.cursors.length <= 1;
  $("#next").disabled = !state.next;
  $("#page").textContent = `page ${state.cursors.length}`;
}

/** An error in words; a refused token says what to do about it. */
function explain(e) {
  return e.status === 401 ? `The token was refused: ${e}. Enter the operator token again.` : String(e);
}

async function refresh() {
  try {
    await Promise.all([loadStats(), loadLabs()]);
    if (state.open) await openLab(state.open, false);
  } catch (e) {
    say(explain(e));
  }
}

function list(title, items) {
  return el("div", {}, el("h3", {}, title), items.length ? el("ul", {}, ...items.map((i) => el("li", {}, i))) : el("p", { class: "muted" }, "none"));
}

/** Why a lab ended, in words. */
const REASONS = {
  expired: "expired",
  idle: "idle",
  ended: "ended by the student",
  operator: "ended by an operator",
  orphan: "orphan",
};

/** One event of the timeline, in words. */
function describe(e) {
  switch (e.type) {
    case "created": return "created";
    case "extended": return `extended by ${e.by === "operator" ? "an operator" : "the API"}: expiry ${time(e.from)} → ${time(e.to)}`;
    case "warned": return `warned: ${e.minutes_left} minute${e.minutes_left === 1 ? "" : "s"} left`;
    case "idle_warned": return `idle warning: ends in ${e.minutes_left} minute${e.minutes_left === 1 ? "" : "s"} without activity`;
    case "activity": return "latest activity";
    case "ended": return `ended: ${REASONS[e.reason] || e.reason}`;
    case "attempt": {
      const vms = e.vms.map((v) => `${v.id} ${v.result === "failed" ? `failed (${v.status ?? v.error})` : v.result.replace("_", " ")}`);
      if (e.not_tried) vms.push(`${e.not_tried} not tried (backend overloaded)`);
      return `attempt ${e.number} (${e.duration_ms} ms): ${vms.join(", ") || "nothing to delete"}`;
    }
    case "stuck": return `stuck after ${e.attempts} attempts`;
    case "completed": return "every VM deleted";
    case "retry_now": return "retry now (operator)";
    case "adopted": return "adopted from the previous worker";
    case "reconciled": return e.vm ? `the inventory still listed ${e.vm}: deleting it again` : "an orphan VM the inventory reported: cleaning it up";
    default: return e.type;
  }
}

async function loadTimeline(id) {
  const t = await api("GET", `/api/v1/labs/sessions/${encodeURIComponent(id)}/events`);
  const items = t.events.map((e) =>
    el("li", { "data-event": e.type }, el("time", { dateTime: e.at }, time(e.at)), " ", describe(e)));
  if (t.truncated) items.push(el("li", { class: "muted" }, `${t.truncated} older event${t.truncated === 1 ? "" : "s"} left out`));
  $("#timeline").replaceChildren(...items);
}

async function openLab(id, scroll = true) {
  const lab = await api("GET", `/api/v1/labs/sessions/${encodeURIComponent(id)}`);
  state.open = id;
  $("#detail-id").textContent = visible(id);
  const errors = lab.last_outcome ? lab.last_outcome.errors : [];
  const facts = [
    ["Status", badge(lab.status, false)],
    ["Ended", lab.end_reason ? REASONS[lab.end_reason] || lab.end_reason : "not yet"],
    ["User", lab.user_id],
    ["Type", lab.lab_type === "multi_node" ? "multi-node" : "single VM"],
    ["Created", time(lab.created_at)],
    ["Expires", time(lab.expires_at)],
    ...(lab.delete_at ? [["VMs deleted at", time(lab.delete_at)]] : []),
    ["Attempts", lab.attempts],
    ["Next attempt", time(lab.next_attempt_at)],
    ["Completed", time(lab.completed_at)],
  ];
  if (lab.idle_timeout) facts.push(["Idle timeout", `${lab.idle_timeout} minutes (latest activity ${time(lab.last_activity_at)})`]);
  if (lab.dry_run) facts.push(["Dry run", "yes: the calls were only logged"]);
  if (lab.adopted_at) facts.push(["Adopted from the previous worker", time(lab.adopted_at)]);
  if (lab.origin === "inventory") facts.push(["Origin", "an orphan VM the backend's inventory reported; no lab listed it"]);
  $("#detail-body").replaceChildren(
    el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("div", { class: "columns" },
      list("Pending", lab.pending),
      list("Deleted", lab.deleted),
      list("Already gone (404)", lab.already_gone)),
    el("h3", {}, "Last attempt's errors"),
    errors.length
      ? el("ul", { class: "errors" }, ...errors.map((e) => el("li", {}, el("strong", {}, e.lab_request_id), ": ", e.error)))
      : el("p", { class: "muted" }, lab.last_outcome ? "none" : "no attempt yet"),
    el("h3", {}, "Timeline"),
    el("ol", { id: "timeline", class: "timeline" }),
  );
  await loadTimeline(id);
  $("#end-now").disabled = lab.status === "completed";
  $("#extend").disabled = lab.status !== "scheduled";
  $("#retry-now").disabled = lab.status !== "retrying";
  $("#detail").hidden = false;
  if (scroll) $("#detail").scrollIntoView({ behavior: "smooth" });
  return lab;
}

/** After an action: follows the lab until its status settles (or 60 s pass). */
async function watch(id) {
  for (let i = 0; i < 60; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    let lab;
    try {
      lab = await openLab(id, false);
    } catch (e) {
      say(String(e));
      return;
    }
    if (lab.status === "completed" || lab.status === "scheduled") break;
  }
  await refresh();
}

async function act(what, method, path, question) {
  const id = state.open;
  if (!id || !confirm(question)) return;
  try {
    await api(method, path);
    say(`${what}: done for lab ${id}.`, "info");
    await openLab(id, false);
    watch(id);
  } catch (e) {
    say(`${what} failed: ${explain(e)}`);
  }
}

function applyFilters(event) {
  event.preventDefault();
  const form = new FormData($("#filters"));
  const query = new URLSearchParams();
  const statuses = form.getAll("status");
  if (statuses.length) query.set("status", statuses.join(","));
  const user = String(form.get("user_id") || "").trim();
  if (user) query.set("user_id", user);
  if (form.get("stuck")) query.set("stuck", form.get("stuck"));
  if (form.get("origin")) query.set("origin", form.get("origin"));
  if (form.get("end_reason")) query.set("end_reason", form.get("end_reason"));
  for (const label of String(form.get("label") || "").split(",").map((l) => l.trim()).filter(Boolean)) {
    query.append("label", label);
  }
  for (const name of ["expires_after", "expires_before"]) {
    const value = form.get(name);
    if (value) query.set(name, new Date(value).toISOString());
  }
  query.set("limit", form.get("limit") || "50");
  state.query = query;
  state.cursors = [null];
  say("");
  showBulk();
  loadLabs().catch((e) => say(String(e)));
}

/** The selector of the filters applied, for a bulk action: labels, statuses, user. */
function selector() {
  const labels = {};
  for (const label of state.query.getAll("label")) {
    const at = label.indexOf(":");
    if (at > 0) labels[label.slice(0, at)] = label.slice(at + 1);
  }
  const status = (state.query.get("status") || "").split(",").filter(Boolean);
  const user = state.query.get("user_id");
  return { labels, status, user_id: user || null };
}

/** The bulk panel is offered when the filters name a label or a user (a class, or a student). */
function showBulk() {
  const s = selector();
  const ready = Object.keys(s.labels).length > 0 || s.user_id;
  $("#bulk").hidden = !ready;
  $("#bulk-preview").replaceChildren();
  $("#bulk-run").hidden = true;
  state.preview = null;
}

function bulkBody(dryRun) {
  const action = $("#bulk-action").value;
  const body = { selector: selector(), action, dry_run: dryRun };
  if (action === "extend") body.minutes = Number($("#bulk-minutes").value);
  return body;
}

async function previewBulk() {
  const body = bulkBody(true);
  try {
    const answer = await api("POST", "/api/v1/labs/bulk", body);
    const refused = answer.labs.filter((l) => l.would.startsWith("refused"));
    state.preview = { body: bulkBody(false), key: crypto.randomUUID() };
    $("#bulk-preview").replaceChildren(
      el("p", { id: "bulk-count", "data-matched": answer.matched },
        `${body.action} ${body.minutes ? `by ${body.minutes} minutes ` : ""}would reach ${answer.matched} lab${answer.matched === 1 ? "" : "s"}; ${refused.length} would refuse.`),
      refused.length
        ? el("ul", { class: "errors" }, ...refused.slice(0, 5).map((l) => el("li", {}, el("strong", {}, l.lab_request_id), ": ", l.would)))
        : el("p", { class: "muted" }, "No lab would refuse."),
    );
    $("#bulk-run").hidden = answer.matched === 0;
  } catch (e) {
    say(`Preview failed: ${explain(e)}`);
  }
}

async function runBulk() {
  const preview = state.preview;
  if (!preview || !confirm(`Run ${preview.body.action} on the previewed labs now?`)) return;
  try {
    // One key per preview: pressing Run twice starts one job.
    const job = await api("POST", "/api/v1/labs/bulk", preview.body, { "Idempotency-Key": preview.key });
    $("#bulk-run").hidden = true;
    await followJob(job.job_id);
  } catch (e) {
    say(`The bulk action failed: ${explain(e)}`);
  }
}

async function followJob(id) {
  const box = $("#bulk-job");
  for (let i = 0; i < 600; i++) {
    const job = await api("GET", `/api/v1/labs/bulk/${id}`);
    const line = `Job ${job.job_id}: ${job.action}, ${job.visited} of ${job.matched} labs handled, ${job.applied} applied, ${job.refused_count} refused${job.done ? ", done." : "…"}`;
    box.replaceChildren(
      el("progress", { max: Math.max(1, job.matched), value: job.visited }),
      el("p", { "data-done": job.done ? "true" : "false", id: "bulk-status" }, line),
      job.refused.length
        ? el("ul", { class: "errors" }, ...job.refused.slice(0, 5).map((r) => el("li", {}, el("strong", {}, r.lab_request_id), ": ", r.error)))
        : el("span"),
    );
    if (job.done) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  await refresh();
}

function start() {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    show();
  });
  $("#forget").addEventListener("click", () => forget("Token forgotten."));
  $("#refresh").addEventListener("click", () => refresh());
  $("#filters").addEventListener("submit", applyFilters);
  $("#filters").addEventListener("reset", () => setTimeout(() => applyFilters(new Event("submit")), 0));
  $("#next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    loadLabs().catch((e) => say(String(e)));
  });
  $("#prev").addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    loadLabs().catch((e) => say(String(e)));
  });
  $("#labs").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-open]");
    if (button) openLab(button.dataset.open).catch((e) => say(String(e)));
  });
  $("#bulk-action").addEventListener("change", () => {
    $("#bulk-minutes-label").hidden = $("#bulk-action").value !== "extend";
    showBulk();
  });
  $("#bulk-preview-button").addEventListener("click", () => previewBulk());
  $("#bulk-run").addEventListener("click", () => runBulk());
  $("#close-detail").addEventListener("click", () => {
    state.open = null;
    $("#detail").hidden = true;
  });
  $("#end-now").addEventListener("click", () =>
    act("End now", "DELETE", `/api/v1/labs/sessions/${encodeURIComponent(state.open)}`,
      `End lab ${state.open} now? Its VMs are deleted at once; a student's work on them is lost.`));
  $("#retry-now").addEventListener("click", () =>
    act("Retry now", "POST", `/api/v1/labs/sessions/${encodeURIComponent(state.open)}/retry`,
      `Retry the cleanup of lab ${state.open} now?`));
  $("#extend").addEventListener("click", async () => {
    const id = state.open;
    const minutes = prompt(`Extend lab ${id} by how many minutes?`, "30");
    if (minutes === null) return;
    if (!/^\d+$/.test(minutes.trim())) {
      say("Extend: the number of minutes must be a whole number.");
      return;
    }
    try {
      const response = await fetch(`/api/v1/labs/sessions/${encodeURIComponent(id)}/extend`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
        body: JSON.stringify({ minutes: Number(minutes) }),
      });
      const body = await response.json();
      if (!response.ok) throw new ApiError(response.status, body.error.code, body.error.message);
      say(`Extend: lab ${id} now expires ${time(body.expires_at)}.`, "info");
      await refresh();
    } catch (e) {
      say(`Extend failed: ${e}`);
    }
  });
  if (token()) show();
}

async function show() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#forget").hidden = false;
  say("");
  await refresh();
}

start();
