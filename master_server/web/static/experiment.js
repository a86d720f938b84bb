// The experiment page: header with lifecycle buttons, learning curves of every trial, a
// hyperparameter-vs-metric scatter, and the sortable trials table. Polls while it runs.

import {
  TERMINAL, api, flatten, fmtDuration, fmtNum, fmtTime, h, num, progressBar, qs,
  sortableTable, stateBadge, toast,
} from "./api.js";
import { PALETTE, lineChart, parallelChart, scatterChart } from "./chart.js";

const ACTIONS = [
  ["activate", "Activate", (e) => e.state === "PAUSED"],
  ["pause", "Pause", (e) => e.state === "ACTIVE"],
  ["cancel", "Cancel", (e) => ["ACTIVE", "PAUSED"].includes(e.state)],
  ["kill", "Kill", (e) => ["ACTIVE", "PAUSED", "STOPPING_CANCELED", "STOPPING_COMPLETED", "STOPPING_ERROR"].includes(e.state)],
  ["archive", "Archive", (e) => TERMINAL.has(e.state) && !e.archived],
  ["unarchive", "Unarchive", (e) => e.archived],
];

export function actionButtons(exp, onDone) {
  return h("div", { class: "actions" }, ACTIONS.map(([action, label, enabled]) => h("button", {
    "data-action": action,
    class: action === "kill" || action === "cancel" ? "danger" : "",
    disabled: !enabled(exp),
    onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        const body = await api(`/experiments/${exp.id}/${action}`, { method: "POST" });
        toast(`experiment ${exp.id}: ${action} → ${body.experiment.state}`, "info");
        onDone(body.experiment);
      } catch (e) {
        toast(e.message);
        ev.target.disabled = false;
      }
    },
  }, label)));
}

function trialColor(index) {
  return PALETTE[index % PALETTE.length];
}

