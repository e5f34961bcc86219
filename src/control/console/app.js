// egressd console: plain JavaScript over the JSON admin API; no framework, no build step.
// Every change goes through the same endpoints `curl` would use. Text from the API is only
// ever set as textContent, never as HTML.
"use strict";

const TOKEN_KEY = "egressd-admin-token"; // sessionStorage: gone with the tab
const $ = (id) => document.getElementById(id);
const state = { status: null, skewMs: 0, allowlist: null, denials: null, allDenials: false, timers: [] };

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pad = (n) => String(n).padStart(2, "0");

// The browser's zone abbreviation for a date, e.g. "EST".
function zoneName(date) {
  const part = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" })
    .formatToParts(date)
    .find((p) => p.type === "timeZoneName");
  return part ? part.value : "";
}

// "2026-11-29 05:00 EST": local time in a fixed, locale-independent shape.
function localTime(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())} ${zoneName(d)}`;
}

function utcTime(iso) {
  return iso.replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
}

// A time cell: local time shown, UTC on hover (and for tests, in data-utc).
function timeCell(iso, cls) {
  if (!iso) return el("td", { class: cls }, "—");
  return el("td", { class: cls }, el("time", { datetime: iso, "data-utc": iso, title: utcTime(iso) }, localTime(iso)));
}

function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function humanDelay(secs) {
  if (secs === 0) return "no time (activation_delay = 0s)";
  if (secs % 60 === 0) return `${secs / 60} minute${secs === 60 ? "" : "s"}`;
  return `${secs} seconds`;
}

function countdown(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(s / 60)}:${pad(s % 60)}`;
}

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
  }
}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text.trim() }; }
  if (res.status === 401) {
    askForToken("The admin API refused the request: a valid token is required.");
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ---------- token ----------

function askForToken(why) {
  const form = $("token-form");
  form.hidden = false;
  if (why) banner(why);
  $("token-input").focus();
}

function setupToken() {
  $("token-button").addEventListener("click", () => askForToken());
  $("token-cancel").addEventListener("click", () => { $("token-form").hidden = true; });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    banner("");
    refresh();
  });
}

// ---------- header ----------

async function loadStatus() {
  const s = await api("GET", "/v1/status");
  state.status = s;
  $("version").textContent = `v${s.version}`;
  $("generation").textContent = `config generation ${s.generation}`;
  $("activation-delay").textContent = humanDelay(s.activation_delay_secs);
  $("state-backend").textContent = s.state.backend === "postgres" ? `shared state ${s.state.database}` : "";
  const down = $("state-down");
  down.hidden = s.state.up;
  down.textContent = s.state.up ? "" : "Shared state unavailable: serving with the last state; changes are refused";
  down.title = s.state.error || "";
  $("token-button").hidden = !s.token_required;
  if (s.token_required && !sessionStorage.getItem(TOKEN_KEY)) {
    askForToken("This egressd requires an admin token for changes.");
  }
}

// ---------- Schedules ----------

let cronTimer = null;
let cronSeq = 0;

function payloadChars(text) {
  return [...text].length; // Unicode scalar values, as the server counts
}

function updatePayloadCounter() {
  const limit = state.status ? state.status.payload_limit : 8000;
  const n = payloadChars($("f-payload").value);
  const counter = $("payload-count");
  counter.textContent = `${n} / ${limit} characters`;
  const over = n > limit;
  counter.classList.toggle("over", over);
  $("f-payload").setAttribute("aria-invalid", over ? "true" : "false");
  $("err-payload").textContent = over ? `${n - limit} character${n - limit === 1 ? "" : "s"} over the limit of ${limit}` : "";
  $("create-submit").disabled = over;
}

function fillCron(expr) {
  $("f-cron").value = expr;
  previewCron();
  $("f-cron").focus();
}

