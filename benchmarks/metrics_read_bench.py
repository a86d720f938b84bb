"""Bulk metric reads: the SDK against a raw SELECT of the same rows, in the same run.

Run: ``python benchmarks/metrics_read_bench.py [--points 1000000] [--chart-trials 100]
[--chart-points 10000]``. It fills a SQLite master's store directly (one trial of ``--points``
reports of two metrics, 1 in 10 of them validation; then ``--chart-trials`` trials of
``--chart-points`` training reports), starts the master in its own process, and times:

* ``raw SELECT + json.loads``: sqlite3 on the same file, the trial's rows in steps order, each
  payload decoded (what a hand-written reader would do);
* ``raw SELECT, no JSON``: the same rows fetched, payloads left as strings (the floor for any
  reader that goes through Python's sqlite3);
* ``SDK Trial.iter_metrics()``: through gRPC, every point as a ``TrialMetrics``;
* the same for one group, a names filter, and a chart of every chart trial's ``loss``
  (``iter_trials_metrics(..., names=["loss"])``);
* that chart through ``Determined.metric_series`` (the master's packed per-name series, RPC
  ``StreamMetricSeries``), every point and downsampled to 1,000 per trial.

Each line gives the best wall time and the least CPU time of a run (the benchmark's process and
the master's, read from ``/proc``): on a machine shared with other work the wall time also
counts waiting for a core, and the CPU ratio is the steadier comparison.

Goals (issue 11): >= 500k points/s and >= 0.6x the no-JSON SELECT for the 1M-point trial; the
chart of 100 trials x 10k points in under a second (the ``metric_series`` line).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from determined_sdk import Determined  # noqa: E402
from master_server.app import Master  # noqa: E402
from master_server.domain import MetricReport  # noqa: E402

CONFIG = {
    "name": "bench",
    "entrypoint": ["python", "-c", "pass"],
    "searcher": {
        "name": "single",
        "metric": "loss",
        "smaller_is_better": True,
        "max_length": {"batches": 1},
    },
    "hyperparameters": {"lr": 0.1},
}


MASTER_PID: list[int] = []  # the served master's process, once started


def master_cpu() -> float:
    """CPU seconds the served master has used (0 where /proc cannot tell)."""
    try:
        stat = pathlib.Path(f"/proc/{MASTER_PID[0]}/stat").read_text()
    except (IndexError, OSError):
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int, float]:
    """Best wall time of ``repeat`` runs, the count the last one returned, and the least CPU
    time of a run (this process and the master's together; on a shared machine the wall time
    also counts the waits for a core, the CPU time does not)."""
    best = best_cpu = float("inf")
    n = 0
    for _ in range(repeat):
        c0, m0 = time.process_time(), master_cpu()
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0 + master_cpu() - m0)
    return best, n, best_cpu


def row(name: str, seconds: float, n: int, cpu: float, extra: str = "") -> None:
    print(
        f"  {name:<48} {seconds * 1e3:9.1f} ms  {n / seconds:12,.0f} pts/s  "
        f"cpu {cpu * 1e3:7.1f} ms  {extra}"
    )


def fill(data_dir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    master = Master(data_dir, slots=1).start()
    store = master.parts["store"]
    out: dict[str, Any] = {"db": data_dir / "master.db"}
    try:
        with Determined(master.address) as det:
            exp = det.create_experiment(CONFIG, None, activate=False)
        now = time.time()
        t0 = time.perf_counter()
        trial = store.create_trial(exp.id, request_id="big", hparams={"lr": 0.1})
        out["big"] = trial.id
        for start in range(0, args.points, 10_000):
            reports = [
                MetricReport(
                    "training" if s % 10 else "validation",
                    s,
                    {"loss": 1.0 / (s + 1), "acc": s / args.points},
                    now + s,
                )
                for s in range(start, min(start + 10_000, args.points))
            ]
            store.add_metrics(trial.id, uuid.uuid4().hex, reports)
        chart = []
        for i in range(args.chart_trials):
            t = store.create_trial(exp.id, request_id=f"chart-{i}", hparams={"lr": i})
            chart.append(t.id)
            for start in range(0, args.chart_points, 10_000):
                reports = [
                    MetricReport("training", s, {"loss": (i + 1) / (s + 1), "lr": 0.1}, now + s)
                    for s in range(start, min(start + 10_000, args.chart_points))
                ]
                store.add_metrics(t.id, uuid.uuid4().hex, reports)
        out["chart"] = chart
        print(f"[fill] {time.perf_counter() - t0:.1f} s")
    finally:
        master.stop()
    if not out["db"].exists():
        raise RuntimeError(f"expected the master's SQLite file at {out['db']}")
    return out


def serve(data_dir: pathlib.Path) -> tuple[subprocess.Popen[bytes], str]:
    """The master in its own process, so client and server do not share one GIL."""
    port_file = data_dir / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "master_server", "--data-dir", str(data_dir)),
            *("--port", "0", "--slots", "1", "--port-file", str(port_file)),
            *("--log-level", "WARNING"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the master did not start")
        time.sleep(0.05)
    MASTER_PID[:] = [proc.pid]
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def measure(address: str, ids: dict[str, Any], args: argparse.Namespace) -> None:
    big = ids["big"]
    sql = (
        "SELECT steps_completed, timestamp, metric_group, payload FROM metrics "
        "WHERE trial_id = ? ORDER BY steps_completed, id"
    )
    db = sqlite3.connect(ids["db"])

    def raw_json() -> int:
        loads = json.loads
        rows = [(s, ts, g, loads(p)) for s, ts, g, p in db.execute(sql, (big,))]
        return len(rows)

    def raw_plain() -> int:
        return len(db.execute(sql, (big,)).fetchall())

    r = args.repeat
    print(f"\none trial of {args.points:,} points (2 metrics each); best of {r} runs")
    t_json, n, c_json = timed(raw_json, r)
    row("raw SELECT + json.loads (sqlite3)", t_json, n, c_json)
    t_plain, n, c_plain = timed(raw_plain, r)
    row("raw SELECT, no JSON (sqlite3)", t_plain, n, c_plain)
    with Determined(address, timeout=600) as det:
        trial = det.get_trial(big)
        t_sdk, n, c_sdk = timed(lambda: sum(1 for _ in trial.iter_metrics()), r)
        assert n == args.points, n
        row(
            "SDK Trial.iter_metrics()",
            t_sdk,
            n,
            c_sdk,
            f"x{t_json / t_sdk:.2f} of raw+JSON, x{t_plain / t_sdk:.2f} of no-JSON "
            f"(cpu x{c_plain / c_sdk:.2f})",
        )
        t, n, c = timed(lambda: sum(1 for _ in trial.iter_metrics("validation")), r)
        row("SDK Trial.iter_metrics('validation')", t, n, c)
        t, n, c = timed(lambda: sum(1 for _ in trial.iter_metrics("training", names=["loss"])), r)
        row("SDK iter_metrics('training', names=['loss'])", t, n, c)
        t, n, c = timed(lambda: sum(1 for _ in trial.iter_metrics(min_steps=990_000)), r)
        row("SDK iter_metrics(min_steps=990000)", t, n, c)

        chart = ids["chart"]
        total = len(chart) * args.chart_points
        print(f"\nchart: {len(chart)} trials x {args.chart_points:,} points, one metric")

        def load_chart() -> int:
            series: dict[int, tuple[list[int], list[float]]] = {t: ([], []) for t in chart}
            for m in det.iter_trials_metrics(chart, "training", names=["loss"]):
                xs, ys = series[m.trial_id]
                xs.append(m.steps_completed)
                ys.append(m.metrics["loss"])
            return sum(len(xs) for xs, _ in series.values())

        t, n, c = timed(load_chart, r)
        assert n == total, n
        # Every point as a TrialMetrics (per-point reads); the chart's goal is the next line's.
        row("SDK iter_trials_metrics(names=['loss']) -> series", t, n, c, f"{t:.2f} s")

        def load_series(max_points: int | None = None) -> int:
            got = det.metric_series(chart, "loss", "training", max_points=max_points)
            assert all(got[t]["loss"].total_points == args.chart_points for t in chart)
            return sum(len(by_name["loss"]) for by_name in got.values())

        t, n, c = timed(load_series, r)
        assert n == total, n
        row("SDK metric_series(ids, 'loss') (packed series)", t, n, c, f"{t:.2f} s (goal < 1 s)")
        t, n, c = timed(lambda: load_series(1000), r)
        row("SDK metric_series(ids, 'loss', max_points=1000)", t, n, c, f"{t:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--chart-trials", type=int, default=100)
    ap.add_argument("--chart-points", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="metrics-read-bench-"))
    try:
        ids = fill(tmp / "master", args)
        proc, address = serve(tmp / "master")
        try:
            measure(address, ids, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
