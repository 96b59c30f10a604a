// The serial console: xterm.js on a binary WebSocket to
// /api/v1/vms/{name}/serial. A serial line has no window size, so nothing
// but bytes goes over the socket; FitAddon only sizes the view locally.

import { Terminal } from "/ui/vendor/xterm-6.0.0/xterm.mjs";
import { FitAddon } from "/ui/vendor/addon-fit-0.11.0/addon-fit.mjs";
import { wsUrl, enc, recheckSession } from "./api.js";

/**
 * Opens the console of `vm` in `el`. status(state, text) reports
 * "connecting" | "open" | "closed" | "error". Returns {connect(force), dispose(), term}.
 */
export function openSerial(el, vm, status) {
  const term = new Terminal({
    cols: 80,
    rows: 24,
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
    fontSize: 14,
    theme: { background: "#111418", foreground: "#e6e6e6" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  let fitting = false;
  const onResize = () => { if (fitting) { try { fit.fit(); } catch (_) { /* hidden */ } } };
  window.addEventListener("resize", onResize);

  let ws = null;
  const encoder = new TextEncoder();
  const send = (bytes) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(bytes); };
  term.onData((s) => send(encoder.encode(s)));
  term.onBinary((s) => send(Uint8Array.from(s, (c) => c.charCodeAt(0) & 255)));

  function connect(force) {
    if (ws) { ws.onclose = null; ws.close(); }
    status("connecting", force ? "Taking over the console…" : "Connecting…");
    const url = wsUrl(`/api/v1/vms/${enc(vm)}/serial${force ? "?force=true" : ""}`);
    const sock = new WebSocket(url);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      status("open", "Connected: typing goes to the VM's serial port.");
      term.focus();
    };
    sock.onmessage = (e) => {
      if (typeof e.data === "string") term.write(e.data);
      else term.write(new Uint8Array(e.data));
    };
    sock.onclose = (e) => {
      if (ws !== sock) return;
      ws = null;
      if (e.code >= 4000) {
        status("error", e.reason || `Closed by the node (code ${e.code}).`);
      } else if (!opened) {
        status("error", "The console could not be opened (is the VM running, and may you attach to it?).");
        recheckSession();
      } else {
        status("closed", e.reason ? `Closed: ${e.reason}` : "The console was closed.");
      }
      term.write("\r\n\x1b[2m[disconnected]\x1b[0m\r\n");
    };
  }

  return {
    term,
    connect,
    setFit(on) {
      fitting = on;
      if (on) onResize();
      else term.resize(80, 24);
    },
    dispose() {
      window.removeEventListener("resize", onResize);
      if (ws) { ws.onclose = null; ws.close(); ws = null; }
      term.dispose();
    },
  };
}
