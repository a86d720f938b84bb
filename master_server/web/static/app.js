// The web UI's entry: a tiny router over history.pushState and the page modules.

import { api, toast } from "./api.js";
import { experimentListPage } from "./experiments.js";
import { experimentPage } from "./experiment.js";
import { trialPage } from "./trial.js";
import { modelListPage, modelPage } from "./models.js";
import { loginPage } from "./login.js";

const routes = [
  [/^\/(experiments\/?)?$/, experimentListPage, "experiments"],
  [/^\/experiments\/(\d+)\/?$/, experimentPage, "experiments"],
  [/^\/trials\/(\d+)\/?$/, trialPage, "experiments"],
  [/^\/models\/?$/, modelListPage, "models"],
  [/^\/models\/(.+?)\/?$/, modelPage, "models"],
  [/^\/login\/?$/, loginPage, ""],
];

let cleanup = null;

async function render() {
  if (cleanup) {
    try { cleanup(); } catch { /* a page's cleanup must not stop the next page */ }
    cleanup = null;
  }
  const main = document.getElementById("app");
  const path = location.pathname;
  for (const [re, page, nav] of routes) {
    const m = path.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.nav === nav);
    main.replaceChildren();
    try {
      cleanup = (await page(main, ...m.slice(1).map(decodeURIComponent))) || null;
    } catch (e) {
      main.replaceChildren(errorBox(e));
    }
    return;
  }
  main.replaceChildren(errorBox(new Error(`no page at ${path}`)));
}

function errorBox(e) {
  const div = document.createElement("div");
  div.className = "panel";
  div.setAttribute("role", "alert");
  div.textContent = e.message || String(e);
  return div;
}

export function navigate(href) {
  history.pushState(null, "", href);
  render();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a");
  if (!a || a.target || a.hasAttribute("download") || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/static/")) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
window.addEventListener("unhandledrejection", (ev) => toast(ev.reason?.message || String(ev.reason)));

api("/master").then((m) => {
  document.getElementById("master-info").textContent =
    `v${m.version} · ${m.database} · ${m.free_slots}/${m.total_slots} slots free`;
}).catch(() => {});
render();
