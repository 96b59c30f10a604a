// kvmesh web UI: session, header, hash router, live events (SSE) and the
// pages. No framework: each page renders into #view and may return
// {refresh, onEvent, dispose}.

import {
  api, get, put, post, del, enc, session, loadSession, login, logout, upload,
  setUnauthorizedHandler,
} from "./api.js";
import { h, $, $$, clear, bar, mib, bytes, age, when, debounce } from "./dom.js";

const state = {
  status: null,
  events: [],
  lastSeq: 0,
  es: null,
  headerTimer: null,
  signedIn: false,
};
const MAX_EVENTS = 2000;
let current = null; // the page shown: {name, refresh?, onEvent?, dispose?}

// ---------------------------------------------------------------- messages

let flashTimer = null;
function flash(text, kind = "error") {
  const el = $("#flash");
  clear(el);
  el.className = `flash ${kind}`;
  el.append(h("span", { class: "flash-text" }, text),
    h("button", { type: "button", class: "small flash-close", title: "Dismiss", onclick: () => { el.hidden = true; } }, "×"));
  el.hidden = false;
  clearTimeout(flashTimer);
  if (kind !== "error") flashTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

function failed(e) {
  if (e && e.status === 401) return; // the login form says it
  flash(e && e.message ? e.message : String(e));
}

/** Runs an action (a button's): disables the button meanwhile, reports errors. */
async function act(button, f, okText) {
  if (button) button.disabled = true;
  try {
    const r = await f();
    if (okText) flash(typeof okText === "function" ? okText(r) : okText, "info");
    if (current && current.refresh) current.refresh();
    return r;
  } catch (e) {
    failed(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A confirm dialog; with `check` a checkbox (its label): resolves {ok, checked}. */
function confirmDialog(text, { okLabel = "OK", check = null, danger = false } = {}) {
  const dlg = $("#confirm-dialog");
  const p = clear($("#confirm-text"));
  p.append(text);
  let box = null;
  if (check) {
    box = h("input", { type: "checkbox", id: "confirm-check" });
    p.append(h("label", { class: "check", for: "confirm-check" }, box, " ", check));
  }
  const ok = $("#confirm-ok");
  ok.textContent = okLabel;
  ok.classList.toggle("danger", danger);
  dlg.returnValue = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve({ ok: dlg.returnValue === "ok", checked: box ? box.checked : false }), { once: true });
    dlg.showModal();
    ok.focus();
  });
}

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

const refreshSoon = debounce(() => { if (current && current.refresh) current.refresh(); }, 300);

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
    if (current && current.onEvent) current.onEvent(ev);
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
  if (current && current.dispose) {
    try { current.dispose(); } catch (_) { /* going anyway */ }
  }
  current = null;
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
  current = page;
  if (page.refresh) page.refresh();
}

/** A refresh function that runs `load` now and every `ms`, one at a time. */
function poller(load, ms) {
  let timer = null, busy = false, again = false, gone = false;
  async function run() {
    if (gone) return;
    if (busy) { again = true; return; }
    busy = true;
    clearTimeout(timer);
    try { await load(); } catch (e) { failed(e); }
    busy = false;
    if (gone) return;
    if (again) { again = false; run(); return; }
    timer = setTimeout(run, ms);
  }
  run.stop = () => { gone = true; clearTimeout(timer); };
  return run;
}

/** Replaces `tbody`'s rows only when the data changed (keeps clicks and focus steady). */
function renderRows(tbody, data, row, empty, colspan) {
  const key = JSON.stringify(data);
  if (tbody.dataset.key === key) return;
  tbody.dataset.key = key;
  clear(tbody);
  if (!data.length) tbody.append(h("tr", { class: "empty" }, h("td", { colspan }, empty)));
  else for (const d of data) tbody.append(row(d));
}

function table(id, headers) {
  const tbody = h("tbody");
  const t = h("table", { id, class: "grid" }, h("thead", null, h("tr", null, headers.map((x) => h("th", null, x)))), tbody);
  return { table: t, tbody };
}

function section(title, ...body) {
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, ...body);
}

function pageHead(title, ...tools) {
  return h("div", { class: "page-head" }, h("h1", null, title), h("div", { class: "tools" }, ...tools));
}

function stateBadge(s) {
  return h("span", { class: `badge s-${String(s).replace(/[^a-z0-9-]/gi, "")}` }, s);
}

function cpuBar(n) { return bar(n.allocated_vcpus, n.cpus, `${n.allocated_vcpus} / ${n.cpus} vCPU`); }
function memBar(n) { return bar(n.allocated_memory_mib, n.memory_mib, `${mib(n.allocated_memory_mib)} / ${mib(n.memory_mib)}`); }

function eventRow(e) {
  const subject = e.subject ? `${e.subject.kind} ${e.subject.name}` : "";
  return h("tr", { dataset: { seq: e.seq } },
    h("td", { class: "time", title: e.time }, when(e.at_ms)),
    h("td", { class: "kind" }, e.kind),
    h("td", { class: "subject" }, subject),
    h("td", { class: "node" }, e.node || ""),
    h("td", { class: "principal" }, e.principal || ""),
    h("td", { class: "message" }, e.message));
}

// ---------------------------------------------------------------- dashboard

