// Talking to the master's REST API, and small formatting helpers shared by the pages.

export const API = "/api/v1";

/** Fetch JSON from the API; throws an Error carrying the server's message on a non-2xx. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const r = await fetch(API + path, init);
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  if (r.status === 401 && path !== "/auth/login" && location.pathname !== "/login") {
    // No session (or an expired one): log in, then come back here.
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : `${r.status} ${r.statusText}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

/** A query string from an object; arrays become repeated keys, empty values are left out. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const x of Array.isArray(v) ? v : [v]) u.append(k, String(x));
  }
  const s = u.toString();
  return s ? `?${s}` : "";
}

/** Numbers from the API: finite numbers, or "NaN" / "Infinity" strings. */
export function num(v) {
  return typeof v === "number" ? v : v == null ? NaN : Number(v);
}

export function fmtNum(v, digits = 4) {
  const x = num(v);
  if (v == null) return "–";
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "∞" : "−∞";
  if (Number.isInteger(x) && Math.abs(x) < 1e9) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

export function fmtTime(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i ? x.toFixed(1) : x} ${units[i]}`;
}

/** Build an element: h("a", {href: "/x", class: "c"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function stateBadge(state) {
  return h("span", { class: `state state-${state.toLowerCase()}`, "data-state": state }, state);
}

export function progressBar(p) {
  const pct = Math.round((p || 0) * 100);
  return h("span", { class: "progress", title: `${pct}%` },
    h("span", { class: "progress-fill", style: `width:${pct}%` }), h("span", { class: "progress-label" }, `${pct}%`));
}

export function toast(message, kind = "error") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  clearTimeout(toast._timer);
  toast._timer = setTimeout(() => { el.hidden = true; }, 6000);
}

export const TERMINAL = new Set(["COMPLETED", "CANCELED", "ERROR", "DELETED"]);

/** Flatten nested hparams: {opt: {lr: 1}} -> {"opt.lr": 1}. */
export function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

/** A sortable table: columns [{key, label, value(row), render(row), numeric}]. */
export function sortableTable(columns, rows, { sortKey, desc = false, onSort, rowAttrs } = {}) {
  const col = columns.find((c) => c.key === sortKey);
  const sorted = [...rows];
  if (col) {
    const val = col.value || ((r) => r[col.key]);
    sorted.sort((a, b) => {
      const x = val(a);
      const y = val(b);
      const xm = x == null || (typeof x === "number" && Number.isNaN(x));
      const ym = y == null || (typeof y === "number" && Number.isNaN(y));
      if (xm || ym) return xm === ym ? 0 : xm ? 1 : -1; // missing values last either way
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
      return desc ? -c : c;
    });
  }
  const head = h("tr", {}, columns.map((c) => h("th", {
    class: `${c.numeric ? "num " : ""}sortable${c.key === sortKey ? (desc ? " sorted-desc" : " sorted-asc") : ""}`,
    "data-key": c.key,
    onclick: () => onSort && onSort(c.key, c.key === sortKey ? !desc : false),
  }, c.label)));
  const body = sorted.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {}, columns.map((c) => {
    const v = c.render ? c.render(r) : (c.value ? c.value(r) : r[c.key]);
    return h("td", { class: c.numeric ? "num" : "" }, typeof v === "number" ? fmtNum(v) : v);
  })));
  return h("table", { class: "table" }, h("thead", {}, head), h("tbody", {}, body));
}