async function previewCron() {
  const expr = $("f-cron").value;
  const out = $("cron-preview");
  const seq = ++cronSeq;
  if (!expr.trim()) {
    out.replaceChildren();
    $("err-cron").textContent = "";
    $("f-cron").removeAttribute("aria-invalid");
    return;
  }
  let r;
  try {
    r = await api("GET", `/v1/cron?count=5&expr=${encodeURIComponent(expr)}`);
  } catch (e) {
    return;
  }
  if (seq !== cronSeq) return; // a newer keystroke answered first
  if (r.valid) {
    $("err-cron").textContent = "";
    $("f-cron").setAttribute("aria-invalid", "false");
    out.replaceChildren(
      el("span", { class: "ok" }, "Next runs in your local time:"),
      el("ol", { id: "cron-next" }, r.next.map((t) =>
        el("li", {}, el("time", { datetime: t, "data-utc": t, title: utcTime(t) }, localTime(t))))),
    );
  } else {
    $("err-cron").textContent = r.error;
    $("f-cron").setAttribute("aria-invalid", "true");
    out.replaceChildren(el("div", { class: "examples", id: "cron-examples" },
      "Valid examples: ",
      r.examples.map((x) => el("button", { type: "button", class: "secondary", title: x.meaning, onclick: () => fillCron(x.expr) },
        `${x.expr}`)),
      el("div", { class: "muted" }, r.examples.map((x) => `${x.expr} = ${x.meaning}`).join(" · ")),
    ));
  }
}

async function loadFunctions() {
  const fns = await api("GET", "/v1/functions");
  const productive = fns.filter((f) => f.productive);
  const select = $("f-function");
  const chosen = select.value;
  select.replaceChildren(...productive.map((f) => el("option", { value: f.name }, f.name)));
  if (productive.some((f) => f.name === chosen)) select.value = chosen;
  const hidden = fns.length - productive.length;
  $("functions-hint").textContent = productive.length === 0
    ? "No productive functions are deployed: add a [[functions]] entry with state = \"productive\" to the config."
    : hidden > 0 ? `${hidden} undeployed function${hidden === 1 ? " is" : "s are"} not listed: only productive functions can be scheduled.` : "";
}

function clearErrors(ids) {
  for (const id of ids) $(id).textContent = "";
}

async function createSchedule(e) {
  e.preventDefault();
  clearErrors(["err-function", "err-cron", "err-payload", "err-form"]);
  const body = { function: $("f-function").value, cron: $("f-cron").value, payload: $("f-payload").value };
  $("create-submit").disabled = true;
  try {
    await api("POST", "/v1/schedules", body);
    $("create-form").hidden = true;
    $("create-toggle").setAttribute("aria-expanded", "false");
    $("f-cron").value = "";
    $("cron-preview").replaceChildren();
    await loadSchedules();
  } catch (err) {
    const target = err.field && $(`err-${err.field}`) ? `err-${err.field}` : "err-form";
    $(target).textContent = err.message;
  } finally {
    updatePayloadCounter();
  }
}

// A button that asks once more before it acts.
function confirmButton(label, confirmLabel, ariaLabel, action, content) {
  let armed = null;
  const b = el("button", { type: "button", class: "danger", "aria-label": ariaLabel, title: ariaLabel }, content || label);
  b.addEventListener("click", async () => {
    if (!armed) {
      b.classList.add("confirm");
      b.textContent = confirmLabel;
      armed = setTimeout(() => {
        armed = null;
        b.classList.remove("confirm");
        b.replaceChildren(content ? content.cloneNode(true) : label);
      }, 5000);
      return;
    }
    clearTimeout(armed);
    b.disabled = true;
    try { await action(); } catch (err) { banner(err.message); b.disabled = false; }
  });
  return b;
}

function binIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute("d", "M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 12H7L6 9zm4 2v8h2v-8h-2zm4 0v8h2v-8h-2z");
  svg.append(path);
  return svg;
}