function dashboardPage(view) {
  const cards = {
    leader: h("div", { id: "dash-leader", class: "stat-value" }, "…"),
    term: h("div", { id: "dash-term", class: "stat-value" }, "…"),
    answered: h("div", { id: "dash-answered", class: "stat-value" }, "…"),
    hosts: h("div", { id: "dash-hostcount", class: "stat-value" }, "…"),
    vms: h("div", { id: "dash-vmcount", class: "stat-value" }, "…"),
    capacity: h("div", { id: "dash-capacity", class: "stat-value" }, "…"),
  };
  const stat = (label, el) => h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), el);
  const hosts = table("dash-hosts", ["Host", "State", "VMs", "CPU allocation", "Memory allocation"]);
  const capDetail = h("div", { id: "dash-capacity-detail", class: "muted small-text" });
  const recent = h("ul", { id: "dash-events", class: "event-list" });
  view.append(
    pageHead("Dashboard"),
    h("div", { class: "stats" },
      stat("Leader", cards.leader), stat("Term", cards.term), stat("Answered by", cards.answered),
      stat("Hosts up", cards.hosts), stat("VMs running", cards.vms), stat("HA capacity (N+1)", cards.capacity)),
    h("div", { class: "two" },
      section("Hosts", hosts.table, capDetail),
      section("Recent events", recent, h("a", { href: "#/events", class: "more" }, "All events →"))));

  function renderRecent() {
    clear(recent);
    const last = state.events.slice(-10).reverse();
    if (!last.length) recent.append(h("li", { class: "muted" }, "No events yet."));
    for (const e of last) {
      recent.append(h("li", { dataset: { seq: e.seq } },
        h("span", { class: "time" }, when(e.at_ms)), " ",
        h("span", { class: "kind" }, e.kind), " ",
        h("span", { class: "message" }, e.message)));
    }
  }
  renderRecent();

  const refresh = poller(async () => {
    const [s, nodes, vms, cap] = await Promise.all([
      get("/api/v1/cluster/status"),
      get("/api/v1/nodes"),
      get("/api/v1/vms"),
      get("/api/v1/cluster/capacity").catch((e) => ({ error: e })),
    ]);
    state.status = s;
    cards.leader.textContent = s.leader ? s.leader.name : "none";
    cards.leader.classList.toggle("bad", !s.leader);
    cards.term.textContent = String(s.term);
    cards.answered.textContent = `${s.node.name} (${s.node.raft_state})`;
    const up = nodes.filter((n) => n.state === "up").length;
    cards.hosts.textContent = `${up} / ${nodes.length}`;
    const running = vms.filter((v) => v.state === "running").length;
    cards.vms.textContent = `${running} / ${vms.length}`;
    clear(capDetail);
    if (cap.error) {
      cards.capacity.textContent = "unknown";
      capDetail.append(`Capacity: ${cap.error.message}`);
    } else {
      cards.capacity.textContent = cap.n_plus_1 ? "yes" : "no";
      cards.capacity.className = `stat-value ${cap.n_plus_1 ? "ok" : "bad"}`;
      const text = cap.n_plus_1
        ? `Every host's HA VMs could restart on the others (policy ${cap.policy}).`
        : `Losing ${cap.worst || "a host"} would leave HA VMs without room (policy ${cap.policy}).`;
      capDetail.append(text);
      for (const hc of cap.hosts || []) {
        if (hc.unplaceable && hc.unplaceable.length) {
          capDetail.append(h("div", null, `${hc.node}: ${hc.unplaceable.join(", ")} could not restart (short ${hc.short_vcpus} vCPU, ${mib(hc.short_memory_mib)})`));
        }
      }
    }
    renderRows(hosts.tbody, nodes, (n) => h("tr", { dataset: { node: n.name } },
      h("td", { class: "name" }, n.name, s.leader && s.leader.name === n.name ? h("span", { class: "tag" }, "leader") : null),
      h("td", { class: "state" }, stateBadge(n.state)),
      h("td", { class: "num" }, String(n.vms)),
      h("td", null, cpuBar(n)),
      h("td", null, memBar(n))), "No hosts.", 5);
  }, 5000);

  return { refresh, onEvent: renderRecent, dispose: refresh.stop };
}

// ---------------------------------------------------------------- hosts

function drainWord(state) {
  if (state === "draining") return "draining";
  if (state === "maintenance") return "drained";
  return "";
}

function hostsPage(view) {
  const t = table("hosts-table", ["Name", "State", "Draining", "VMs", "CPU allocation", "Memory allocation", "Heartbeat", "Notes", ""]);
  view.append(pageHead("Hosts"), section(null, t.table));

  async function drain(n, button) {
    const r = await confirmDialog(`Drain ${n.name}? Its VMs move to other hosts and it leaves placement until activated.`,
      { okLabel: "Drain", check: "Cold: stop the VMs and start them elsewhere (instead of live migration)", danger: true });
    if (!r.ok) return;
    await act(button, () => post(`/api/v1/nodes/${enc(n.name)}/drain${r.checked ? "?cold=true" : ""}`),
      (a) => `${n.name}: ${a && a.state ? a.state : "draining"}`);
  }
  async function activate(n, button) {
    const r = await confirmDialog(`Activate ${n.name}? It takes part in placement again.`, { okLabel: "Activate" });
    if (!r.ok) return;
    await act(button, () => post(`/api/v1/nodes/${enc(n.name)}/activate`), (a) => `${n.name}: ${a && a.state ? a.state : "active"}`);
  }

  const refresh = poller(async () => {
    const nodes = await get("/api/v1/nodes");
    renderRows(t.tbody, nodes, (n) => {
      const out = n.state === "draining" || n.state === "maintenance";
      const notes = [n.problem, n.fencing ? `fencing: ${n.fencing}` : null, n.reachable === false ? "unreachable" : null,
        n.uefi_missing ? `no UEFI: ${n.uefi_missing}` : null].filter(Boolean).join("; ");
      return h("tr", { dataset: { node: n.name, state: n.state } },
        h("td", { class: "name", title: n.address }, n.name, n.role ? h("span", { class: "tag" }, n.role) : null),
        h("td", { class: "state" }, stateBadge(n.state)),
        h("td", { class: "draining" }, drainWord(n.state)),
        h("td", { class: "num" }, String(n.vms)),
        h("td", null, cpuBar(n)),
        h("td", null, memBar(n)),
        h("td", { class: "heartbeat" }, n.heartbeat_age_ms != null ? age(n.heartbeat_age_ms) : ""),
        h("td", { class: "notes" }, notes),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "small w act-drain", dataset: { act: "drain" }, disabled: out,
            onclick: (e) => drain(n, e.currentTarget) }, "Drain"),
          h("button", { type: "button", class: "small w act-activate", dataset: { act: "activate" }, disabled: !out,
            onclick: (e) => activate(n, e.currentTarget) }, "Activate")));
    }, "No hosts.", 9);
  }, 3000);
  return { refresh, dispose: refresh.stop };
}

