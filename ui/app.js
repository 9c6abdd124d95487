// Tokenwarden window. No build step: plain JS over window.__TAURI__.
// Live updates come as Tauri events ("status", "status-all", "removed", "login",
// "demo", "row"); the only timer is the countdown's, computed here from
// next_attempt_at without asking the backend anything, and set for the next moment a
// text changes (see tick).
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

const rows = new Map(); // name -> row
let isDemo = false;
const $ = (sel, root = document) => root.querySelector(sel);

// ---------- formatting ----------
function parseTime(s) { return s ? new Date(s) : null; }
function clock(d) {
  if (!d) return "—";
  const sameDay = d.toDateString() === new Date().toDateString();
  const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? t : `${d.toLocaleDateString()} ${t}`;
}
// Seconds only while they matter (under 2 minutes): a steady state then changes the
// text once a minute, and an unchanged text is not written (no repaint when idle).
function span(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} min`;
}
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}
function ago(d) {
  if (!d) return "—";
  const min = Math.floor((Date.now() - d) / 60000);
  const rel = min < 1 ? "just now" : min < 120 ? `${min} min ago` : `${span(Date.now() - d)} ago`;
  return `${clock(d)} (${rel})`;
}
function countdown(d) {
  if (!d) return "none scheduled";
  const ms = d - Date.now();
  return ms <= 500 ? "now" : `in ${span(ms)}`;
}

// ---------- errors and notices ----------
// A hand edit of workloads.toml that cannot be used (null once one can).
function setConfigError(message) {
  $("#config-error-text").textContent = message || "";
  $("#config-error").hidden = !message;
}

function showError(e) {
  const err = normalize(e);
  $("#error-text").textContent = `${err.message} [${err.code}]`;
  $("#error").hidden = false;
}
function normalize(e) {
  if (e && typeof e === "object" && "message" in e) return { code: e.code || "error", message: e.message, field: e.field };
  return { code: "error", message: String(e) };
}
let noticeTimer = null;
function notice(text) {
  const n = $("#notice");
  n.textContent = text;
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
}
async function call(cmd, args) {
  try {
    return await invoke(cmd, args);
  } catch (e) {
    showError(e);
    throw normalize(e);
  }
}

// ---------- cards ----------
function card(name) {
  let li = document.querySelector(`li[data-workload="${CSS.escape(name)}"]`);
  if (li) return li;
  li = $("#card").content.firstElementChild.cloneNode(true);
  li.dataset.workload = name;
  $(".name", li).textContent = name;
  const id = `w-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  $(".name", li).id = id;
  li.setAttribute("aria-labelledby", id);
  // Every control says whose it is (a screen reader lists them out of their card),
  // its name starting with the words it shows (speech input finds it by them).
  for (const action of ["reauth", "remove", "copy-config", "connect"]) {
    const el = li.querySelector(`[data-action="${action}"]`);
    named(el, el.textContent, name);
  }
  li.querySelector('[data-action="notify"]').setAttribute("aria-label", `Notify about ${name}`);
  $(".local-url", li).setAttribute("aria-label", `Local address of ${name}`);
  $(".client-config", li).setAttribute("aria-label", `Client configuration of ${name}`);
  $(".timeline .whose", li).textContent = ` of ${name}`;
  li.querySelector('[data-action="retry"]').addEventListener("click", () => retry(name));
  li.querySelector('[data-action="reauth"]').addEventListener("click", () => reauth(name));
  li.querySelector('[data-action="remove"]').addEventListener("click", (ev) => remove(name, ev.currentTarget));
  li.querySelector('[data-action="notify"]').addEventListener("change", (ev) => setNotify(name, ev.currentTarget));
  li.querySelector('[data-action="copy-config"]').addEventListener("click", (ev) => copyConfig(name, li, ev.currentTarget));
  $(".connect", li).addEventListener("toggle", (ev) => { if (ev.currentTarget.open) loadClients(name, li); });
  // One click (or focus) selects the whole local address, ready for Ctrl+C.
  $(".local-url", li).addEventListener("focus", (ev) => ev.currentTarget.select());
  $("#workloads").append(li); // render puts it in its place
  return li;
}

