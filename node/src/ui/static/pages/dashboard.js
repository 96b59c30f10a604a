// The dashboard page: leader, term, answering node, hosts up, VMs running
// and HA capacity (N+1), the hosts' allocations, and the recent events (from
// the shell's live event log).

import { get } from "/ui/api.js";
import { h, clear, mib, when } from "/ui/dom.js";
import { state, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead, stateBadge, cpuBar, memBar } from "/ui/widgets.js";

export function dashboardPage(view) {
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