// ---------------------------------------------------------------- VMs

function vmsPage(view) {
  const filter = h("input", { id: "vm-filter", type: "search", placeholder: "Filter by name, host or state", spellcheck: "false" });
  const newBtn = h("button", { id: "vm-new", type: "button", class: "primary w" }, "New VM");
  const count = h("span", { id: "vm-count", class: "muted" });
  const t = table("vms-table", ["Name", "State", "Host", "vCPU", "Memory", "HA", "Image", ""]);
  const formPanel = h("section", { id: "vm-form-panel", class: "card", hidden: true });
  view.append(pageHead("Virtual machines", filter, count, newBtn), formPanel, section(null, t.table));

  let vms = [];
  let nodes = [];
  let form = null;

  function matches(v, q) {
    if (!q) return true;
    const hay = `${v.name} ${v.node || ""} ${v.state} ${v.desired} ${v.description || ""}`.toLowerCase();
    return q.toLowerCase().split(/\s+/).filter(Boolean).every((w) => hay.includes(w));
  }

  function actions(v) {
    const running = v.state === "running";
    const stopped = v.state === "stopped" || v.state === "crashed" || v.state === "failed";
    const b = (actName, label, disabled, f, write = true) => h("button", {
      type: "button", class: `small ${write ? "w" : ""} act-${actName}`, dataset: { act: actName }, disabled,
      onclick: (e) => f(e.currentTarget),
    }, label);
    const path = `/api/v1/vms/${enc(v.name)}`;
    return [
      b("start", "Start", running, (btn) => act(btn, () => post(`${path}/start`), `${v.name}: starting`)),
      b("stop", "Stop", stopped, async (btn) => {
        const r = await confirmDialog(`Stop ${v.name}? The guest is asked to shut down.`, { okLabel: "Stop", check: "Force: power off at once" });
        if (r.ok) act(btn, () => post(`${path}/stop${r.checked ? "?force=true" : ""}`), `${v.name}: stopping`);
      }),
      b("restart", "Restart", !running, async (btn) => {
        const r = await confirmDialog(`Restart ${v.name}?`, { okLabel: "Restart" });
        if (r.ok) act(btn, () => post(`${path}/restart`), `${v.name}: restarting`);
      }),
      b("migrate", "Migrate", !running, (btn) => migrate(v, btn)),
      b("console", "Console", !running, () => { location.hash = `#/console/${enc(v.name)}`; }, false),
      b("vnc", "VNC", !running, () => { location.hash = `#/vnc/${enc(v.name)}`; }, false),
      b("delete", "Delete", v.state === "deleting", async (btn) => {
        const r = await confirmDialog(`Delete ${v.name}? It is stopped and its disks are removed.`,
          { okLabel: "Delete", check: "Keep its disks", danger: true });
        if (r.ok) act(btn, () => del(`${path}${r.checked ? "?keep_disks=true" : ""}`), `${v.name}: deleting`);
      }),
    ];
  }

  function render() {
    const q = filter.value.trim();
    const shown = vms.filter((v) => matches(v, q));
    count.textContent = q ? `${shown.length} of ${vms.length}` : `${vms.length} VM${vms.length === 1 ? "" : "s"}`;
    renderRows(t.tbody, shown, (v) => {
      const host = v.migrating_to ? `${v.node || "?"} → ${v.migrating_to}` : (v.node || "");
      const stateTitle = [v.last_error, v.pending ? `waiting: ${v.pending}` : null,
        v.pending_changes && v.pending_changes.length ? `at next start: ${v.pending_changes.join(", ")}` : null].filter(Boolean).join("\n");
      return h("tr", { dataset: { vm: v.name, state: v.state } },
        h("td", { class: "name", title: v.description || "" }, v.name),
        h("td", { class: "state", title: stateTitle }, stateBadge(v.state),
          v.desired && v.desired !== v.state && v.state !== "running" && v.state !== "stopped" ? h("span", { class: "muted" }, ` → ${v.desired}`) : null,
          v.last_error ? h("span", { class: "warn", title: v.last_error }, " ⚠") : null),
        h("td", { class: "host" }, host),
        h("td", { class: "vcpus num" }, String(v.vcpus)),
        h("td", { class: "memory num" }, mib(v.memory_mib)),
        h("td", { class: "ha" }, v.ha ? "yes" : ""),
        h("td", { class: "image" }, v.image || v.kernel || ""),
        h("td", { class: "actions" }, actions(v)));
    }, q ? "No VM matches the filter." : "No VMs yet: New VM makes one.", 8);
  }
  filter.addEventListener("input", render);

  // ---- migrate dialog
  async function migrate(v, button) {
    const dlg = $("#migrate-dialog");
    $("#migrate-vm").textContent = v.name;
    const sel = clear($("#migrate-to"));
    sel.append(h("option", { value: "" }, "Let the scheduler choose"));
    for (const n of nodes) {
      if (n.name === v.node) continue;
      sel.append(h("option", { value: n.name, disabled: n.state !== "up" }, `${n.name} (${n.state})`));
    }
    const preview = clear($("#migrate-preview"));
    const spec = (dry) => { const b = { dry_run: dry }; if (sel.value) b.to = sel.value; return b; };
    const dry = $("#migrate-dry");
    dry.onclick = async () => {
      clear(preview).append("Asking the scheduler…");
      try {
        const m = await post(`/api/v1/vms/${enc(v.name)}/migrate`, spec(true));
        clear(preview).append(m && m.explanation ? explanationView(m.explanation) : "No explanation.");
      } catch (e) {
        clear(preview).append(h("span", { class: "error" }, e.message));
      }
    };
    dlg.returnValue = "";
    dlg.showModal();
    dlg.addEventListener("close", () => {
      dry.onclick = null;
      if (dlg.returnValue !== "ok") return;
      act(button, () => post(`/api/v1/vms/${enc(v.name)}/migrate`, spec(false)),
        () => `${v.name}: migrating${sel.value ? ` to ${sel.value}` : ""}`);
    }, { once: true });
  }

  // ---- new VM form
  newBtn.addEventListener("click", () => {
    if (!formPanel.hidden) { $("#vm-name").focus(); return; }
    form = newVmForm(formPanel, () => vms, () => { formPanel.hidden = true; clear(formPanel); form = null; refresh(); });
    formPanel.hidden = false;
    $("#vm-name").focus();
  });

  const refresh = poller(async () => {
    const [v, n] = await Promise.all([get("/api/v1/vms"), get("/api/v1/nodes").catch(() => nodes)]);
    vms = v;
    nodes = n;
    render();
  }, 3000);
  return {
    refresh,
    dispose() { refresh.stop(); if (form) form.dispose(); },
  };
}

