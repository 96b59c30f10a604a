// The events page: the event log, newest first, filterable; new events come
// from the shell's live stream (onEvent) and are prepended without a reload.

import { h, $, clear, when } from "/ui/dom.js";
import { state } from "/ui/shell.js";
import { table, section, pageHead } from "/ui/widgets.js";

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

export function eventsPage(view) {
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