// A control's visible words, and its accessible name: those words and the workload.
function named(el, text, name) {
  setText(el, text);
  el.setAttribute("aria-label", `${text} (${name})`);
}

// Worst state first, then by name: a failing workload is never below the fold
// behind healthy ones.
const RANK = { unauthenticated: 0, retrying: 1, running: 2, stopped: 3 };
function sortsBefore(a, b) {
  const ra = RANK[a.status] ?? 4;
  const rb = RANK[b.status] ?? 4;
  return ra !== rb ? ra < rb : a.name < b.name;
}
// Move a card to its place (only when it is out of it); the focus stays where it was.
function place(li) {
  const row = rows.get(li.dataset.workload);
  const list = $("#workloads");
  const after = [...list.children].find((c) => c !== li && rows.has(c.dataset.workload) && sortsBefore(row, rows.get(c.dataset.workload))) || null;
  if (li.parentNode === list && li.nextElementSibling === after) return;
  const focused = li.contains(document.activeElement) ? document.activeElement : null;
  list.insertBefore(li, after);
  if (focused && document.activeElement !== focused) focused.focus({ preventScroll: true });
}
// Focus a card itself (its heading), e.g. the one added or the one after a removed one.
function focusCard(li) {
  const h = $(".name", li);
  h.tabIndex = -1;
  h.focus();
}

const WORDS = { running: "running", retrying: "retrying", unauthenticated: "unauthenticated", stopped: "stopped" };

function render(row) {
  // An answer that left the app before an event we already showed is older: drop it.
  const have = rows.get(row.name);
  if (have && have.version > row.version) return;
  rows.set(row.name, row);
  const li = card(row.name);
  li.dataset.status = row.status;
  place(li);
  const badge = $(".badge", li);
  badge.textContent = WORDS[row.status] || row.status;
  badge.className = `badge ${row.status}`;
  const reason = row.plain_reason || (row.status === "running" ? "Healthy: a valid access token is held and a refresh is scheduled." : "");
  $(".reason", li).textContent = reason;
  // A remote that asked for more permission (step-up) counts as a problem too.
  const needsMore = (row.needs_scopes || []).length > 0;
  $(".reason", li).classList.toggle("bad", (row.status !== "running" || needsMore) && !!row.plain_reason);
  $(".hint", li).textContent = row.hint || "";
  $(".hint", li).hidden = !row.hint;
  $(".since", li).textContent = ago(parseTime(row.since));
  $(".gives-up", li).textContent = row.gives_up_at ? clock(parseTime(row.gives_up_at)) : "—";
  $(".f-gives", li).hidden = !row.gives_up_at;
  const exp = parseTime(row.access_token_expires_at);
  // An unauthenticated or stopped workload's token is not served (whatever time it
  // may still have, e.g. a login made with another configuration): no "valid until".
  const served = row.status === "running" || row.status === "retrying";
  const token = !served
    ? (exp || row.access_token_valid
      ? `not served ${row.status === "stopped" ? "(the workload is disabled)" : "until you sign in again"}`
      : "none")
    : exp
      ? `${row.access_token_valid ? "valid until" : "expired at"} ${clock(exp)}`
      : row.access_token_valid ? "valid until the remote rejects it" : "none";
  // A server that issues no refresh token: this workload cannot renew by itself.
  $(".token", li).textContent = row.can_renew === false && row.status === "running"
    ? `${token} · cannot renew by itself (no refresh token): sign in again when it ends`
    : token;
  $(".detail", li).textContent = row.detail || "";
  $(".f-detail", li).hidden = !row.detail;
  // The local proxy: its address and client config, or why it is not serving.
  $(".local", li).hidden = !row.local_url;
  const url = $(".local-url", li);
  if (url.value !== (row.local_url || "")) url.value = row.local_url || "";
  const pre = $(".client-config", li);
  if (!pre.hidden) setText(pre, row.client_config || "");
  $(".proxy-error", li).textContent = row.plain_proxy_error || "";
  $(".proxy-error", li).hidden = !row.plain_proxy_error;
  // Only the actions that apply: a refresh for a healthy workload, a retry for a
  // retrying one (a workload that needs a sign-in or is stopped has nothing to retry);
  // a sign-in where one is needed, more permission is asked, or the token cannot be
  // renewed.
  const retry = li.querySelector('[data-action="retry"]');
  retry.hidden = !served;
  named(retry, row.status === "running" ? "Refresh now" : "Retry now", row.name);
  retry.classList.toggle("primary", row.status === "retrying");
  const reauth = li.querySelector('[data-action="reauth"]');
  reauth.hidden = !(row.status === "unauthenticated" || needsMore || (row.status === "running" && row.can_renew === false));
  reauth.classList.toggle("primary", row.status === "unauthenticated" || needsMore);
  li.querySelector('[data-action="remove"]').hidden = isDemo;
  // The demo's workloads go with the demo: nothing to connect a client to.
  $(".connect", li).hidden = isDemo;
  li.querySelector('[data-action="notify"]').checked = row.notifications !== false;
  const ol = $(".timeline ol", li);
  ol.replaceChildren(...(row.timeline || []).slice().reverse().map((t) => {
    const item = document.createElement("li");
    item.className = t.ok ? "ok" : "fail";
    const time = document.createElement("time");
    time.dateTime = t.at;
    time.textContent = clock(parseTime(t.at));
    item.append(time, document.createTextNode(` ${t.what}`));
    return item;
  }));
  $(".timeline", li).hidden = !(row.timeline && row.timeline.length);
  tickOne(li, row);
  summarize();
  tick(); // the next text change may now be sooner
}