function explanationView(x) {
  const chosen = x.chosen
    ? h("p", { class: "chosen" }, "Would place on ", h("strong", { id: "vm-preview-chosen" }, x.chosen), ` (policy ${x.policy}).`)
    : h("p", { class: "error" }, `No host can take it (policy ${x.policy}).`);
  const rows = (x.nodes || []).slice().sort((a, b) => (b.chosen - a.chosen) || (b.feasible - a.feasible) || (b.score - a.score));
  const t = h("table", { class: "grid compact" },
    h("thead", null, h("tr", null, ["Host", "Fits", "Score", "Why"].map((c) => h("th", null, c)))),
    h("tbody", null, rows.map((n) => h("tr", { class: n.chosen ? "chosen" : n.feasible ? "" : "infeasible", dataset: { node: n.node } },
      h("td", null, n.node),
      h("td", null, n.feasible ? "yes" : "no"),
      h("td", { class: "num", title: `policy ${n.policy_score.toFixed(2)}, labels ${n.label_score.toFixed(2)}, groups ${n.group_score.toFixed(2)}` },
        n.feasible ? n.score.toFixed(2) : ""),
      h("td", null, n.reason)))));
  return h("div", null, chosen, t);
}

function newVmForm(panel, existing, done) {
  const field = (label, input, hint) => h("div", { class: "field" }, h("label", { for: input.id }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
  const name = h("input", { id: "vm-name", required: true, pattern: "[a-z0-9\\-]{1,63}", maxlength: "63", spellcheck: "false", placeholder: "web-1" });
  const vcpus = h("input", { id: "vm-vcpus", type: "number", min: "1", max: "256", value: "1", required: true });
  const memory = h("input", { id: "vm-memory", type: "number", min: "1", step: "1", value: "512", required: true });
  const ha = h("input", { id: "vm-ha", type: "checkbox" });
  const image = h("select", { id: "vm-image" }, h("option", { value: "" }, "(none)"));
  const diskGib = h("input", { id: "vm-disk-gib", type: "number", min: "0", value: "0" });
  const storage = h("select", { id: "vm-storage" }, h("option", { value: "" }, "(cluster default)"));
  const network = h("select", { id: "vm-network" }, h("option", { value: "" }, "(no NIC)"));
  const cdrom = h("select", { id: "vm-cdrom" }, h("option", { value: "" }, "(none)"));
  const kernel = h("select", { id: "vm-kernel" }, h("option", { value: "" }, "(boot from disk or CD-ROM)"));
  const initrd = h("select", { id: "vm-initrd" }, h("option", { value: "" }, "(none)"));
  const cmdline = h("input", { id: "vm-cmdline", spellcheck: "false", placeholder: "console=ttyS0" });
  const description = h("input", { id: "vm-description", maxlength: "200" });
  const error = h("p", { id: "vm-form-error", class: "error", hidden: true });
  const preview = h("div", { id: "vm-preview", class: "preview", dataset: { state: "idle" } }, h("span", { class: "muted" }, "Fill in the form to see where the scheduler would place it."));
  const submit = h("button", { id: "vm-submit", type: "submit", class: "primary" }, "Create VM");
  const cancel = h("button", { id: "vm-cancel", type: "button" }, "Cancel");
  const f = h("form", { id: "vm-form", class: "vm-form", novalidate: true },
    h("div", { class: "form-grid" },
      field("Name", name, "lower-case letters, digits and -"),
      field("vCPUs", vcpus),
      field("Memory (MiB)", memory),
      h("div", { class: "field" }, h("label", { class: "check", for: "vm-ha" }, ha, " Highly available (restart elsewhere if its host fails)")),
      field("Image (boot disk)", image, "optional"),
      field("Blank disk (GiB)", diskGib, "0: none"),
      field("Storage for the blank disk", storage),
      field("Network", network, "optional"),
      field("CD-ROM (ISO image)", cdrom, "to install from"),
      field("Kernel (direct boot)", kernel, "optional"),
      field("Initrd", initrd, "with the kernel"),
      field("Kernel command line", cmdline, "with the kernel"),
      field("Description", description)),
    h("div", { class: "buttons" }, cancel, submit), error);
  clear(panel).append(h("h2", null, "New VM"), h("div", { class: "two" }, f,
    h("div", null, h("h3", null, "Scheduler preview"), preview)));

  // Fill the selects from the API.
  get("/api/v1/images").then((list) => {
    const label = (i) => `${i.name} (${i.format}, ${bytes(i.virtual_bytes)}${i.host ? `, on ${i.host}` : ""})`;
    const into = { disk: image, iso: cdrom, kernel, initrd };
    for (const i of list) {
      const select = into[i.kind || "disk"];
      if (select) select.append(h("option", { value: i.name }, label(i)));
    }
  }).catch(() => {});
  get("/api/v1/storage").then((list) => {
    for (const s of list) storage.append(h("option", { value: s.name }, `${s.name} (${s.kind})`));
  }).catch(() => {});
  get("/api/v1/networks").then((list) => {
    for (const n of list) network.append(h("option", { value: n.name }, `${n.name} (${n.kind})`));
  }).catch(() => {});

  function spec() {
    const s = {
      vcpus: parseInt(vcpus.value, 10),
      memory_mib: parseInt(memory.value, 10),
      ha: ha.checked,
    };
    if (description.value.trim()) s.description = description.value.trim();
    if (image.value) s.image = image.value;
    const gib = parseFloat(diskGib.value || "0");
    if (gib > 0) s.disks = [{ size_bytes: Math.round(gib * 1024 * 1024 * 1024), storage: storage.value }];
    if (network.value) s.nics = [{ network: network.value }];
    if (cdrom.value) s.cdrom = cdrom.value;
    if (kernel.value) {
      s.kernel = kernel.value;
      if (initrd.value) s.initrd = initrd.value;
      if (cmdline.value.trim()) s.cmdline = cmdline.value.trim();
    }
    return s;
  }

  function problemOf() {
    const s = spec();
    if (!name.value.trim()) return "A name is needed.";
    if (!name.checkValidity()) return "The name takes 1-63 lower-case letters, digits and -.";
    if (!(s.vcpus >= 1)) return "vCPUs must be at least 1.";
    if (!(s.memory_mib >= 1)) return "Memory must be at least 1 MiB.";
    return null;
  }

  let seq = 0;
  const explain = debounce(async () => {
    const mine = ++seq;
    const s = spec();
    if (!(s.vcpus >= 1) || !(s.memory_mib >= 1)) {
      preview.dataset.state = "idle";
      clear(preview).append(h("span", { class: "muted" }, "vCPUs and memory are needed for a preview."));
      return;
    }
    preview.dataset.state = "loading";
    preview.classList.add("loading");
    const vmName = name.value.trim() && name.checkValidity() ? name.value.trim() : "new-vm";
    try {
      const x = await post(`/api/v1/vms/${enc(vmName)}/explain`, s);
      if (mine !== seq) return;
      clear(preview).append(explanationView(x));
      preview.dataset.state = "ready";
    } catch (e) {
      if (mine !== seq) return;
      clear(preview).append(h("p", { class: "error" }, e.message));
      preview.dataset.state = "error";
    } finally {
      if (mine === seq) preview.classList.remove("loading");
    }
  }, 350);
  for (const el of [name, vcpus, memory, ha, image, diskGib, storage, network, cdrom, kernel, initrd, cmdline]) {
    el.addEventListener("input", explain);
    el.addEventListener("change", explain);
  }
  explain();

  cancel.addEventListener("click", () => { explain.cancel(); seq++; done(); });
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = problemOf();
    error.hidden = !p;
    error.textContent = p || "";
    if (p) return;
    const vmName = name.value.trim();
    if (existing().some((v) => v.name === vmName)) {
      error.hidden = false;
      error.textContent = `A VM named ${vmName} exists already.`;
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const vm = await put(`/api/v1/vms/${enc(vmName)}`, spec());
      explain.cancel();
      seq++;
      flash(`VM ${vmName} created${vm && vm.node ? ` on ${vm.node}` : ""}.`, "info");
      done();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
      submit.disabled = false;
      submit.textContent = "Create VM";
    }
  });
  return { dispose() { explain.cancel(); seq++; } };
}

