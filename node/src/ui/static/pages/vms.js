// The VMs page: the filterable list with each VM's actions (start, stop,
// restart, migrate with its dialog and dry run, consoles, delete), and the
// New VM button that opens the form (vm-form.js).

import { get, post, del, enc } from "/ui/api.js";
import { h, $, clear, mib } from "/ui/dom.js";
import { act, confirmDialog, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead, stateBadge } from "/ui/widgets.js";
import { newVmForm, explanationView } from "./vm-form.js";

export function vmsPage(view) {
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