async function loadSchedules() {
  const list = await api("GET", "/v1/schedules");
  const limit = state.status ? state.status.schedule_limit : 10;
  const count = $("schedule-count");
  count.textContent = `${list.length} of ${limit} schedules`;
  count.classList.toggle("full", list.length >= limit);
  $("create-toggle").disabled = list.length >= limit;
  $("create-toggle").title = list.length >= limit ? `At most ${limit} schedules: delete one first` : "";
  $("schedules-empty").hidden = list.length > 0;
  const rows = list.map((s) => {
    const stateCell = s.last_state
      ? el("td", {}, el("span", { class: `state ${s.last_state}`, title: s.last_reason || (s.last_state === "success" ? "The function answered 2xx" : "") }, s.last_state.toUpperCase()))
      : el("td", { class: "muted" }, "not run yet");
    return el("tr", { "data-id": s.id, "data-function": s.function },
      el("td", {}, s.function),
      el("td", { class: "mono" }, s.cron),
      timeCell(s.last_run, "last-run"),
      timeCell(s.next_run, "next-run"),
      stateCell,
      el("td", { class: "mono" }, s.last_status || "—"),
      el("td", {}, duration(s.last_duration_ms)),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "secondary", "aria-label": `Run ${s.function} now`, onclick: async (ev) => {
          ev.target.disabled = true;
          try { await api("POST", `/v1/schedules/${encodeURIComponent(s.id)}/run`); } catch (err) { banner(err.message); }
          await loadSchedules();
        } }, "Run now"),
        confirmButton("Delete", "Confirm delete", `Delete the schedule of ${s.function} (${s.cron})`, async () => {
          await api("DELETE", `/v1/schedules/${encodeURIComponent(s.id)}`);
          await loadSchedules();
        }),
      ));
  });
  document.querySelector("#schedules-table tbody").replaceChildren(...rows);
}

function setupSchedules() {
  $("local-zone").textContent = `${Intl.DateTimeFormat().resolvedOptions().timeZone}, ${zoneName(new Date())}`;
  $("create-toggle").addEventListener("click", () => {
    const form = $("create-form");
    form.hidden = !form.hidden;
    $("create-toggle").setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) { loadFunctions().catch((e) => banner(e.message)); $("f-function").focus(); }
  });
  $("create-cancel").addEventListener("click", () => {
    $("create-form").hidden = true;
    $("create-toggle").setAttribute("aria-expanded", "false");
  });
  $("f-cron").addEventListener("input", () => {
    clearTimeout(cronTimer);
    cronTimer = setTimeout(previewCron, 200);
  });
  $("f-payload").addEventListener("input", updatePayloadCounter);
  $("create-form").addEventListener("submit", createSchedule);
  updatePayloadCounter();
}

// ---------- Domain Allowlist ----------

let checkTimer = null;
let checkSeq = 0;

function renderPending(cell, activeAt) {
  const left = Date.parse(activeAt) - (Date.now() + state.skewMs);
  cell.textContent = left > 0 ? `pending, active in ${countdown(left)}` : "activating…";
}

async function loadAllowlist() {
  const a = await api("GET", "/v1/allowlist");
  state.allowlist = a;
  state.skewMs = Date.parse(a.now) - Date.now();
  $("generation").textContent = `config generation ${a.generation}`;
  $("allowlist-count").textContent = `${a.entries.length} entr${a.entries.length === 1 ? "y" : "ies"}`;
  $("reload-status").textContent = `Config generation ${a.generation}, loaded ${localTime(a.loaded_at)}.`;
  const err = $("reload-error");
  err.hidden = !a.last_error;
  err.textContent = a.last_error ? `The last reload failed (${localTime(a.last_error.at)}), the previous config stays in force: ${a.last_error.message}` : "";
  const notice = $("readonly-notice");
  notice.hidden = a.editable;
  notice.textContent = a.editable ? "" : `Read-only: ${a.read_only_reason}`;
  $("a-domain").disabled = !a.editable;
  $("add-button").disabled = !a.editable;
  const rows = a.entries.map((e) => {
    const stateCell = el("td", {}, el("span", { class: `state ${e.state}`, title: `active at ${utcTime(e.active_at)}` }, e.state));
    if (e.state === "pending") {
      const span = stateCell.firstChild;
      span.dataset.activeAt = e.active_at;
      renderPending(span, e.active_at);
    }
    return el("tr", { "data-entry": e.pattern },
      el("td", { class: "mono" }, e.pattern),
      el("td", {}, e.kind),
      stateCell,
      el("td", { class: "mono", title: e.source === "shared" ? "Added here; shared by every replica" : "In the config file; change it there" },
        e.source === "shared" ? "added here" : (e.line ? `file, line ${e.line}` : "file")),
      el("td", { class: "actions" }, a.editable && e.removable
        ? confirmButton("", "Remove?", `Remove ${e.pattern}`, async () => {
          await api("DELETE", `/v1/allowlist/${encodeURIComponent(e.pattern)}`);
          await loadAllowlistTab();
        }, binIcon())
        : null),
    );
  });
  document.querySelector("#allowlist-table tbody").replaceChildren(...rows);
}

