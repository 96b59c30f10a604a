// What every page shares with the shell: the state the shell keeps (the
// event log the live stream fills, the page shown), and the services a page
// uses: flash messages, act() for a button's action, the confirm dialog, and
// poller() for a page's periodic refresh.

import { h, $, clear } from "./dom.js";

export const state = {
  status: null,
  events: [],
  lastSeq: 0,
  es: null,
  headerTimer: null,
  signedIn: false,
  current: null, // the page shown: {name, refresh?, onEvent?, dispose?}
};
export const MAX_EVENTS = 2000;

// ---------------------------------------------------------------- messages

let flashTimer = null;
export function flash(text, kind = "error") {
  const el = $("#flash");
  clear(el);
  el.className = `flash ${kind}`;
  el.append(h("span", { class: "flash-text" }, text),
    h("button", { type: "button", class: "small flash-close", title: "Dismiss", onclick: () => { el.hidden = true; } }, "×"));
  el.hidden = false;
  clearTimeout(flashTimer);
  if (kind !== "error") flashTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

export function failed(e) {
  if (e && e.status === 401) return; // the login form says it
  flash(e && e.message ? e.message : String(e));
}

/** Runs an action (a button's): disables the button meanwhile, reports errors. */
export async function act(button, f, okText) {
  if (button) button.disabled = true;
  try {
    const r = await f();
    if (okText) flash(typeof okText === "function" ? okText(r) : okText, "info");
    if (state.current && state.current.refresh) state.current.refresh();
    return r;
  } catch (e) {
    failed(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A confirm dialog; with `check` a checkbox (its label): resolves {ok, checked}. */
export function confirmDialog(text, { okLabel = "OK", check = null, danger = false } = {}) {
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

// ---------------------------------------------------------------- refresh

/** A refresh function that runs `load` now and every `ms`, one at a time. */
export function poller(load, ms) {
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