function tickOne(li, row) {
  const next = parseTime(row.next_attempt_at);
  // A healthy card says when its next refresh is; a retrying one its next attempt;
  // neither applies to a workload waiting for a sign-in or stopped.
  const healthy = row.status === "running";
  setText($(".next-label", li), healthy ? "Next refresh" : "Next attempt");
  // Relative on screen, the absolute time in the tooltip (and read out after it).
  const dd = $(".countdown", li);
  const at = next ? `at ${clock(next)}` : "";
  const rel = countdown(next);
  setText($(".rel", dd), rel);
  setText($(".abs", dd), at && rel !== "now" ? `, ${at}` : "");
  if (dd.title !== at) dd.title = at;
  const hide = row.status !== "retrying" && !(healthy && next);
  const f = $(".f-next", li);
  if (f.hidden !== hide) f.hidden = hide;
}
// The countdown and "since" texts change at most once a second (under two minutes)
// or once a minute: the timer is set for the next moment any text changes, so an idle
// window with every refresh far away wakes about once a minute, not every second.
let tickTimer = null;
function untilChange(ms, countingDown) {
  const abs = Math.abs(ms);
  if (countingDown && abs < 120500) return (abs % 1000) || 1000;
  return 60000 - (abs % 60000) || 60000;
}
function tick() {
  if (tickTimer !== null) clearTimeout(tickTimer);
  tickTimer = null;
  if (document.hidden) return; // visibilitychange brings it back
  const now = Date.now();
  let next = 60000;
  for (const [name, row] of rows) {
    const li = document.querySelector(`li[data-workload="${CSS.escape(name)}"]`);
    if (li) {
      tickOne(li, row);
      setText($(".since", li), ago(parseTime(row.since)));
    }
    const at = parseTime(row.next_attempt_at);
    if (at && at - now > -1000) next = Math.min(next, untilChange(at - now, true));
    const since = parseTime(row.since);
    if (since) next = Math.min(next, untilChange(now - since, false));
  }
  tickTimer = setTimeout(tick, Math.max(50, next + 20));
}