// Short labels for the refusal codes (those of X-Egress-Denied); the code shows on hover.
const REASON_LABELS = {
  "not-allowlisted": "not allowlisted",
  "pending-activation": "pending",
  "sni-not-allowlisted": "TLS SNI",
  "redirect-denied": "redirect",
  "port-not-allowed": "port not open",
  "private-destination": "internal address",
  "invalid-target": "invalid target",
  "tunnel-host-mismatch": "tunnel host mismatch",
  "mtls-origination-required": "mTLS needs http://",
  "injection-requires-origination": "injection needs http://",
  "sni-mismatch": "SNI mismatch",
  "sni-unreadable": "unreadable ClientHello",
  "identity-required": "no credentials",
  "identity-invalid": "invalid credentials",
};

const reasonLabel = (code) => REASON_LABELS[code] || code;

// Rows shown until "Show all": the panel sits above the allowlist, which stays in reach.
const DENIALS_SHOWN = 10;

async function loadDenials() {
  state.denials = await api("GET", "/v1/denials");
  renderDenials();
}

// One row: what would fix it (the entry, or for a refusal no entry fixes, its reason), how
// often and when, why in words, who asked for what, and Add while the entry is missing.
function denialRow(d) {
  const why = el("td", { class: "why" },
    d.entry ? d.reasons.map((code) => el("span", { class: "tag", title: code }, reasonLabel(code))) : null,
    el("p", { class: "fix" }, d.hint));
  const from = el("td", { class: "from" },
    d.functions.length ? el("div", {}, `function${d.functions.length === 1 ? "" : "s"} ${d.functions.join(", ")}`) : null,
    d.examples.map((x) => el("div", { class: "mono" }, x)),
    d.redirected_from.map((url) => el("div", { class: "redirected" }, "redirected from ", el("span", { class: "mono" }, url))));
  const action = el("td", { class: "actions" });
  if (d.state === "pending") {
    const span = el("span", { class: "state pending", title: `active at ${utcTime(d.active_at)}`, "data-active-at": d.active_at });
    renderPending(span, d.active_at);
    action.append(span);
  } else if (d.state === "active") {
    action.append(el("span", { class: "state active" }, "active"));
  } else if (d.addable) {
    action.append(el("button", { type: "button", class: "secondary", "aria-label": `Add ${d.entry}`, onclick: (ev) => addDenied(ev.currentTarget, d.entry) }, "Add"));
  }
  const key = d.entry ? { "data-entry": d.entry } : { "data-reason": d.reasons[0] };
  return el("tr", { ...key, "data-state": d.state },
    d.entry
      ? el("td", { class: "mono entry" }, d.entry)
      : el("td", { class: "entry", title: d.reasons.join(", ") }, d.reasons.map(reasonLabel).join(", ")),
    el("td", { class: "count", title: `first seen ${utcTime(d.first_seen)}` }, String(d.count)),
    timeCell(d.last_seen, "last-seen"),
    why,
    from,
    action,
  );
}

function renderDenials() {
  const d = state.denials;
  const n = d.denials.length;
  const shown = state.allDenials ? d.denials : d.denials.slice(0, DENIALS_SHOWN);
  document.querySelector("#denials-table tbody").replaceChildren(...shown.map(denialRow));
  $("denials-table").hidden = n === 0;
  $("denials-empty").hidden = n > 0;
  const readOnly = $("denials-readonly");
  readOnly.hidden = d.editable || n === 0;
  readOnly.textContent = d.editable ? "" : `Entries cannot be added from here: ${d.read_only_reason}`;
  const more = $("denials-more");
  more.hidden = n <= DENIALS_SHOWN;
  more.textContent = state.allDenials ? `Show the ${DENIALS_SHOWN} most recent` : `Show all ${n}`;
}

// Add on a row: exactly its entry, the way the Add field adds one.
async function addDenied(button, entry) {
  $("err-denials").textContent = "";
  button.disabled = true;
  const r = await addEntry(entry);
  $("err-denials").textContent = r.error ? `${entry}: ${r.error}` : "";
  await loadAllowlistTab();
}

// The tab: the allowlist and the recent refusals, which an entry's state changes.
async function loadAllowlistTab() {
  await Promise.all([loadAllowlist(), loadDenials()]);
}

