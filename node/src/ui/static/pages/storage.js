// The storage page: the storage domains (local, shared-dir, NFS) with their
// state on each host, the form that adds one, and Remove.

import { get, put, del, enc } from "/ui/api.js";
import { h, $$ } from "/ui/dom.js";
import { flash, act, confirmDialog, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead, hostStates } from "/ui/widgets.js";

export function storagePage(view) {
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