// ---------------------------------------------------------------- consoles

function consoleHead(kind, vm) {
  return pageHead(`${kind} — ${vm}`, h("a", { href: "#/vms", class: "button small" }, "← VMs"));
}

function consolePage(view, vm) {
  const status = h("div", { id: "console-status", class: "console-status", dataset: { state: "connecting" } }, "Loading the terminal…");
  const termEl = h("div", { id: "console-term", class: "term" });
  const reconnect = h("button", { id: "console-reconnect", type: "button", class: "small" }, "Reconnect");
  const force = h("button", { id: "console-force", type: "button", class: "small w", title: "Take the console over from whoever holds it" }, "Take over");
  const fit = h("input", { id: "console-fit", type: "checkbox" });
  view.append(consoleHead("Serial console", vm),
    h("div", { class: "console-bar" }, status, h("span", { class: "spacer" }),
      h("label", { class: "check", for: "console-fit" }, fit, " Fit to window"), reconnect, force),
    termEl);
  const setStatus = (s, text) => {
    status.dataset.state = s;
    status.className = `console-status ${s}`;
    status.textContent = text;
  };
  let con = null, gone = false;
  import("./console.js").then(({ openSerial }) => {
    if (gone) return;
    con = openSerial(termEl, vm, setStatus);
    con.connect(false);
    reconnect.addEventListener("click", () => con.connect(false));
    force.addEventListener("click", () => con.connect(true));
    fit.addEventListener("change", () => con.setFit(fit.checked));
  }).catch((e) => setStatus("error", `The terminal failed to load: ${e.message}`));
  return { dispose() { gone = true; if (con) con.dispose(); } };
}