// Pending countdowns tick every second; the tab is fetched again when one reaches 0.
function tickCountdowns() {
  let due = false;
  for (const span of document.querySelectorAll("#allowlist-table span[data-active-at], #denials-table span[data-active-at]")) {
    renderPending(span, span.dataset.activeAt);
    if (Date.parse(span.dataset.activeAt) <= Date.now() + state.skewMs) due = true;
  }
  if (due && currentPage() === "allowlist") loadAllowlistTab().catch(() => {});
}

async function checkDomain() {
  const input = $("a-domain").value;
  const out = $("add-check");
  const seq = ++checkSeq;
  $("err-domain").textContent = "";
  if (!input.trim()) { out.replaceChildren(); $("a-domain").removeAttribute("aria-invalid"); return; }
  let r;
  try { r = await api("GET", `/v1/allowlist/check?domain=${encodeURIComponent(input)}`); } catch (_) { return; }
  if (seq !== checkSeq) return;
  $("a-domain").setAttribute("aria-invalid", r.error ? "true" : "false");
  if (r.error) {
    $("err-domain").textContent = r.error;
    out.replaceChildren();
    return;
  }
  out.replaceChildren(
    el("div", {}, "Will add ", el("code", {}, r.pattern), ` (${r.kind}).`),
    el("ul", { class: "hints" }, r.hints.map((h) => el("li", { class: "hint" }, h))),
  );
}

// Adds an entry through the API, for the Add field and the Recently denied rows alike:
// whether it was written, and what went wrong ("" when nothing did).
async function addEntry(domain) {
  try {
    const r = await api("POST", "/v1/allowlist", { domain });
    const failed = r.reload && r.reload.result === "failed";
    return { written: true, error: failed ? `Written, but the reload failed: ${r.reload.errors.join("; ")}` : "" };
  } catch (err) {
    return { written: false, error: err.message };
  }
}

async function addDomain(e) {
  e.preventDefault();
  const domain = $("a-domain").value.trim();
  if (!domain) return;
  $("err-domain").textContent = "";
  $("add-button").disabled = true;
  const r = await addEntry(domain);
  if (r.written) {
    $("a-domain").value = "";
    $("add-check").replaceChildren();
  }
  $("err-domain").textContent = r.error;
  $("add-button").disabled = false;
  await loadAllowlistTab();
}

function setupAllowlist() {
  $("a-domain").addEventListener("input", () => {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(checkDomain, 200);
  });
  $("add-form").addEventListener("submit", addDomain);
  $("denials-more").addEventListener("click", () => {
    state.allDenials = !state.allDenials;
    renderDenials();
  });
  setInterval(tickCountdowns, 1000);
}

// ---------- Check a URL ----------

async function checkUrl(e) {
  e.preventDefault();
  const url = $("c-url").value.trim();
  const out = $("check-result");
  if (!url) return;
  out.replaceChildren(el("p", { class: "muted" }, "Checking…"));
  try {
    const fn = $("c-function").value.trim();
    const asFunction = fn ? `&function=${encodeURIComponent(fn)}` : "";
    const x = await api("GET", `/v1/explain?url=${encodeURIComponent(url)}${asFunction}`);
    const parts = [el("p", { id: "check-verdict", class: x.allowed ? "ok" : "bad" }, x.message)];
    if (x.identity) parts.push(el("p", { id: "check-identity", class: "muted" }, x.identity));
    if (/^https?:\/\//i.test(url)) {
      parts.push(el("p", { class: "muted" }, "Following redirects…"));
      out.replaceChildren(...parts);
      const t = await api("POST", "/v1/trace", { url });
      parts.pop();
      parts.push(renderTrace(t));
    }
    out.replaceChildren(...parts);
  } catch (err) {
    out.replaceChildren(el("p", { class: "bad" }, err.message));
  }
}

