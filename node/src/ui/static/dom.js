// Small DOM helpers: build elements without innerHTML (no HTML injection
// from names, messages or errors).

/**
 * h("tr", {dataset: {vm: "a"}, class: "x", onclick: f}, child, "text", [more])
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "value") el.value = v;
      else if (k === "checked" || k === "disabled" || k === "selected" || k === "hidden" || k === "required") el[k] = !!v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** A usage bar: used of total, with its text. */
export function bar(used, total, text) {
  const pct = total > 0 ? (100 * used) / total : 0;
  const level = pct > 100 ? "over" : pct >= 85 ? "high" : pct >= 60 ? "mid" : "low";
  return h("div", { class: "bar", title: `${text} (${pct.toFixed(0)}%)` },
    h("div", { class: `fill ${level}`, style: { width: `${Math.min(pct, 100).toFixed(1)}%` } }),
    h("span", { class: "bar-text" }, text));
}

export function mib(m) {
  if (m >= 1024 * 1024) return `${(m / 1024 / 1024).toFixed(1)} TiB`;
  if (m >= 1024) return `${(m / 1024).toFixed(m % 1024 ? 1 : 0)} GiB`;
  return `${m} MiB`;
}

export function bytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i && b < 10 ? 1 : 0)} ${units[i]}`;
}

export function age(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function debounce(f, ms) {
  let t = null;
  const d = (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
  d.cancel = () => clearTimeout(t);
  return d;
}