function vncPage(view, vm) {
  const status = h("div", { id: "vnc-status", class: "console-status", dataset: { state: "connecting" } }, "Loading…");
  const screen = h("div", { id: "vnc-screen", class: "vnc-screen" });
  const reconnect = h("button", { id: "vnc-reconnect", type: "button", class: "small" }, "Reconnect");
  const cad = h("button", { id: "vnc-cad", type: "button", class: "small w" }, "Ctrl-Alt-Del");
  view.append(consoleHead("Graphical console", vm),
    h("div", { class: "console-bar" }, status, h("span", { class: "spacer" }), cad, reconnect), screen);
  const setStatus = (s, text) => {
    status.dataset.state = s;
    status.className = `console-status ${s}`;
    status.textContent = text;
  };
  let v = null, gone = false, mod = null;
  function open() {
    if (v) v.dispose();
    clear(screen);
    v = mod.openVnc(screen, vm, setStatus);
  }
  import("./vnc.js").then((m) => {
    if (gone) return;
    mod = m;
    open();
    reconnect.addEventListener("click", open);
    cad.addEventListener("click", () => v && v.sendCtrlAltDel());
  }).catch((e) => setStatus("error", `The VNC viewer failed to load: ${e.message}`));
  return { dispose() { gone = true; if (v) v.dispose(); } };
}

// ---------------------------------------------------------------- storage

function hostStates(list, key = "node") {
  return (list || []).map((x) => h("div", { class: `hoststate s-${x.state}`, title: x.message || "" },
    `${x[key]}: ${x.state}`, x.total_bytes ? ` (${bytes(x.free_bytes)} free of ${bytes(x.total_bytes)})` : "",
    x.mtu ? ` mtu ${x.mtu}` : ""));
}

function storagePage(view) {
  const t = table("storage-table", ["Name", "Kind", "Location", "Shared", "Hosts", "Disks", "Images", "On hosts", ""]);
  const name = h("input", { id: "storage-name", required: true, spellcheck: "false" });
  const kind = h("select", { id: "storage-kind" }, ["local", "shared-dir", "nfs"].map((k) => h("option", { value: k }, k)));
  const path = h("input", { id: "storage-path", placeholder: "local: default the data dir's images" });
  const server = h("input", { id: "storage-server" });
  const exp = h("input", { id: "storage-export" });
  const nodes = h("input", { id: "storage-nodes", placeholder: "empty: every host" });
  const submit = h("button", { id: "storage-submit", type: "submit", class: "primary" }, "Add");
  const f = h("form", { id: "storage-form", class: "inline-form w" },
    h("label", null, "Name ", name), h("label", null, "Kind ", kind),
    h("label", { class: "f-path" }, "Path ", path),
    h("label", { class: "f-nfs" }, "Server ", server), h("label", { class: "f-nfs" }, "Export ", exp),
    h("label", null, "Hosts ", nodes), submit);
  const showFields = () => {
    for (const el of $$(".f-nfs", f)) el.hidden = kind.value !== "nfs";
    for (const el of $$(".f-path", f)) el.hidden = kind.value === "nfs";
  };
  kind.addEventListener("change", showFields);
  showFields();
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { kind: kind.value };
    if (kind.value === "nfs") {
      body.server = server.value.trim();
      body.export = exp.value.trim();
    } else if (path.value.trim()) body.path = path.value.trim();
    const list = nodes.value.split(/[\s,]+/).filter(Boolean);
    if (list.length) body.nodes = list;
    if (!name.value.trim()) { flash("The storage domain needs a name."); return; }
    const r = await act(submit, () => put(`/api/v1/storage/${enc(name.value.trim())}`, body), `Storage ${name.value.trim()} added.`);
    if (r !== undefined) { f.reset(); showFields(); }
  });
  view.append(pageHead("Storage domains"), section("Add a storage domain", f), section(null, t.table));

  const refresh = poller(async () => {
    const list = await get("/api/v1/storage");
    renderRows(t.tbody, list, (s) => h("tr", { dataset: { storage: s.name } },
      h("td", { class: "name", title: s.id }, s.name),
      h("td", null, s.kind),
      h("td", { class: "mono" }, s.location),
      h("td", null, s.shared ? "yes" : ""),
      h("td", null, s.nodes && s.nodes.length ? s.nodes.join(", ") : "all"),
      h("td", { class: "num" }, String(s.disks)),
      h("td", { class: "num" }, String(s.images)),
      h("td", null, hostStates(s.hosts), s.pending_deletions ? h("div", { class: "muted" }, `${s.pending_deletions} deletion(s) pending`) : null),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "small w danger", dataset: { act: "delete" },
        onclick: async (e) => {
          const btn = e.currentTarget;
          const r = await confirmDialog(`Remove storage domain ${s.name}?`, { okLabel: "Remove", danger: true });
          if (r.ok) act(btn, () => del(`/api/v1/storage/${enc(s.name)}`), `Storage ${s.name} removed.`);
        },
      }, "Remove"))), "No storage domains.", 9);
  }, 5000);
  return { refresh, dispose: refresh.stop };
}

