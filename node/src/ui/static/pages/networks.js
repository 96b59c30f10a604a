// The networks page: the networks (isolated, bridge, VLAN, VXLAN) with their
// state on each host, the form that adds one, and Remove.

import { get, put, del, enc } from "/ui/api.js";
import { h, $$ } from "/ui/dom.js";
import { flash, act, confirmDialog, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead, hostStates } from "/ui/widgets.js";

export function networksPage(view) {
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
