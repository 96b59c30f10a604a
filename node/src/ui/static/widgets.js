// Building blocks of the pages: tables whose rows are replaced only when
// their data changed, cards, page heads, state badges, allocation bars and
// per-host state lists.

import { h, clear, bar, mib, bytes } from "./dom.js";

/** Replaces `tbody`'s rows only when the data changed (keeps clicks and focus steady). */
export function renderRows(tbody, data, row, empty, colspan) {
  const key = JSON.stringify(data);
  if (tbody.dataset.key === key) return;
  tbody.dataset.key = key;
  clear(tbody);
  if (!data.length) tbody.append(h("tr", { class: "empty" }, h("td", { colspan }, empty)));
  else for (const d of data) tbody.append(row(d));
}

export function table(id, headers) {
  const tbody = h("tbody");
  const t = h("table", { id, class: "grid" }, h("thead", null, h("tr", null, headers.map((x) => h("th", null, x)))), tbody);
  return { table: t, tbody };
}

export function section(title, ...body) {
  return h("section", { class: "card" }, title ? h("h2", null, title) : null, ...body);
}

export function pageHead(title, ...tools) {
  return h("div", { class: "page-head" }, h("h1", null, title), h("div", { class: "tools" }, ...tools));
}

export function stateBadge(s) {
  return h("span", { class: `badge s-${String(s).replace(/[^a-z0-9-]/gi, "")}` }, s);
}

export function cpuBar(n) { return bar(n.allocated_vcpus, n.cpus, `${n.allocated_vcpus} / ${n.cpus} vCPU`); }
export function memBar(n) { return bar(n.allocated_memory_mib, n.memory_mib, `${mib(n.allocated_memory_mib)} / ${mib(n.memory_mib)}`); }

/** Per-host states of a storage domain or network (with free space or MTU when known). */
export function hostStates(list, key = "node") {
  return (list || []).map((x) => h("div", { class: `hoststate s-${x.state}`, title: x.message || "" },
    `${x[key]}: ${x.state}`, x.total_bytes ? ` (${bytes(x.free_bytes)} free of ${bytes(x.total_bytes)})` : "",
    x.mtu ? ` mtu ${x.mtu}` : ""));
}