function summarize() {
  const all = [...rows.values()];
  const n = (s) => all.filter((r) => r.status === s).length;
  let text;
  if (!all.length) text = "No workloads configured.";
  else if (n("unauthenticated")) text = `${n("unauthenticated")} of ${all.length} need you to sign in again.`;
  else if (n("retrying")) text = `${n("retrying")} of ${all.length} retrying; Tokenwarden keeps trying.`;
  else if (n("running") === all.length) text = `All ${all.length} workload${all.length > 1 ? "s" : ""} running.`;
  else text = `${n("running")} of ${all.length} running.`;
  // A live region: written only when its words change, so it is announced only then
  // (not on every refresh of a healthy workload).
  setText($("#summary"), text);
  document.body.dataset.overall = n("unauthenticated") ? "unauthenticated" : n("retrying") ? "retrying" : all.length ? "running" : "idle";
  $("#empty").hidden = all.length > 0 || isDemo;
  // Only while there is something a retry can do (a healthy or retrying workload).
  $("#retry-all").hidden = !(n("running") + n("retrying"));
}

function replaceAll(list) {
  const names = new Set(list.map((r) => r.name));
  const asOf = Math.max(0, ...list.map((r) => r.version));
  // A card missing from the list goes, unless it changed after the list was taken.
  for (const [name, row] of [...rows]) if (!names.has(name) && row.version <= asOf) removed(name);
  list.forEach(render);
  summarize();
}

function removed(name) {
  rows.delete(name);
  const li = document.querySelector(`li[data-workload="${CSS.escape(name)}"]`);
  // The focus was in the card (its Remove): it goes to the next card (the previous
  // one for the last), or to "Add a server" when none is left, not to the page.
  const hadFocus = !!li && li.contains(document.activeElement);
  const next = li && (li.nextElementSibling || li.previousElementSibling);
  if (li) li.remove();
  summarize();
  if (!hadFocus) return;
  if (next) focusCard(next);
  else if (!$("#empty").hidden) $("#empty-add").focus();
  else if (!$("#add").hidden) $("#add summary").focus();
}

// ---------- actions ----------
async function retry(name) {
  const asked = await call("retry", { name });
  notice(`Retrying ${asked.join(", ")} now…`);
}
async function reauth(name) {
  await call("reauthenticate", { name });
}
async function remove(name, button) {
  if (button.dataset.confirm !== "1") {
    button.dataset.confirm = "1";
    named(button, "Confirm remove", name);
    setTimeout(() => { button.dataset.confirm = ""; named(button, "Remove", name); }, 5000);
    return;
  }
  await call("remove_workload", { name });
  notice(`Removed ${name} and its stored tokens.`);
}
async function setNotify(name, box) {
  try {
    await call("set_notifications", { name, enabled: box.checked });
  } catch (_) {
    box.checked = !box.checked;
  }
}