// ---------------------------------------------------------------- images

function imagesPage(view) {
  const t = table("images-table", ["Name", "Kind", "Format", "Size", "File", "Storage", "Host", "Used by", "Added", ""]);
  const file = h("input", { id: "image-file", type: "file", required: true });
  const name = h("input", { id: "image-name", required: true, spellcheck: "false" });
  const storage = h("select", { id: "image-storage", required: true });
  const kind = h("select", { id: "image-kind" }, ["disk", "iso", "kernel", "initrd"].map((k) => h("option", { value: k }, k)));
  const submit = h("button", { id: "image-submit", type: "submit", class: "primary" }, "Upload");
  const cancel = h("button", { id: "image-cancel", type: "button", hidden: true }, "Cancel");
  const progress = h("progress", { id: "image-progress", max: "100", value: "0", hidden: true });
  const progressText = h("span", { id: "image-progress-text", class: "muted" });
  const f = h("form", { id: "image-form", class: "inline-form w" },
    h("label", null, "File ", file), h("label", null, "Name ", name), h("label", null, "Storage ", storage),
    h("label", null, "Kind ", kind), submit, cancel, progress, progressText);
  view.append(pageHead("Images"), section("Upload an image", f), section(null, t.table));

  get("/api/v1/storage").then((list) => {
    clear(storage);
    for (const s of list) storage.append(h("option", { value: s.name }, `${s.name} (${s.kind})`));
    if (!list.length) storage.append(h("option", { value: "" }, "(no storage domain)"));
  }).catch(failed);

  file.addEventListener("change", () => {
    const fl = file.files[0];
    if (!fl) return;
    if (!name.value) name.value = fl.name.toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^[.-]+/, "").slice(0, 63);
    if (/\.iso$/i.test(fl.name)) kind.value = "iso";
  });

  let job = null;
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const fl = file.files[0];
    if (!fl) { flash("Choose a file to upload."); return; }
    if (!name.value.trim()) { flash("The image needs a name."); return; }
    if (!storage.value) { flash("Choose a storage domain (add one on the Storage page)."); return; }
    const nm = name.value.trim();
    submit.disabled = true;
    cancel.hidden = false;
    progress.hidden = false;
    progress.value = 0;
    const started = Date.now();
    job = upload(`/api/v1/images/${enc(nm)}?storage=${enc(storage.value)}&kind=${enc(kind.value)}`, fl, (loaded, total) => {
      const pct = total ? (100 * loaded) / total : 0;
      progress.value = pct;
      const rate = loaded / Math.max(0.001, (Date.now() - started) / 1000);
      progressText.textContent = loaded >= total
        ? "Uploaded: the node is checking the image…"
        : `${pct.toFixed(0)}% (${bytes(loaded)} of ${bytes(total)}, ${bytes(rate)}/s)`;
    });
    try {
      const img = await job.promise;
      flash(`Image ${nm} uploaded${img && img.format ? ` (${img.format})` : ""}.`, "info");
      f.reset();
      progressText.textContent = "";
      refresh();
    } catch (err) {
      failed(err);
      progressText.textContent = "";
    } finally {
      job = null;
      submit.disabled = false;
      cancel.hidden = true;
      progress.hidden = true;
    }
  });
  cancel.addEventListener("click", () => job && job.abort());

  const refresh = poller(async () => {
    const list = await get("/api/v1/images");
    renderRows(t.tbody, list, (i) => h("tr", { dataset: { image: i.name } },
      h("td", { class: "name", title: `sha256 ${i.sha256}` }, i.name),
      h("td", null, i.kind),
      h("td", null, i.format),
      h("td", { class: "num" }, bytes(i.virtual_bytes)),
      h("td", { class: "num" }, bytes(i.file_bytes)),
      h("td", null, i.storage),
      h("td", null, i.host || ""),
      h("td", null, (i.used_by || []).join(", ")),
      h("td", null, when(i.created_at_ms)),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "small w danger", dataset: { act: "delete" }, disabled: (i.used_by || []).length > 0,
        onclick: async (e) => {
          const btn = e.currentTarget;
          const r = await confirmDialog(`Delete image ${i.name}?`, { okLabel: "Delete", danger: true });
          if (r.ok) act(btn, () => del(`/api/v1/images/${enc(i.name)}`), `Image ${i.name} deleted.`);
        },
      }, "Delete"))), "No images.", 10);
  }, 5000);
  return { refresh, dispose() { refresh.stop(); if (job) job.abort(); } };
}

// ---------------------------------------------------------------- networks

