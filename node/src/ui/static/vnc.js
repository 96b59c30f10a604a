// The graphical console: noVNC on a WebSocket to /api/v1/vms/{name}/vnc.
// The socket is made here and handed to RFB, so a close's code and reason
// (4000-range: the node's explanation) can be shown.

import RFB from "/ui/vendor/novnc-1.7.0/core/rfb.js";
import { wsUrl, enc, recheckSession } from "./api.js";

/** status(state, text): "connecting" | "open" | "closed" | "error". Returns {dispose, rfb, sendCtrlAltDel}. */
export function openVnc(el, vm, status) {
  status("connecting", "Connecting…");
  const ws = new WebSocket(wsUrl(`/api/v1/vms/${enc(vm)}/vnc`));
  ws.binaryType = "arraybuffer";
  let closeInfo = null;
  let opened = false;
  let disposed = false;
  ws.addEventListener("open", () => { opened = true; });
  ws.addEventListener("close", (e) => {
    closeInfo = e;
    if (disposed) return;
    if (e.code >= 4000) status("error", e.reason || `Closed by the node (code ${e.code}).`);
    else if (!opened) {
      status("error", "The graphical console could not be opened (the VM may have no display, or not be running).");
      recheckSession();
    }
  });

  let rfb;
  try {
    rfb = new RFB(el, ws, { shared: true });
  } catch (e) {
    status("error", `The graphical console failed: ${e.message}`);
    return { dispose() { disposed = true; try { ws.close(); } catch (_) { /* closed */ } }, rfb: null, sendCtrlAltDel() {} };
  }
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.background = "#111418";
  rfb.addEventListener("connect", () => status("open", "Connected."));
  rfb.addEventListener("disconnect", (e) => {
    if (disposed) return;
    // The socket's own close handler has said why when the node gave a reason.
    if (closeInfo && (closeInfo.code >= 4000 || !opened)) return;
    status(e.detail && e.detail.clean ? "closed" : "error",
      e.detail && e.detail.clean ? "Disconnected." : "The graphical console was disconnected.");
  });
  rfb.addEventListener("securityfailure", (e) => {
    status("error", `Security negotiation failed: ${(e.detail && e.detail.reason) || "unknown reason"}`);
  });
  rfb.addEventListener("credentialsrequired", () => {
    status("error", "The VM's display asks for a password, which the web UI does not support.");
  });
  rfb.addEventListener("desktopname", (e) => status("open", `Connected: ${e.detail.name}`));

  return {
    rfb,
    sendCtrlAltDel() { try { rfb.sendCtrlAltDel(); } catch (_) { /* not connected */ } },
    dispose() {
      disposed = true;
      try { rfb.disconnect(); } catch (_) { /* already closed */ }
    },
  };
}
