// The console pages: the serial console (xterm.js, console.js) and the
// graphical one (noVNC, vnc.js). Each loads its viewer only when opened.

import { h, clear } from "/ui/dom.js";
import { pageHead } from "/ui/widgets.js";

function consoleHead(kind, vm) {
  return pageHead(`${kind} — ${vm}`, h("a", { href: "#/vms", class: "button small" }, "← VMs"));
}

export function consolePage(view, vm) {
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
  import("/ui/console.js").then(({ openSerial }) => {
    if (gone) return;
    con = openSerial(termEl, vm, setStatus);
    con.connect(false);
    reconnect.addEventListener("click", () => con.connect(false));
    force.addEventListener("click", () => con.connect(true));
    fit.addEventListener("change", () => con.setFit(fit.checked));
  }).catch((e) => setStatus("error", `The terminal failed to load: ${e.message}`));
  return { dispose() { gone = true; if (con) con.dispose(); } };
}

export function vncPage(view, vm) {
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
  import("/ui/vnc.js").then((m) => {
    if (gone) return;
    mod = m;
    open();
    reconnect.addEventListener("click", open);
    cad.addEventListener("click", () => v && v.sendCtrlAltDel());
  }).catch((e) => setStatus("error", `The VNC viewer failed to load: ${e.message}`));
  return { dispose() { gone = true; if (v) v.dispose(); } };
}