function networksPage(view) {
  const t = table("networks-table", ["Name", "Kind", "Bridge", "Uplink / VLAN / VNI", "MTU", "Required", "NICs", "On hosts", ""]);
  const name = h("input", { id: "network-name", required: true, spellcheck: "false" });
  const kind = h("select", { id: "network-kind" }, ["isolated", "bridge", "vlan", "vxlan"].map((k) => h("option", { value: k }, k)));
  const bridge = h("input", { id: "network-bridge" });
  const uplink = h("input", { id: "network-uplink" });
  const vlan = h("input", { id: "network-vlan", type: "number", min: "1", max: "4094" });
  const vni = h("input", { id: "network-vni", type: "number", min: "1", max: "16777215" });
  const mtu = h("input", { id: "network-mtu", type: "number", min: "68", max: "65535", placeholder: "default" });
  const required = h("input", { id: "network-required", type: "checkbox" });
  const submit = h("button", { id: "network-submit", type: "submit", class: "primary" }, "Add");
  const f = h("form", { id: "network-form", class: "inline-form w" },
    h("label", null, "Name ", name), h("label", null, "Kind ", kind),
    h("label", { class: "f-bridge" }, "Bridge ", bridge),
    h("label", { class: "f-vlan" }, "Uplink ", uplink), h("label", { class: "f-vlan" }, "VLAN ", vlan),
    h("label", { class: "f-vxlan" }, "VNI ", vni),
    h("label", null, "MTU ", mtu), h("label", { class: "check" }, required, " Required"), submit);
  const showFields = () => {
    for (const el of $$(".f-bridge", f)) el.hidden = kind.value !== "bridge";
    for (const el of $$(".f-vlan", f)) el.hidden = kind.value !== "vlan";
    for (const el of $$(".f-vxlan", f)) el.hidden = kind.value !== "vxlan";
  };
  kind.addEventListener("change", showFields);
  showFields();
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const nm = name.value.trim();
    if (!nm) { flash("The network needs a name."); return; }
    const body = { kind: kind.value, required: required.checked };
    if (kind.value === "bridge" && bridge.value.trim()) body.bridge = bridge.value.trim();
    if (kind.value === "vlan") {
      if (uplink.value.trim()) body.uplink = uplink.value.trim();
      if (vlan.value) body.vlan = parseInt(vlan.value, 10);
    }
    if (kind.value === "vxlan" && vni.value) body.vni = parseInt(vni.value, 10);
    if (mtu.value) body.mtu = parseInt(mtu.value, 10);
    const r = await act(submit, () => put(`/api/v1/networks/${enc(nm)}`, body), `Network ${nm} added.`);
    if (r !== undefined) { f.reset(); showFields(); }
  });
  view.append(pageHead("Networks"), section("Add a network", f), section(null, t.table));

  const refresh = poller(async () => {
    const list = await get("/api/v1/networks");
    renderRows(t.tbody, list, (n) => h("tr", { dataset: { network: n.name } },
      h("td", { class: "name" }, n.name),
      h("td", null, n.kind),
      h("td", { class: "mono" }, n.bridge || ""),
      h("td", null, [n.uplink, n.vlan != null ? `vlan ${n.vlan}` : null, n.vni != null ? `vni ${n.vni}` : null].filter(Boolean).join(" · ")),
      h("td", { class: "num" }, n.mtu != null ? String(n.mtu) : ""),
      h("td", null, n.required ? "yes" : ""),
      h("td", { class: "num" }, String(n.nics)),
      h("td", null, hostStates(n.hosts)),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "small w danger", dataset: { act: "delete" }, disabled: n.nics > 0,
        onclick: async (e) => {
          const btn = e.currentTarget;
          const r = await confirmDialog(`Remove network ${n.name}?`, { okLabel: "Remove", danger: true });
          if (r.ok) act(btn, () => del(`/api/v1/networks/${enc(n.name)}`), `Network ${n.name} removed.`);
        },
      }, "Remove"))), "No networks.", 9);
  }, 5000);
  return { refresh, dispose: refresh.stop };
}

// ---------------------------------------------------------------- events

function eventsPage(view) {
  const filter = h("input", { id: "events-filter", type: "search", placeholder: "Filter events", spellcheck: "false" });
  const live = h("span", { id: "events-count", class: "muted" });
  const t = table("events-table", ["Time", "Kind", "Subject", "Host", "By", "Message"]);
  view.append(pageHead("Events", filter, live), section(null, t.table));
  const SHOWN = 500;
  const match = (e) => {
    const q = filter.value.trim().toLowerCase();
    if (!q) return true;
    const hay = `${e.kind} ${e.message} ${e.node || ""} ${e.principal || ""} ${e.subject ? `${e.subject.kind} ${e.subject.name}` : ""}`.toLowerCase();
    return q.split(/\s+/).every((w) => hay.includes(w));
  };
  function render() {
    clear(t.tbody);
    const list = state.events.filter(match).slice(-SHOWN).reverse();
    if (!list.length) t.tbody.append(h("tr", { class: "empty" }, h("td", { colspan: 6 }, "No events.")));
    for (const e of list) t.tbody.append(eventRow(e));
    live.textContent = `${state.events.length} events, newest first`;
  }
  filter.addEventListener("input", render);
  render();
  return {
    onEvent(e) {
      live.textContent = `${state.events.length} events, newest first`;
      if (!match(e)) return;
      const empty = $("tr.empty", t.tbody);
      if (empty) empty.remove();
      const row = eventRow(e);
      row.classList.add("fresh");
      t.tbody.prepend(row);
      while (t.tbody.rows.length > SHOWN) t.tbody.deleteRow(-1);
    },
  };
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
