// kvmesh web UI: boot, session (login form, sign-out, an ended session),
// the header, the hash router and the live event stream (SSE). No framework:
// each page (pages/*.js) renders into #view and may return
// {refresh, onEvent, dispose}; what pages share with this shell is in
// shell.js, their building blocks in widgets.js.

import { get, session, loadSession, login, logout, setUnauthorizedHandler } from "./api.js";
import { $, $$, clear, debounce } from "./dom.js";
import { state, MAX_EVENTS, flash, failed } from "./shell.js";
import { dashboardPage } from "./pages/dashboard.js";
import { hostsPage } from "./pages/hosts.js";
import { vmsPage } from "./pages/vms.js";
import { storagePage } from "./pages/storage.js";
import { imagesPage } from "./pages/images.js";
import { networksPage } from "./pages/networks.js";
import { eventsPage } from "./pages/events.js";
import { consolePage, vncPage } from "./pages/consoles.js";

// ---------------------------------------------------------------- session

function showLogin(message) {
  state.signedIn = false;
  stopStream();
  clearInterval(state.headerTimer);
  disposePage();
  $("#boot").hidden = true;
  $("#app").hidden = true;
  $("#login").hidden = false;
  const err = $("#login-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("#login-token").value = "";
  $("#login-token").focus();
}

async function start() {
  state.signedIn = true;
  $("#boot").hidden = true;
  $("#login").hidden = true;
  $("#app").hidden = false;
  document.body.dataset.role = session.role || "";
  $("#hdr-user").textContent = `${session.name} (${session.role})`;
  refreshHeader();
  clearInterval(state.headerTimer);
  state.headerTimer = setInterval(refreshHeader, 5000);
  await loadEvents();
  startStream();
  route();
}

async function refreshHeader() {
  try {
    const s = await get("/api/v1/cluster/status");
    state.status = s;
    $("#hdr-cluster").textContent = s.cluster_id || "(not initialized)";
    const leader = s.leader ? s.leader.name : "none";
    $("#hdr-status").textContent = `answered by ${s.node.name} · leader ${leader} · term ${s.term}`;
    $("#hdr-status").classList.toggle("bad", !s.leader);
  } catch (e) {
    if (e.status !== 401) $("#hdr-status").textContent = `status unavailable: ${e.message}`;
  }
}

let sessionCheck = 0;
function unauthorized() {
  if (!state.signedIn) return;
  showLogin("Your session ended: sign in again.");
}

// ---------------------------------------------------------------- events (SSE)

async function loadEvents() {
  try {
    const all = await get("/api/v1/events");
    state.events = all.slice(-MAX_EVENTS);
    state.lastSeq = all.reduce((m, e) => Math.max(m, e.seq), 0);
  } catch (e) {
    failed(e);
  }
}

function setLive(on) {
  const el = $("#hdr-live");
  el.classList.toggle("on", on);
  el.title = on ? "live: following the event log" : "not live: reconnecting to the event stream";
}

const refreshSoon = debounce(() => { if (state.current && state.current.refresh) state.current.refresh(); }, 300);

function startStream() {
  stopStream();
  const es = new EventSource(`/api/v1/events/stream?after=${state.lastSeq}`);
  state.es = es;
  es.onopen = () => setLive(true);
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    if (typeof ev.seq !== "number" || ev.seq <= state.lastSeq) return;
    state.lastSeq = ev.seq;
    state.events.push(ev);
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
    setLive(true);
    if (state.current && state.current.onEvent) state.current.onEvent(ev);
    refreshSoon();
  };
  // The node's own "error" event (with data), or the connection's.
  es.addEventListener("error", (e) => {
    setLive(false);
    if (e.data) flash(`Event stream: ${e.data}`);
    const now = Date.now();
    if (now - sessionCheck > 5000) {
      sessionCheck = now;
      loadSession().then((s) => { if (!s) unauthorized(); }).catch(() => {});
    }
  });
}

function stopStream() {
  if (state.es) { state.es.close(); state.es = null; }
  setLive(false);
}

// ---------------------------------------------------------------- router

const pages = {
  dashboard: dashboardPage,
  hosts: hostsPage,
  vms: vmsPage,
  storage: storagePage,
  images: imagesPage,
  networks: networksPage,
  events: eventsPage,
  console: consolePage,
  vnc: vncPage,
};
const navOf = { console: "vms", vnc: "vms" };

function disposePage() {
  if (state.current && state.current.dispose) {
    try { state.current.dispose(); } catch (_) { /* going anyway */ }
  }
  state.current = null;
}

function route() {
  if (!state.signedIn) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const name = parts[0] || "dashboard";
  let arg;
  try { arg = parts.slice(1).map(decodeURIComponent).join("/"); } catch (_) { arg = null; }
  if (!pages[name] || arg === null) { location.hash = "#/dashboard"; return; }
  disposePage();
  $("#flash").hidden = true;
  for (const a of $$("nav.side a")) a.classList.toggle("active", a.id === `nav-${navOf[name] || name}`);
  const view = clear($("#view"));
  view.dataset.page = name;
  const page = pages[name](view, arg) || {};
  page.name = name;
  state.current = page;
  if (page.refresh) page.refresh();
}

// ---------------------------------------------------------------- boot

function boot() {
  setUnauthorizedHandler(unauthorized);
  window.addEventListener("hashchange", route);
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("#login-token").value.trim();
    const err = $("#login-error");
    if (!token) { err.hidden = false; err.textContent = "Enter a token."; return; }
    const btn = $("#login-submit");
    btn.disabled = true;
    try {
      await login(token);
      $("#login-token").value = "";
      err.hidden = true;
      await start();
    } catch (ex) {
      err.hidden = false;
      err.textContent = ex.status === 401 ? (ex.message || "That token is not valid.") : ex.message;
    } finally {
      btn.disabled = false;
    }
  });
  $("#logout").addEventListener("click", async () => {
    await logout().catch(() => {});
    showLogin("");
  });
  loadSession().then((s) => {
    if (s) start();
    else showLogin("");
  }).catch((e) => showLogin(`The node did not answer: ${e.message}`));
}

boot();
