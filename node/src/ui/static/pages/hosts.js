// The hosts page: every host's state, allocations, heartbeat and notes,
// with Drain (live or cold) and Activate.

import { get, post, enc } from "/ui/api.js";
import { h, age } from "/ui/dom.js";
import { act, confirmDialog, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead, stateBadge, cpuBar, memBar } from "/ui/widgets.js";

function drainWord(state) {
  if (state === "draining") return "draining";
  if (state === "maintenance") return "drained";
  return "";
}

export function hostsPage(view) {
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
