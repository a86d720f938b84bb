// Small SVG charts: multi-series line charts (learning curves) and scatter plots.
// No library: an SVG path per series keeps 100 trials x 1000 points cheap to draw and easy
// to inspect (each series is one <path class="series"> with data-label and data-points).

import { fmtNum, fmtDuration, num } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((x) => raw <= x) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    const v = 10 ** e;
    if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
  }
  return out.length >= 2 ? out : [lo, hi];
}

function extent(values, positiveOnly = false) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (!Number.isFinite(v) || (positiveOnly && v <= 0)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.05 || 1;
    return [lo - pad, hi + pad];
  }
  return [lo, hi];
}

function scale(domain, range, log = false) {
  const [d0, d1] = log ? domain.map(Math.log10) : domain;
  const [r0, r1] = range;
  const k = (r1 - r0) / (d1 - d0 || 1);
  return (v) => r0 + ((log ? Math.log10(v) : v) - d0) * k;
}

function frame(container, height) {
  container.replaceChildren();
  const width = Math.max(320, Math.floor(container.getBoundingClientRect().width || 640));
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart" });
  container.append(svg);
  return { svg, width };
}

function axes(svg, { x, y, xTicks, yTicks, box, xFmt, yFmt, xLabel, yLabel }) {
  const g = s("g", { class: "axes" });
  for (const t of yTicks) {
    const py = y(t);
    g.append(s("line", { x1: box.l, x2: box.r, y1: py, y2: py, class: "grid" }));
    g.append(s("text", { x: box.l - 6, y: py + 4, "text-anchor": "end", class: "tick" }, yFmt(t)));
  }
  for (const t of xTicks) {
    const px = x(t);
    g.append(s("line", { x1: px, x2: px, y1: box.t, y2: box.b, class: "grid" }));
    g.append(s("text", { x: px, y: box.b + 16, "text-anchor": "middle", class: "tick" }, xFmt(t)));
  }
  g.append(s("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t, class: "plot-border" }));
  if (xLabel) g.append(s("text", { x: (box.l + box.r) / 2, y: box.b + 34, "text-anchor": "middle", class: "axis-label" }, xLabel));
  if (yLabel) {
    g.append(s("text", { x: 14, y: (box.t + box.b) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(box.t + box.b) / 2})` }, yLabel));
  }
  svg.append(g);
}

/**
 * A line chart with one path per series.
 * series: [{label, color, xs: number[], ys: number[], href?}]; xType "steps" | "time" (seconds
 * since each series' first point is shown as a duration).
 */
export function lineChart(container, { series, xLabel = "", yLabel = "", xType = "steps", height = 300, logY = false }) {
  const { svg, width } = frame(container, height);
  const box = { l: 64, r: width - 24, t: 10, b: height - 42 };
  const allX = series.flatMap((q) => q.xs);
  const allY = series.flatMap((q) => q.ys.map(num));
  const useLogY = logY && allY.some((v) => v > 0);
  const [x0, x1] = extent(allX);
  const [y0, y1] = extent(allY, useLogY);
  const x = scale([x0, x1], [box.l, box.r]);
  const y = scale([y0, y1], [box.b, box.t], useLogY);
  const xFmt = xType === "time" ? fmtDuration : (v) => fmtNum(v, 3);
  axes(svg, {
    x, y, box, xLabel, yLabel, xFmt, yFmt: (v) => fmtNum(v, 3),
    xTicks: niceTicks(x0, x1, Math.max(2, Math.floor(width / 110))),
    yTicks: useLogY ? logTicks(y0, y1) : niceTicks(y0, y1, 5),
  });
  const clip = `clip-${Math.random().toString(36).slice(2)}`;
  const defs = s("defs");
  const cp = s("clipPath", { id: clip });
  cp.append(s("rect", { x: box.l, y: box.t, width: box.r - box.l, height: box.b - box.t }));
  defs.append(cp);
  svg.append(defs);
  const plot = s("g", { "clip-path": `url(#${clip})` });
  series.forEach((q, i) => {
    const color = q.color || PALETTE[i % PALETTE.length];
    let d = "";
    let pen = false;
    let n = 0;
    for (let k = 0; k < q.xs.length; k++) {
      const v = num(q.ys[k]);
      if (!Number.isFinite(v) || (useLogY && v <= 0)) {
        pen = false; // NaN / infinity: a gap in the line
        continue;
      }
      d += `${pen ? "L" : "M"}${x(q.xs[k]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
      n++;
    }
    const path = s("path", { d, stroke: color, class: "series", "data-label": q.label, "data-points": n, "data-index": i });
    path.append(s("title", {}, q.label));
    plot.append(path);
    if (n === 1 || q.xs.length <= 40) {
      for (let k = 0; k < q.xs.length; k++) {
        const v = num(q.ys[k]);
        if (Number.isFinite(v) && !(useLogY && v <= 0)) plot.append(s("circle", { cx: x(q.xs[k]), cy: y(v), r: 2.5, fill: color, class: "dot" }));
      }
    }
  });
  svg.append(plot);
  hover(svg, container, series, { x, y, box, xFmt, x0, x1 });
  return svg;
}

function nearestIndex(xs, target) {
  let lo = 0;
  let hi = xs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && Math.abs(xs[lo - 1] - target) < Math.abs(xs[lo] - target)) return lo - 1;
  return lo;
}

function hover(svg, container, series, { x, box, xFmt, x0, x1 }) {
  const cross = s("line", { y1: box.t, y2: box.b, class: "crosshair", visibility: "hidden" });
  svg.append(cross);
  const tip = document.createElement("div");
  tip.className = "chart-tip";
  tip.hidden = true;
  container.style.position = "relative";
  container.append(tip);
  svg.addEventListener("mouseleave", () => { tip.hidden = true; cross.setAttribute("visibility", "hidden"); });
  svg.addEventListener("mousemove", (ev) => {
    const rect = svg.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    if (px < box.l || px > box.r) return;
    const target = x0 + ((px - box.l) / (box.r - box.l)) * (x1 - x0);
    const rows = [];
    series.forEach((q, i) => {
      if (!q.xs.length) return;
      const k = nearestIndex(q.xs, target);
      rows.push({ label: q.label, color: q.color || PALETTE[i % PALETTE.length], xv: q.xs[k], v: num(q.ys[k]) });
    });
    rows.sort((a, b) => Math.abs(a.xv - target) - Math.abs(b.xv - target));
    const shown = rows.slice(0, 10);
    cross.setAttribute("x1", px);
    cross.setAttribute("x2", px);
    cross.setAttribute("visibility", "visible");
    tip.replaceChildren();
    const head = document.createElement("div");
    head.className = "tip-head";
    head.textContent = xFmt(target);
    tip.append(head);
    for (const r of shown) {
      const row = document.createElement("div");
      row.innerHTML = `<span class="swatch" style="background:${r.color}"></span>`;
      row.append(`${r.label}: ${fmtNum(r.v)} @ ${xFmt(r.xv)}`);
      tip.append(row);
    }
    if (rows.length > shown.length) tip.append(`… ${rows.length - shown.length} more`);
    tip.hidden = false;
    const left = px + 14 + 260 > rect.width ? px - 274 : px + 14;
    tip.style.left = `${Math.max(0, left)}px`;
    tip.style.top = `${box.t + 4}px`;
  });
}

/**
 * A scatter plot. points: [{x, y, label, href, color}]; x may be categorical (strings).
 * A positive x axis spanning more than a decade (learning rates) is drawn on a log scale.
 */
export function scatterChart(container, { points, xLabel = "", yLabel = "", height = 280 }) {
  const { svg, width } = frame(container, height);
  const box = { l: 64, r: width - 24, t: 10, b: height - 42 };
  const categorical = points.some((p) => typeof p.x !== "number");
  let cats = [];
  let xv = (p) => p.x;
  if (categorical) {
    cats = [...new Set(points.map((p) => String(p.x)))].sort();
    xv = (p) => cats.indexOf(String(p.x));
  }
  const xsAll = points.map(xv);
  const logX = !categorical && xsAll.every((v) => v > 0) && Math.max(...xsAll) / Math.min(...xsAll) > 10;
  const [x0, x1] = categorical ? [-0.5, cats.length - 0.5] : extent(xsAll, logX);
  const [y0, y1] = extent(points.map((p) => num(p.y)));
  const x = scale([x0, x1], [box.l + 8, box.r - 8], logX);
  const y = scale([y0, y1], [box.b - 10, box.t + 10]);
  const xTicks = categorical ? cats.map((_, i) => i) : logX ? logTicks(x0, x1) : niceTicks(x0, x1, 5);
  axes(svg, {
    x, y, box, xLabel, yLabel, xTicks, yTicks: niceTicks(y0, y1, 5),
    xFmt: categorical ? (i) => cats[i] : (v) => fmtNum(v, 3), yFmt: (v) => fmtNum(v, 3),
  });
  for (const p of points) {
    const vy = num(p.y);
    if (!Number.isFinite(vy)) continue;
    const c = s("circle", { cx: x(xv(p)), cy: y(vy), r: 5, fill: p.color || PALETTE[0], class: "point", "data-label": p.label });
    c.append(s("title", {}, `${p.label}: ${xLabel}=${categorical ? p.x : fmtNum(p.x)}, ${yLabel}=${fmtNum(vy)}`));
    if (p.href) {
      const a = s("a", { href: p.href });
      a.append(c);
      svg.append(a);
    } else {
      svg.append(c);
    }
  }
  return svg;
}

/**
 * Parallel coordinates: one vertical axis per dimension, one polyline per row.
 * dims: [{key, label, categorical?}]; rows: [{values: {key: v}, label, href, color}].
 * Numeric axes spanning more than a decade (all positive) are logarithmic.
 */
export function parallelChart(container, { dims, rows, height = 300 }) {
  const { svg, width } = frame(container, height);
  const box = { l: 40, r: width - 60, t: 24, b: height - 30 };
  const step = dims.length > 1 ? (box.r - box.l) / (dims.length - 1) : 0;
  const axes = dims.map((d, i) => {
    const vals = rows.map((r) => r.values[d.key]).filter((v) => v !== undefined && v !== null);
    const categorical = d.categorical || vals.some((v) => typeof v !== "number");
    const x = box.l + i * step;
    if (categorical) {
      const cats = [...new Set(vals.map(String))].sort();
      const pos = (v) => box.b - ((cats.indexOf(String(v)) + 0.5) / cats.length) * (box.b - box.t);
      return { d, x, pos, ticks: cats.map((c) => [pos(c), c]) };
    }
    const nums = vals.map(num).filter(Number.isFinite);
    const log = nums.length > 1 && nums.every((v) => v > 0) && Math.max(...nums) / Math.min(...nums) > 10;
    const [lo, hi] = extent(nums, log);
    const y = scale([lo, hi], [box.b, box.t], log);
    const ticks = (log ? logTicks(lo, hi) : niceTicks(lo, hi, 4)).map((t) => [y(t), fmtNum(t, 3)]);
    return { d, x, pos: (v) => y(num(v)), ticks };
  });
  for (const a of axes) {
    const g = s("g", { class: "axes" });
    g.append(s("line", { x1: a.x, x2: a.x, y1: box.t, y2: box.b, class: "pc-axis" }));
    g.append(s("text", { x: a.x, y: box.t - 10, "text-anchor": "middle", class: "axis-label" }, a.d.label));
    for (const [py, text] of a.ticks) {
      g.append(s("line", { x1: a.x - 3, x2: a.x, y1: py, y2: py, class: "pc-axis" }));
      g.append(s("text", { x: a.x + 5, y: py + 4, class: "tick" }, text));
    }
    svg.append(g);
  }
  rows.forEach((r, i) => {
    const pts = axes.map((a) => {
      const v = r.values[a.d.key];
      const py = v === undefined || v === null ? NaN : a.pos(v);
      return Number.isFinite(py) ? `${a.x.toFixed(1)},${py.toFixed(1)}` : null;
    });
    if (pts.some((p) => p === null)) return; // a row without every value has no line
    const line = s("polyline", { points: pts.join(" "), stroke: r.color || PALETTE[i % PALETTE.length], class: "pc-line", "data-label": r.label });
    line.append(s("title", {}, r.label));
    if (r.href) {
      const a = s("a", { href: r.href });
      a.append(line);
      svg.append(a);
    } else {
      svg.append(line);
    }
  });
  return svg;
}