function renderTrace(t) {
  const hops = el("ol", { class: "hops", id: "trace-hops" }, t.hops.map((h) =>
    el("li", { "data-allowed": String(h.allowed) },
      el("code", {}, h.url), " — ",
      el("span", { class: h.allowed ? "ok" : "bad", title: h.verdict }, h.detail),
      h.status ? ` — HTTP ${h.status}` : "",
      h.location ? el("span", {}, " → ", el("code", {}, h.location)) : "",
      h.error ? el("span", { class: "bad" }, ` — ${h.error}`) : "")));
  const summary = [];
  if (t.add.length) {
    const editable = state.allowlist ? state.allowlist.editable : false;
    summary.push(el("p", {}, "To let the whole chain through, add:"),
      el("ul", { id: "trace-add" }, t.add.map((entry) => el("li", {}, el("code", {}, entry), " ",
        editable ? el("button", { type: "button", class: "secondary", onclick: async (ev) => {
          ev.target.disabled = true;
          try { await api("POST", "/v1/allowlist", { domain: entry }); ev.target.textContent = "Added (pending)"; }
          catch (err) { ev.target.textContent = err.message; }
        } }, "Add") : null))));
  } else if (t.allowed) {
    summary.push(el("p", { class: "ok" }, "Every hop is allowed."));
  }
  if (t.stopped) summary.push(el("p", { class: "bad" }, `Stopped: ${t.stopped}`));
  return el("div", { id: "trace" }, el("h2", {}, "Redirect chain"), hops, ...summary);
}

// ---------- Secrets ----------
// A value goes from its field to the API and nowhere else: the field is emptied once the
// request is sent, whatever the answer, and no value is kept in state, the DOM or storage.

let replacing = null; // the key whose value the form replaces; null: the form creates

function secretForm(key) {
  replacing = key;
  $("s-key").value = key || "";
  $("s-key").readOnly = key !== null;
  $("secret-form-title").textContent = key === null ? "Create a secret" : `Replace the value of ${key}`;
  $("secret-submit").textContent = key === null ? "Create" : "Replace";
  $("secret-cancel").hidden = key === null;
  clearErrors(["err-secret-key", "err-secret-value", "err-secret-form"]);
}

async function saveSecret(e) {
  e.preventDefault();
  clearErrors(["err-secret-key", "err-secret-value", "err-secret-form"]);
  $("secret-saved").textContent = "";
  const key = $("s-key").value.trim();
  const field = $("s-value");
  $("secret-submit").disabled = true;
  try {
    const s = replacing === null
      ? await api("POST", "/v1/secrets", { key, value: field.value })
      : await api("PUT", `/v1/secrets/${encodeURIComponent(replacing)}`, { value: field.value });
    $("secret-saved").textContent = `Saved ${s.key} (version ${s.version}).`;
    secretForm(null);
  } catch (err) {
    const target = err.field && $(`err-secret-${err.field}`) ? `err-secret-${err.field}` : "err-secret-form";
    $(target).textContent = err.message;
  } finally {
    field.value = "";
    $("secret-submit").disabled = false;
    await loadSecrets().catch((err) => banner(err.message));
  }
}

