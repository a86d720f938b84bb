// The trial page: facts, metric charts, checkpoints with download, and logs with follow,
// search and level filter. Polls metrics while the trial runs; logs follow over SSE.

import {
  API, TERMINAL, api, flatten, fmtBytes, fmtDuration, fmtNum, fmtTime, h, qs, stateBadge, toast,
} from "./api.js";
import { lineChart } from "./chart.js";
import { fact } from "./experiment.js";

const LEVELS = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const GROUP_TITLES = { training: "Training", validation: "Validation" };

export async function trialPage(main, id) {
  let trial = (await api(`/trials/${id}`)).trial;
  let exp = (await api(`/experiments/${trial.experiment_id}`)).experiment;
  const view = { x: "steps", follow: !TERMINAL.has(trial.state), search: "", level: "" };
  const header = h("div");
  const chartsBar = h("div", { class: "toolbar" });
  const chartsBox = h("div", { id: "trial-charts" });
  const ckptBox = h("div", { class: "table-wrap", id: "checkpoints" });
  const logBox = h("div", { class: "logs", id: "logs", tabindex: 0 });
  const logStatus = h("span", { class: "muted", id: "log-status" });
  const searchIn = h("input", { type: "search", placeholder: "search logs", "aria-label": "search logs", name: "search" });
  const levelIn = h("select", { name: "level", "aria-label": "minimum level" },
    h("option", { value: "" }, "all levels"), LEVELS.slice(1).map((l) => h("option", { value: l }, `${l}+`)));
  const followIn = h("input", { type: "checkbox", name: "follow", checked: view.follow });
  main.append(
    header,
    h("div", { class: "panel" }, h("h2", {}, "Metrics"), chartsBar, chartsBox),
    h("div", { class: "panel" }, h("h2", {}, "Logs"),
      h("div", { class: "toolbar" }, searchIn, levelIn, h("label", {}, followIn, "follow"), logStatus), logBox),
    h("div", { class: "panel" }, h("h2", {}, "Checkpoints"), ckptBox),
  );

  const drawHeader = () => {
    const now = Date.now() / 1000;
    const hp = flatten(trial.hparams);
    header.replaceChildren(
      h("div", { class: "crumbs" }, h("a", { href: "/" }, "Experiments"), " / ",
        h("a", { href: `/experiments/${exp.id}` }, `${exp.id} ${exp.name}`), " / ", `trial ${trial.id}`),
      h("h1", {}, `Trial ${trial.id}`, stateBadge(trial.state), h("div", { class: "actions" }, h("button", {
        class: "danger", "data-action": "kill", disabled: TERMINAL.has(trial.state),
        onclick: async (ev) => {
          ev.target.disabled = true;
          try {
            trial = (await api(`/trials/${trial.id}/kill`, { method: "POST" })).trial;
            drawHeader();
          } catch (e) { toast(e.message); ev.target.disabled = false; }
        },
      }, "Kill"))),
      h("div", { class: "panel" }, h("dl", { class: "facts" },
        fact("Experiment", h("a", { href: `/experiments/${exp.id}` }, `${exp.id} ${exp.name}`)),
        fact("Steps completed", String(trial.steps_completed)),
        fact(`Best ${exp.searcher_metric ?? "metric"}`, trial.searcher_metric == null ? "–" : fmtNum(trial.searcher_metric)),
        fact("Restarts", String(trial.restarts)),
        fact("Started", fmtTime(trial.start_time)),
        fact("Duration", trial.start_time ? fmtDuration((trial.end_time || now) - trial.start_time) : "–"),
        trial.exit_reason ? fact("Exit", trial.exit_reason) : null,
        ...Object.entries(hp).map(([k, v]) => fact(k, typeof v === "number" ? fmtNum(v) : String(v))),
      )),
    );
  };

  const drawChartsBar = () => {
    chartsBar.replaceChildren(h("label", {}, "x axis", h("select", {
      name: "x", onchange: (ev) => { view.x = ev.target.value; loadCharts(); },
    }, ["steps", "time"].map((o) => h("option", { value: o, selected: o === view.x }, o)))));
  };

  const loadCharts = async () => {
    const names = (await api(`/trials/${id}/metric-names`)).metric_names;
    const groups = Object.keys(names).sort((a, b) => (a === "training" ? -1 : b === "training" ? 1 : a.localeCompare(b)));
    const bodies = await Promise.all(groups.map((g) => api(`/trials/${id}/metrics${qs({ group: g, max_points: 1500 })}`)));
    const cells = [];
    const byName = new Map(); // one chart per metric name: training and validation together
    groups.forEach((g, i) => {
      for (const [name, s] of Object.entries(bodies[i].series)) {
        if (!byName.has(name)) byName.set(name, []);
        const t0 = s.times[0] || 0;
        byName.get(name).push({
          label: GROUP_TITLES[g] || g,
          color: g === "training" ? "#1f77b4" : g === "validation" ? "#ff7f0e" : undefined,
          xs: view.x === "time" ? s.times.map((v) => v - t0) : s.steps, ys: s.values,
        });
      }
    });
    for (const [name, series] of [...byName.entries()].sort()) {
      const box = h("div", { class: "chart-box", "data-metric": name });
      cells.push(h("div", {}, h("h3", {}, name, h("span", { class: "muted" }, ` (${series.map((q) => q.label.toLowerCase()).join(", ")})`)), box));
      box._series = series;
    }
    if (!cells.length) {
      chartsBox.replaceChildren(h("div", { class: "empty" }, "No metrics reported yet."));
      return;
    }
    chartsBox.replaceChildren(h("div", { class: "charts" }, cells));
    for (const box of chartsBox.querySelectorAll(".chart-box")) {
      lineChart(box, { series: box._series, xType: view.x, height: 220, xLabel: view.x === "time" ? "time" : "steps", yLabel: box.dataset.metric });
    }
  };

  const drawCheckpoints = async () => {
    const cks = (await api(`/trials/${id}/checkpoints${qs({ sort_by: "steps_completed", order_by: "desc" })}`)).checkpoints;
    if (!cks.length) {
      ckptBox.replaceChildren(h("div", { class: "empty" }, "No checkpoints."));
      return;
    }
    const metricNames = [...new Set(cks.flatMap((c) => Object.keys(c.validation_metrics)))].sort();
    ckptBox.replaceChildren(h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["UUID", "Steps", "State", "Size", ...metricNames, "Reported", ""].map((x, i) => h("th", { class: i === 1 || i === 3 ? "num" : "" }, x)))),
      h("tbody", {}, cks.map((c) => h("tr", { "data-uuid": c.uuid },
        h("td", { class: "mono" }, c.uuid),
        h("td", { class: "num" }, String(c.steps_completed)),
        h("td", {}, stateBadge(c.state)),
        h("td", { class: "num" }, fmtBytes(c.size_bytes)),
        metricNames.map((n) => h("td", { class: "num" }, fmtNum(c.validation_metrics[n]))),
        h("td", {}, fmtTime(c.report_time)),
        h("td", {}, c.state === "DELETED" ? "" : h("a", { href: `${API}/checkpoints/${c.uuid}/download`, download: `${c.uuid}.tar` }, "download")),
      )))));
  };

  // -- logs -----------------------------------------------------------------------------------
  let source = null;
  let logSeq = 0;
  const levelsFrom = (min) => (min ? LEVELS.slice(LEVELS.indexOf(min)) : []);
  const fmtLogTime = (t) => fmtTime(t).slice(11);
  const appendLines = (lines) => {
    const stick = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 30;
    const frag = document.createDocumentFragment();
    for (const x of lines) {
      frag.append(h("div", { class: `line ${x.stream}`, "data-id": x.id },
        h("span", { class: "ts" }, fmtLogTime(x.timestamp)),
        h("span", { class: `lvl lvl-${x.level}` }, x.level),
        x.rank ? h("span", { class: "ts" }, `[${x.rank}]`) : null,
        h("span", { class: "msg" }, x.message)));
    }
    logBox.append(frag);
    if (stick) logBox.scrollTop = logBox.scrollHeight;
  };
  const loadLogs = async () => {
    const mine = ++logSeq;
    if (source) { source.close(); source = null; }
    logBox.replaceChildren();
    const params = { search: view.search, level: levelsFrom(view.level), tail: 2000 };
    if (!view.follow) {
      const lines = (await api(`/trials/${id}/logs${qs(params)}`)).logs;
      if (mine !== logSeq) return;
      appendLines(lines);
      logStatus.textContent = `${lines.length} line${lines.length === 1 ? "" : "s"}`;
      logStatus.className = "muted";
      return;
    }
    source = new EventSource(`${API}/trials/${id}/logs${qs({ ...params, follow: "true" })}`);
    logStatus.textContent = "following";
    logStatus.className = "follow-on";
    source.addEventListener("logs", (ev) => { if (mine === logSeq) appendLines(JSON.parse(ev.data)); });
    source.addEventListener("end", () => {
      source.close();
      source = null;
      logStatus.textContent = "trial finished; end of logs";
      logStatus.className = "muted";
    });
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) logStatus.textContent = "disconnected"; };
  };
  let searchTimer = null;
  searchIn.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { view.search = searchIn.value; loadLogs(); }, 250);
  });
  levelIn.addEventListener("change", () => { view.level = levelIn.value; loadLogs(); });
  followIn.addEventListener("change", () => { view.follow = followIn.checked; loadLogs(); });

  drawHeader();
  drawChartsBar();
  await Promise.all([loadCharts(), drawCheckpoints(), loadLogs()]);
  // One refresh at a time until the trial has finished and a last refresh has shown it.
  let stopped = false;
  let timer = null;
  const tick = async () => {
    const wasTerminal = TERMINAL.has(trial.state);
    try {
      trial = (await api(`/trials/${id}`)).trial;
      exp = (await api(`/experiments/${trial.experiment_id}`)).experiment;
      drawHeader();
      await Promise.all([loadCharts(), drawCheckpoints()]);
    } catch { /* the next tick retries */ }
    if (!stopped && !(wasTerminal && TERMINAL.has(trial.state))) timer = setTimeout(tick, 2000);
  };
  if (!TERMINAL.has(trial.state)) timer = setTimeout(tick, 2000);
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (source) source.close();
    logSeq++;
  };
}