export async function experimentPage(main, id) {
  const state = {
    exp: await api(`/experiments/${id}`).then((b) => b.experiment),
    trials: [],
    names: {},
    group: "validation",
    groupChosen: false,
    metric: null,
    x: "steps",
    logY: false,
    hparam: null,
    hpView: "scatter",
    sortKey: "id",
    desc: false,
  };
  const header = h("div");
  const curvesBox = h("div", { id: "curves" });
  const legendBox = h("div", { class: "legend", id: "curves-legend" });
  const curvesBar = h("div", { class: "toolbar" });
  const scatterBox = h("div", { id: "hp-scatter" });
  const scatterBar = h("div", { class: "toolbar" });
  const tableBox = h("div", { class: "table-wrap", id: "trials" });
  main.append(
    header,
    h("div", { class: "panel" }, h("h2", {}, "Learning curves"), curvesBar, curvesBox, legendBox),
    h("div", { class: "panel" }, h("h2", {}, "Hyperparameters vs. metric"), scatterBar, scatterBox),
    h("div", { class: "panel" }, h("h2", {}, "Trials"), tableBox),
  );

  const drawHeader = () => {
    const e = state.exp;
    const now = Date.now() / 1000;
    const labelInput = h("input", { type: "text", placeholder: "add label", size: 10, "aria-label": "add label" });
    labelInput.addEventListener("keydown", async (ev) => {
      if (ev.key !== "Enter" || !labelInput.value.trim()) return;
      try {
        state.exp = (await api(`/experiments/${e.id}/labels/${encodeURIComponent(labelInput.value.trim())}`, { method: "PUT" })).experiment;
        drawHeader();
      } catch (err) { toast(err.message); }
    });
    const labels = e.labels.map((l) => h("span", { class: "label" }, l, " ", h("a", {
      href: "#", title: `remove ${l}`, onclick: async (ev) => {
        ev.preventDefault();
        try {
          state.exp = (await api(`/experiments/${e.id}/labels/${encodeURIComponent(l)}`, { method: "DELETE" })).experiment;
          drawHeader();
        } catch (err) { toast(err.message); }
      },
    }, "×")));
    header.replaceChildren(
      h("div", { class: "crumbs" }, h("a", { href: "/" }, "Experiments"), " / ", String(e.id)),
      h("h1", {}, `Experiment ${e.id}: ${e.name}`, stateBadge(e.state), e.archived ? h("span", { class: "label" }, "archived") : null,
        actionButtons(e, (x) => { state.exp = x; drawHeader(); refresh().then(restartPolling); })),
      h("div", { class: "panel" }, h("dl", { class: "facts" },
        fact("Progress", progressBar(e.progress)),
        fact("Searcher", `${e.searcher_name} on ${e.searcher_metric ?? "–"} (${e.smaller_is_better ? "min" : "max"})`),
        fact("Best metric", e.best_searcher_metric == null ? "–" : fmtNum(e.best_searcher_metric)),
        fact("Trials", String(e.num_trials)),
        fact("Started", fmtTime(e.start_time)),
        fact("Duration", fmtDuration((e.end_time || now) - e.start_time)),
        fact("Labels", h("span", {}, labels, labelInput)),
        e.description ? fact("Description", e.description) : null,
        e.error ? fact("Error", e.error) : null,
      )),
    );
  };

  let curvesBarKey = "";
  const drawCurvesBar = () => {
    const groups = Object.keys(state.names);
    if (!state.groupChosen && groups.length) {
      // Validation curves by default; training ones when validation has at most one point a
      // trial (a search that validates once per operation), where they say more.
      const counts = state.trials.flatMap((t) => Object.values(t.summary_metrics.validation_metrics || {}).map((m) => m.count || 0));
      const sparse = !counts.some((c) => c > 1);
      state.group = groups.includes("validation") && !(sparse && groups.includes("training")) ? "validation" : groups.includes("training") ? "training" : groups[0];
    }
    if (!groups.includes(state.group) && groups.length) state.group = groups[0];
    const names = state.names[state.group] || [];
    if (!names.includes(state.metric)) {
      state.metric = names.includes(state.exp.searcher_metric) ? state.exp.searcher_metric : names[0] || null;
    }
    // Rebuilt only when its choices change, so a poll never closes an open drop-down.
    const key = JSON.stringify([groups, names, state.group, state.metric, state.x, state.logY]);
    if (key === curvesBarKey) return;
    curvesBarKey = key;
    const sel = (label, value, options, onchange, name) => h("label", {}, label, h("select", {
      name, onchange: (ev) => onchange(ev.target.value),
    }, options.map((o) => h("option", { value: o, selected: o === value }, o))));
    curvesBar.replaceChildren(
      sel("group", state.group, groups, (v) => { state.group = v; state.groupChosen = true; state.metric = null; drawCurvesBar(); loadCurves(); }, "group"),
      sel("metric", state.metric, names, (v) => { state.metric = v; loadCurves(); }, "metric"),
      sel("x axis", state.x, ["steps", "time"], (v) => { state.x = v; drawCurves(); }, "x"),
      h("label", {}, h("input", { type: "checkbox", checked: state.logY, onchange: (ev) => { state.logY = ev.target.checked; drawCurves(); } }), "log y"),
    );
  };

  let curveData = null;
  const drawCurves = () => {
    if (!curveData || !state.metric) {
      curvesBox.replaceChildren(h("div", { class: "empty" }, "No metrics reported yet."));
      legendBox.replaceChildren();
      return;
    }
    const index = new Map(state.trials.map((t, i) => [t.id, i]));
    const series = [];
    for (const t of curveData.trials) {
      const s = t.series[state.metric];
      if (!s) continue;
      const t0 = s.times[0] || 0;
      series.push({
        label: `trial ${t.trial_id}`,
        trialId: t.trial_id,
        color: trialColor(index.get(t.trial_id) ?? t.trial_id),
        xs: state.x === "time" ? s.times.map((v) => v - t0) : s.steps,
        ys: s.values,
      });
    }
    if (!series.length) {
      curvesBox.replaceChildren(h("div", { class: "empty" }, `No ${state.group} points for ${state.metric} yet.`));
      legendBox.replaceChildren();
      return;
    }
    const svg = lineChart(curvesBox, {
      series, xType: state.x, logY: state.logY,
      xLabel: state.x === "time" ? "time since the trial's first report" : "steps completed",
      yLabel: `${state.group} ${state.metric}`,
    });
    legendBox.replaceChildren(...series.map((q, i) => h("a", {
      href: `/trials/${q.trialId}`, "data-trial": q.trialId,
      onmouseenter: () => { svg.classList.add("dim"); svg.querySelectorAll("path.series")[i].classList.add("hot"); },
      onmouseleave: () => { svg.classList.remove("dim"); svg.querySelectorAll("path.series")[i].classList.remove("hot"); },
    }, h("span", { class: "swatch", style: `background:${q.color}` }), q.label)));
  };

  const loadCurves = async () => {
    if (!state.metric) {
      curveData = null;
      drawCurves();
      return;
    }
    // About 40k points per chart in all: 1000 a series for up to 40 trials, fewer (>= 200,
    // still a min and a max per 2-3 pixel columns) when there are more.
    const maxPoints = Math.max(200, Math.min(1000, Math.floor(40000 / Math.max(1, state.trials.length))));
    curveData = await api(`/experiments/${id}/metrics${qs({ group: state.group, names: state.metric, max_points: maxPoints })}`);
    drawCurves();
  };

  let scatterBarKey = "";
  const drawScatter = () => {
    const flat = state.trials.map((t) => flatten(t.hparams));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].filter((k) => flat.some((f) => f[k] !== flat[0][k]));
    const all = [...new Set(flat.flatMap((f) => Object.keys(f)))];
    const choices = keys.length ? keys : all;
    if (!choices.includes(state.hparam)) state.hparam = choices[0] || null;
    const key = JSON.stringify([choices, state.hparam, state.hpView]);
    if (key !== scatterBarKey) {
      scatterBarKey = key;
      scatterBar.replaceChildren(
        h("label", {}, "view", h("select", {
          name: "hpview", onchange: (ev) => { state.hpView = ev.target.value; drawScatter(); },
        }, [["scatter", "scatter"], ["parallel", "parallel coordinates"]].map(([v, l]) => h("option", { value: v, selected: v === state.hpView }, l)))),
        state.hpView === "scatter" ? h("label", {}, "hyperparameter", h("select", {
          name: "hparam", onchange: (ev) => { state.hparam = ev.target.value; drawScatter(); },
        }, choices.map((k) => h("option", { value: k, selected: k === state.hparam }, k)))) : null,
        h("span", { class: "muted" }, `${state.hpView === "scatter" ? "y" : "last axis"}: best ${state.exp.searcher_metric ?? "searcher metric"} of each trial`));
    }
    if (state.hpView === "parallel") {
      const metric = state.exp.searcher_metric || "metric";
      const rows = state.trials.filter((t) => t.searcher_metric != null).map((t, i) => ({
        values: { ...flat[state.trials.indexOf(t)], [`metric:${metric}`]: num(t.searcher_metric) },
        label: `trial ${t.id}`, href: `/trials/${t.id}`, color: trialColor(state.trials.indexOf(t)),
      }));
      if (!rows.length) {
        scatterBox.replaceChildren(h("div", { class: "empty" }, "No trial has a searcher metric yet."));
        return;
      }
      const dims = [...choices.map((k) => ({ key: k, label: k })), { key: `metric:${metric}`, label: metric }];
      parallelChart(scatterBox, { dims, rows });
      return;
    }
    const points = state.trials.map((t, i) => ({ t, x: flat[i][state.hparam] })).filter(({ t, x }) => t.searcher_metric != null && x !== undefined)
      .map(({ t, x }) => ({ x: typeof x === "number" ? x : String(x), y: num(t.searcher_metric), label: `trial ${t.id}`, href: `/trials/${t.id}`, color: trialColor(state.trials.indexOf(t)) }));
    if (!state.hparam || !points.length) {
      scatterBox.replaceChildren(h("div", { class: "empty" }, "No trial has a searcher metric yet."));
      return;
    }
    scatterChart(scatterBox, { points, xLabel: state.hparam, yLabel: state.exp.searcher_metric || "metric" });
  };

  const drawTable = () => {
    const flat = new Map(state.trials.map((t) => [t.id, flatten(t.hparams)]));
    const hpKeys = [...new Set(state.trials.flatMap((t) => Object.keys(flat.get(t.id))))];
    const valNames = state.names.validation || [];
    const columns = [
      { key: "id", label: "Trial", numeric: true, render: (t) => h("a", { href: `/trials/${t.id}` }, String(t.id)) },
      { key: "state", label: "State", render: (t) => stateBadge(t.state) },
      { key: "steps_completed", label: "Steps done", numeric: true },
      { key: "searcher_metric", label: `Best ${state.exp.searcher_metric ?? "metric"}`, numeric: true, value: (t) => (t.searcher_metric == null ? null : num(t.searcher_metric)) },
      ...valNames.filter((n) => n !== state.exp.searcher_metric).map((n) => ({
        key: `val:${n}`, label: `${n} (last)`, numeric: true,
        value: (t) => { const s = t.summary_metrics.validation_metrics?.[n]; return s ? num(s.last) : null; },
      })),
      ...hpKeys.map((k) => ({ key: `hp:${k}`, label: k, numeric: true, value: (t) => flat.get(t.id)[k], render: (t) => { const v = flat.get(t.id)[k]; return typeof v === "number" ? fmtNum(v) : String(v ?? "–"); } })),
      { key: "restarts", label: "Restarts", numeric: true },
      { key: "duration", label: "Duration", numeric: true, value: (t) => (t.end_time || Date.now() / 1000) - t.start_time, render: (t) => (t.start_time ? fmtDuration((t.end_time || Date.now() / 1000) - t.start_time) : "–") },
    ];
    if (!state.trials.length) {
      tableBox.replaceChildren(h("div", { class: "empty" }, "No trials yet."));
      return;
    }
    tableBox.replaceChildren(sortableTable(columns, state.trials, {
      sortKey: state.sortKey, desc: state.desc,
      onSort: (k, d) => { state.sortKey = k; state.desc = d; drawTable(); },
      rowAttrs: (t) => ({ "data-trial": t.id }),
    }));
  };

  let timer = null;
  let restartPolling = () => {};
  const refresh = async () => {
    const [exp, trials, names] = await Promise.all([
      api(`/experiments/${id}`), api(`/experiments/${id}/trials`), api(`/experiments/${id}/metric-names`),
    ]);
    state.exp = exp.experiment;
    state.trials = trials.trials;
    state.names = names.metric_names;
    drawHeader();
    drawCurvesBar();
    drawTable();
    drawScatter();
    await loadCurves();
    main.dataset.loaded = String(Date.now());
  };
  drawHeader();
  await refresh();
  // Poll one refresh at a time (a slow answer never piles up requests); once the experiment
  // has finished and a last refresh has shown it, nothing moves any more.
  let stopped = false;
  const tick = async () => {
    const wasTerminal = TERMINAL.has(state.exp.state);
    try {
      await refresh();
    } catch { /* the next tick retries */ }
    if (!stopped && !(wasTerminal && TERMINAL.has(state.exp.state))) timer = setTimeout(tick, 2000);
  };
  timer = setTimeout(tick, 2000);
  restartPolling = () => { // an action (e.g. activate) may wake a page that had stopped polling
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(tick, 2000);
  };
  return () => { stopped = true; clearTimeout(timer); };
}

function fact(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

export { fact };