// "Used by functions a, b; injected by api.example.com authorization (line 40)."
function secretUses(s) {
  const uses = [];
  if (s.functions.length) uses.push(`used by function${s.functions.length === 1 ? "" : "s"} ${s.functions.join(", ")}`);
  if (s.injected_by.length) uses.push(`injected by ${s.injected_by.join(", ")}`);
  if (!uses.length) return "";
  const text = uses.join("; ");
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

function askDeleteSecret(s) {
  const dialog = $("secret-delete");
  dialog.dataset.key = s.key;
  const uses = secretUses(s) || "No [[inject]] rule names it, and no function has used it since this egressd started.";
  const refused = s.injected_by.length ? " Requests that inject it are refused (secret-missing) until it exists again." : "";
  $("secret-delete-text").textContent = `Delete ${s.key}? ${uses} Functions lose it immediately.${refused}`;
  dialog.returnValue = "";
  dialog.showModal();
}

async function deleteSecret() {
  const dialog = $("secret-delete");
  if (dialog.returnValue !== "delete") return;
  try {
    await api("DELETE", `/v1/secrets/${encodeURIComponent(dialog.dataset.key)}`);
    if (replacing === dialog.dataset.key) secretForm(null);
  } catch (err) {
    banner(err.message);
  }
  await loadSecrets().catch((err) => banner(err.message));
}

function usedByCell(s) {
  if (!s.functions.length && !s.injected_by.length) return el("td", { class: "used-by muted" }, "—");
  return el("td", { class: "used-by" },
    s.functions.length ? el("div", { class: "functions" }, `functions: ${s.functions.join(", ")}`) : null,
    s.injected_by.map((rule) => el("div", { class: "mono inject" }, `[[inject]] ${rule}`)));
}

// Without [secrets] the API answers 404 with what to add to the config: the page says that.
function secretStoreMissing(message) {
  const missing = $("secrets-missing");
  missing.hidden = !message;
  missing.textContent = message || "";
  for (const id of ["secret-form", "secrets-host", "secrets-table"]) $(id).hidden = !!message;
  $("show-defaults").parentElement.hidden = !!message;
  if (message) {
    $("secret-count").textContent = "";
    $("secrets-empty").hidden = true;
  }
}

async function loadSecrets() {
  let r;
  try {
    r = await api("GET", "/v1/secrets");
  } catch (err) {
    if (err.status !== 404) throw err;
    secretStoreMissing(err.message);
    return;
  }
  secretStoreMissing(null);
  $("secrets-url").textContent = `GET http://${r.host}/v1/secrets/KEY`;
  const count = $("secret-count");
  count.textContent = `${r.secrets.length} of ${r.limit} secrets`;
  count.classList.toggle("full", r.secrets.length >= r.limit);
  const showDefaults = $("show-defaults").checked;
  const shown = r.secrets.filter((s) => showDefaults || !s.default);
  const hidden = r.secrets.length - shown.length;
  $("defaults-hidden").textContent = hidden ? `(${hidden} hidden)` : "";
  $("secrets-empty").hidden = r.secrets.length > 0;
  const rows = shown.map((s) => el("tr", { "data-key": s.key, "data-default": String(s.default) },
    el("td", { class: "mono key" }, s.key, s.default ? el("span", { class: "pill", title: "Created at provisioning" }, "default") : null),
    timeCell(s.created_at, "created"),
    timeCell(s.updated_at, "updated"),
    el("td", { class: "version" }, String(s.version)),
    el("td", { class: "mono writer" }, s.last_writer),
    usedByCell(s),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "secondary", "aria-label": `Replace the value of ${s.key}`, onclick: () => {
        secretForm(s.key);
        $("s-value").focus();
      } }, "Replace value"),
      el("button", { type: "button", class: "danger", "aria-label": `Delete ${s.key}`, title: `Delete ${s.key}`, onclick: () => askDeleteSecret(s) }, binIcon())),
  ));
  document.querySelector("#secrets-table tbody").replaceChildren(...rows);
}

function setupSecrets() {
  $("secret-form").addEventListener("submit", saveSecret);
  $("secret-cancel").addEventListener("click", () => secretForm(null));
  $("show-defaults").addEventListener("change", () => loadSecrets().catch((err) => banner(err.message)));
  $("secret-delete").addEventListener("close", deleteSecret);
}

// ---------- pages ----------

const PAGES = ["schedules", "allowlist", "check", "secrets"];

function currentPage() {
  const name = location.hash.replace("#", "");
  return PAGES.includes(name) ? name : "schedules";
}

async function refresh() {
  try {
    await loadStatus();
    const page = currentPage();
    if (page === "schedules") await loadSchedules();
    if (page === "allowlist") await loadAllowlistTab();
    if (page === "check" && !state.allowlist) await loadAllowlist().catch(() => {});
    if (page === "secrets") await loadSecrets();
    if (!$("banner").textContent.startsWith("This egressd requires")) banner("");
  } catch (err) {
    // A 401 asked for the token already, and says so.
    if (err.status !== 401) banner(`Cannot reach the admin API: ${err.message}`);
  }
}

function showPage() {
  const page = currentPage();
  for (const p of PAGES) {
    $(`page-${p}`).hidden = p !== page;
    const tab = $(`tab-${p}`);
    if (p === page) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  document.title = `${$(`tab-${page}`).textContent} · egressd`;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupSchedules();
  setupAllowlist();
  setupSecrets();
  $("check-form").addEventListener("submit", checkUrl);
  window.addEventListener("hashchange", showPage);
  showPage();
  // Live: last runs, activation states and functions' writes change without a click.
  setInterval(() => {
    const page = currentPage();
    if (page === "allowlist" || page === "secrets" || (page === "schedules" && $("create-form").hidden)) refresh();
  }, 5000);
});