// The clipboard: the async API where the webview has it, else the classic copy
// command; false when neither worked (the caller then shows the text to copy by hand).
async function writeClipboard(text) {
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (_) { /* try the copy command */ }
  const ta = document.createElement("textarea");
  ta.value = text;
  ta.readOnly = true;
  ta.className = "offscreen";
  ta.setAttribute("aria-hidden", "true");
  document.body.append(ta);
  try {
    ta.select();
    return document.execCommand("copy") === true;
  } catch (_) {
    return false;
  } finally {
    ta.remove();
  }
}
async function copyConfig(name, li, button) {
  const row = rows.get(name);
  const text = row && row.client_config;
  if (!text) return;
  const status = $(".copied", li);
  const pre = $(".client-config", li);
  const ok = await writeClipboard(text);
  if (document.activeElement !== button) button.focus();
  clearTimeout(li.copiedTimer);
  if (ok) {
    pre.hidden = true;
    $(".copy-fallback", li).hidden = true;
    status.textContent = "Copied";
    li.copiedTimer = setTimeout(() => { status.textContent = ""; }, 4000);
    return;
  }
  status.textContent = "";
  setText(pre, text);
  pre.hidden = false;
  $(".copy-fallback", li).hidden = false;
  const range = document.createRange();
  range.selectNodeContents(pre);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

// ---------- "Connect to…" ----------
function clientWords(c) {
  if (c.error) return `cannot be read: ${c.error}`;
  if (!c.found) return "no config file here";
  if (c.connected) return "connected";
  if (c.other) return `has ${c.other} of this name`;
  return "found, not connected";
}
function renderClients(name, li, list) {
  const ul = $(".clients", li);
  ul.replaceChildren(...list.map((c) => {
    const item = $("#client").content.firstElementChild.cloneNode(true);
    item.dataset.client = c.client;
    item.dataset.found = c.found ? "1" : "";
    item.dataset.connected = c.connected ? "1" : "";
    $(".client-name", item).textContent = c.label;
    $(".client-state", item).textContent = clientWords(c);
    if (c.path) item.title = c.path;
    const b = $(".client-toggle", item);
    b.textContent = c.connected ? "Disconnect" : "Connect";
    b.setAttribute("aria-label", c.connected ? `Disconnect ${name} from ${c.label}` : `Connect ${name} to ${c.label}`);
    // A file that cannot be read is left alone; another entry of this name is not replaced.
    b.disabled = !!c.error || (!c.connected && !!c.other);
    b.addEventListener("click", () => toggleClient(name, li, c));
    return item;
  }));
}
async function loadClients(name, li) {
  try {
    renderClients(name, li, await call("client_connections", { name }));
  } catch (_) { /* shown */ }
}
async function toggleClient(name, li, c) {
  const result = $(".connect-result", li);
  try {
    const r = await call("connect_client", { name, client: c.client, connect: !c.connected });
    result.textContent = r.message;
    await loadClients(name, li);
    const again = li.querySelector(`.client[data-client="${CSS.escape(c.client)}"] .client-toggle`);
    if (again) again.focus();
  } catch (e) {
    result.textContent = e.message;
  }
}

function setDemo(d) {
  if (!d) return;
  $("#demo-mode").textContent = d.mode;
  $("#demo-refreshes").textContent = String(d.refresh_requests);
}

// ---------- add form ----------
function clearFieldErrors(form) {
  form.querySelectorAll(".field-error").forEach((s) => { s.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
}
function fieldError(form, field, message) {
  const slot = form.querySelector(`.field-error[data-for="${field}"]`);
  const input = form.elements[field];
  if (slot) slot.textContent = message;
  if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
}
function checkUrl(raw) {
  let u;
  try { u = new URL(raw); } catch (_) { return "Enter a full URL, like https://auth.example/token."; }
  const loop = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
  if (u.protocol !== "https:" && !(u.protocol === "http:" && loop)) return "Use https:// (plain http only for a loopback address).";
  return null;
}
function checkForm(form) {
  const v = (k) => form.elements[k].value.trim();
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(v("name"))) return ["name", "Use letters, digits, '.', '_' or '-' (starting with a letter or digit)."];
  for (const k of ["url", "token_endpoint", "authorization_endpoint"]) {
    const bad = v(k) && checkUrl(v(k));
    if (bad) return [k, bad];
  }
  if (!v("url")) {
    if (!v("token_endpoint")) return ["token_endpoint", "Give the remote's URL (the rest is discovered), or the token endpoint."];
    if (!v("authorization_endpoint")) return ["authorization_endpoint", "An authorization endpoint is needed to sign in (or give the remote's URL)."];
    if (!v("client_id")) return ["client_id", "Enter the client ID registered with the issuer (or give the remote's URL)."];
  }
  return null;
}
// The name of the workload being added while its add runs (discovery, registration):
// its progress lines go to the form, which keeps them on screen meanwhile.
let adding = null;
function addProgress(line) {
  const box = $("#add-progress");
  const p = document.createElement("p");
  p.textContent = line;
  box.append(p);
  box.hidden = false;
}
function setAdding(form, name) {
  adding = name;
  const submit = $("button[type=submit]", form);
  submit.disabled = name !== null;
  submit.setAttribute("aria-busy", String(name !== null));
  setText(submit, name !== null ? "Adding…" : "Add and sign in");
}
async function submitAdd(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  if (adding !== null) return; // one add at a time (Enter in a field while it runs)
  clearFieldErrors(form);
  const bad = checkForm(form);
  if (bad) { fieldError(form, bad[0], bad[1]); return; }
  const data = Object.fromEntries(new FormData(form).entries());
  $("#add-progress").replaceChildren();
  $("#add-progress").hidden = true;
  setAdding(form, data.name);
  try {
    await invoke("add_workload", { form: data });
    setAdding(form, null);
    form.reset();
    $("#add-progress").replaceChildren();
    $("#add-progress").hidden = true;
    $("#add").open = false;
    notice(`Added ${data.name}. Sign in in your browser.`);
    replaceAll(await call("list_status"));
    // The new card takes the focus (the form it came from is closed).
    const added = document.querySelector(`li[data-workload="${CSS.escape(data.name)}"]`);
    if (added) focusCard(added);
  } catch (e) {
    // The progress stays: it shows how far the add came.
    setAdding(form, null);
    const err = normalize(e);
    if (err.field) fieldError(form, err.field, err.message);
    else showError(err);
  }
}

// ---------- settings ----------
// "Start Tokenwarden when I log in": shows the real state (null: not offered, as in
// the demo); each change asks the backend, which answers with the state afterwards.
function setupAutostart(state) {
  const box = $("#autostart");
  $("#settings").hidden = state === null || state === undefined;
  box.checked = !!state;
  box.addEventListener("change", async () => {
    const want = box.checked;
    box.disabled = true;
    try {
      box.checked = await call("set_autostart", { enabled: want });
      notice(box.checked ? "Tokenwarden will start in the tray when you log in." : "Tokenwarden will not start when you log in.");
    } catch (_) {
      box.checked = !want;
    } finally {
      box.disabled = false;
      box.focus();
    }
  });
}

// ---------- start ----------
async function start() {
  $("#error-close").addEventListener("click", () => { $("#error").hidden = true; });
  $("#retry-all").addEventListener("click", async () => {
    const asked = await call("retry", { name: null });
    notice(asked.length ? `Retrying ${asked.length} workload${asked.length > 1 ? "s" : ""} now…` : "Nothing to retry.");
  });
  document.querySelectorAll("[data-demo]").forEach((b) => b.addEventListener("click", async () => {
    setDemo(await call("demo_control", { action: b.dataset.demo }));
    notice({ waf: "The issuer now answers 403 with a web page, like a WAF block.", down: "The issuer is down: connections are refused.", revoke: "The grant is revoked: the next refresh gets invalid_grant.", heal: "The issuer is healthy again." }[b.dataset.demo]);
  }));
  $("#add-form").addEventListener("submit", submitAdd);
  $("#empty-add").addEventListener("click", () => {
    $("#add").open = true;
    $("#add-form").elements.url.focus();
  });
  $("#empty-demo").addEventListener("click", async () => {
    try {
      const d = await call("start_demo");
      notice(d.state === "focused"
        ? "The demo runs already: its window was brought to the front."
        : "The demo opens in a window of its own. Quit it from its tray menu; your configuration is not touched.");
    } catch (_) { /* shown */ }
  });

  await listen("status", (e) => render(e.payload));
  await listen("row", (e) => render(e.payload));
  await listen("status-all", (e) => replaceAll(e.payload));
  await listen("removed", (e) => removed(e.payload));
  await listen("demo", (e) => setDemo(e.payload));
  await listen("error", (e) => showError(e.payload));
  await listen("config-error", (e) => setConfigError(e.payload));
  // Events were dropped on the way (a very busy moment): list everything again.
  await listen("lagged", async () => replaceAll(await call("list_status")));
  await listen("login", (e) => {
    const l = e.payload;
    if (l.state === "failed") showError({ code: "login", message: `Sign-in to ${l.name} failed: ${l.message}` });
    else if (l.name === adding && l.state === "waiting") addProgress(l.message);
    else notice(l.message);
  });

  const info = await call("app_info");
  isDemo = !!info.demo;
  $("#demo").hidden = !isDemo;
  $("#add").hidden = isDemo;
  setDemo(info.demo);
  $("#footer").textContent = isDemo
    ? `Tokenwarden ${info.version} · demo · tokenwarden --config-dir ${info.control_dir} status`
    : `Tokenwarden ${info.version} · ${info.config_file}`;
  setupAutostart(info.autostart);
  for (const l of info.logins || []) notice(l.message);
  setConfigError(info.config_error);
  replaceAll(await call("list_status"));
  document.body.dataset.ready = "1";
  document.addEventListener("visibilitychange", tick);
  tick();
}

start().catch(showError);
