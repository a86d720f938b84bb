// The experiment list: state, progress, best searcher metric, labels; filter and sort; live.

import { api, fmtDuration, fmtNum, fmtTime, h, num, progressBar, qs, sortableTable, stateBadge } from "./api.js";

const STATES = ["", "ACTIVE", "PAUSED", "COMPLETED", "CANCELED", "ERROR"];
const view = { sortKey: "id", desc: true, name: "", state: "", label: "", archived: false };

export async function experimentListPage(main) {
  const nameIn = h("input", { type: "search", placeholder: "name contains", value: view.name, "aria-label": "name filter" });
  const stateIn = h("select", { "aria-label": "state filter" }, STATES.map((s) => h("option", { value: s, selected: s === view.state }, s || "any state")));
  const labelIn = h("input", { type: "search", placeholder: "label", value: view.label, "aria-label": "label filter" });
  const archIn = h("input", { type: "checkbox", checked: view.archived });
  const count = h("span", { class: "muted" });
  const tableBox = h("div", { class: "table-wrap", id: "experiments" });
  main.append(
    h("h1", {}, "Experiments"),
    h("div", { class: "panel" },
      h("div", { class: "toolbar" }, nameIn, stateIn, labelIn, h("label", {}, archIn, "archived"), count),
      tableBox),
  );
  let rows = [];
  let timer = null;
  let seq = 0;

  const draw = () => {
    const now = Date.now() / 1000;
    const columns = [
      { key: "id", label: "ID", numeric: true, render: (e) => h("a", { href: `/experiments/${e.id}` }, String(e.id)) },
      { key: "name", label: "Name", render: (e) => h("a", { href: `/experiments/${e.id}`, class: "exp-name" }, e.name) },
      { key: "state", label: "State", render: (e) => stateBadge(e.state) },
      { key: "progress", label: "Progress", numeric: true, render: (e) => progressBar(e.progress) },
      {
        key: "best", label: "Best metric", numeric: true,
        value: (e) => (e.best_searcher_metric == null ? null : num(e.best_searcher_metric) * (e.smaller_is_better ? 1 : -1)),
        render: (e) => (e.best_searcher_metric == null ? "–" : h("span", { title: e.searcher_metric },
          h("span", { class: "muted" }, `${e.searcher_metric} `), fmtNum(e.best_searcher_metric))),
      },
      { key: "num_trials", label: "Trials", numeric: true },
      { key: "labels", label: "Labels", value: (e) => e.labels.join(","), render: (e) => e.labels.map((l) => h("span", { class: "label" }, l)) },
      { key: "searcher_name", label: "Searcher" },
      { key: "start_time", label: "Started", render: (e) => fmtTime(e.start_time) },
      { key: "duration", label: "Duration", numeric: true, value: (e) => (e.end_time || now) - e.start_time, render: (e) => fmtDuration((e.end_time || now) - e.start_time) },
    ];
    if (!rows.length) {
      tableBox.replaceChildren(h("div", { class: "empty" }, "No experiments match."));
      return;
    }
    tableBox.replaceChildren(sortableTable(columns, rows, {
      sortKey: view.sortKey, desc: view.desc,
      onSort: (k, d) => { view.sortKey = k; view.desc = d; draw(); },
      rowAttrs: (e) => ({ "data-id": e.id }),
    }));
  };

  const load = async () => {
    const mine = ++seq;
    const body = await api(`/experiments${qs({
      name: view.name, state: view.state, label: view.label, archived: view.archived ? "any" : "false",
      sort_by: "id", order_by: "desc", limit: 500,
    })}`);
    if (mine !== seq) return; // a newer filter's answer wins
    rows = body.experiments;
    count.textContent = `${body.pagination.total} experiment${body.pagination.total === 1 ? "" : "s"}`;
    draw();
  };

  const onFilter = () => {
    view.name = nameIn.value.trim();
    view.state = stateIn.value;
    view.label = labelIn.value.trim();
    view.archived = archIn.checked;
    load();
  };
  for (const el of [nameIn, labelIn]) el.addEventListener("input", onFilter);
  for (const el of [stateIn, archIn]) el.addEventListener("change", onFilter);
  await load();
  let stopped = false;
  const tick = async () => {
    try { await load(); } catch { /* the next tick retries */ }
    if (!stopped) timer = setTimeout(tick, 3000);
  };
  timer = setTimeout(tick, 3000);
  return () => { stopped = true; clearTimeout(timer); };
}
