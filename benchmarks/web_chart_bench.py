"""Chart-load benchmark: learning curves of 100 trials x 10k points through the REST API.

Fills a real master's SQLite store with ``--trials`` trials (default 100) of ``--points``
validation points each (default 10,000; one metric), then measures, best of ``--repeat`` runs:

* **baseline**: a raw sqlite3 SELECT of the same rows from the master's database file (the
  index the store uses, no decoding), and the same with each row's JSON payload decoded;
* **REST**: ``GET /api/v1/experiments/{id}/metrics?group=validation&names=loss&max_points=400``
  over HTTP, what the experiment page asks for with 100 trials: every trial's series,
  downsampled on the master (min/max per bucket), JSON-encoded and parsed by the client; *cold*
  (the master's series cache emptied first: the store read and the downsampling), *warm*
  (what a page that polls a finished experiment gets), and the first request of a master
  restarted on the same database;
* **browser** (when Debian's chromium and playwright are installed): the experiment page opened
  in headless chromium until its chart has drawn one path per trial.

Goal (issue 11): the chart loads in under a second. The read path underneath is the store's
packed series (``Store.metric_series``, a few rows per series; ``iter_metrics`` is measured
by ``metrics_read_bench.py``).
Run: ``python benchmarks/web_chart_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import httpx

from master_server.app import Master, tune_gc_for_serving
from master_server.domain import ExperimentState, MetricReport, NewExperiment

CHROMIUM = os.environ.get("DETSDK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def fill(master: Master, trials: int, points: int) -> int:
    store = master.parts["store"]
    exp = store.create_experiment(
        NewExperiment(
            name="chart-bench",
            config={"searcher": {"name": "random", "metric": "loss", "smaller_is_better": True}},
            original_config="",
            project_id=1,
            searcher_name="random",
            state=ExperimentState.COMPLETED,  # nothing for the master to recover or schedule
        )
    )
    now = time.time()
    for t in range(trials):
        trial = store.create_trial(exp.id, request_id=f"t{t}", hparams={"lr": 10 ** (-1 - t / 50)})
        lr = 0.5 + t / trials
        reports = [
            MetricReport(
                "validation",
                i,
                {"loss": 2.0 * math.exp(-i * lr / points * 5) + 0.05 * math.sin(i / 37)},
                now + i * 0.01,
            )
            for i in range(points)
        ]
        for lo in range(0, points, 5000):
            store.add_metrics(trial.id, f"b{lo}", reports[lo : lo + 5000])
    return int(exp.id)


def best_of(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--max-points", type=int, default=400, help="the UI's for 100 trials")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args()
    total = args.trials * args.points
    with tempfile.TemporaryDirectory(prefix="detsdk-chart-bench-") as tmp:
        master = Master(tmp, slots=1, http_port=0).start()
        tune_gc_for_serving()  # what the master's own process does (python -m master_server)
        try:
            t0 = time.perf_counter()
            exp_id = fill(master, args.trials, args.points)
            print(
                f"stored {args.trials} trials x {args.points} points in "
                f"{time.perf_counter() - t0:.1f}s"
            )
            db = sqlite3.connect(Path(tmp) / "master.db")
            trial_ids = [
                r[0] for r in db.execute("SELECT id FROM trials WHERE experiment_id = ?", (exp_id,))
            ]
            marks = ",".join("?" * len(trial_ids))
            sql = (
                "SELECT trial_id, steps_completed, timestamp, payload FROM metrics "
                f"WHERE trial_id IN ({marks}) AND metric_group = 'validation' "
                "ORDER BY trial_id, steps_completed, id"
            )

            def raw() -> None:
                rows = db.execute(sql, trial_ids).fetchall()
                assert len(rows) == total, len(rows)

            def raw_json() -> None:
                rows = db.execute(sql, trial_ids).fetchall()
                loads = json.loads
                assert sum(1 for r in rows if "loss" in loads(r[3])) == total

            url = (
                f"{master.http_url}/api/v1/experiments/{exp_id}/metrics"
                f"?group=validation&names=loss&max_points={args.max_points}"
            )
            client = httpx.Client(timeout=600)

            def rest() -> None:
                body = client.get(url).json()
                assert len(body["trials"]) == args.trials
                s = body["trials"][0]["series"]["loss"]
                assert s["total_points"] == args.points
                assert len(s["values"]) <= max(args.max_points, 4)

            reader = master._http.app.state.series_reader

            def rest_cold() -> None:
                reader.clear()
                rest()

            t_raw = best_of(args.repeat, raw)
            t_json = best_of(args.repeat, raw_json)
            t_rest = best_of(args.repeat, rest_cold)
            t_warm = best_of(args.repeat, rest)
            # Coldest: the first chart request a freshly started master answers (no cache of
            # any kind in its process; the OS may still hold the file's pages).
            client.close()
            master.stop()
            master = Master(tmp, slots=1, http_port=0).start()
            client = httpx.Client(timeout=600)
            url = url.replace(url.split("/api/")[0], str(master.http_url))
            reader = master._http.app.state.series_reader
            # One request first: a fresh master's first HTTP request verifies the loopback
            # login's password once (argon2, ~0.2 s), whatever it asks for.
            client.get(f"{master.http_url}/api/v1/master").raise_for_status()
            t_first = best_of(1, rest)
            print(f"{'what':<52} {'seconds':>8} {'points/s':>12} {'vs raw SELECT':>14}")
            for name, t in (
                ("baseline: raw SELECT (no decoding)", t_raw),
                ("baseline: raw SELECT + json.loads", t_json),
                (f"REST experiment metrics, cold, max_points={args.max_points}", t_rest),
                (f"REST experiment metrics, warm, max_points={args.max_points}", t_warm),
                ("REST: first chart request of a restarted master", t_first),
            ):
                print(f"{name:<52} {t:8.3f} {total / t:12,.0f} {t_raw / t:13.2f}x")
            if not args.no_browser and Path(CHROMIUM).exists():
                cold = browser_load(
                    str(master.http_url), exp_id, args.trials, args.repeat, reader.clear
                )
                warm = browser_load(str(master.http_url), exp_id, args.trials, args.repeat)
                print(f"{'browser: experiment page drawn, cold':<52} {cold:8.3f}")
                print(f"{'browser: experiment page drawn, warm':<52} {warm:8.3f}")
                worst = max(t_rest, t_first, cold)
            else:
                print("browser: skipped (no chromium; apt-get install -y chromium)")
                worst = max(t_rest, t_first)
            verdict = "met" if worst < 1.0 else "NOT met"
            print(
                f"goal: chart of {args.trials} x {args.points} points loads in < 1 s: {verdict} "
                f"({worst:.2f} s)"
            )
        finally:
            master.stop()


def browser_load(
    base: str, exp_id: int, trials: int, repeat: int, before: Callable[[], None] | None = None
) -> float:
    """Best seconds from opening the experiment page until its chart has a path per trial."""
    from playwright.sync_api import sync_playwright

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
    best = math.inf
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/models")  # warm the static files' cache and the browser
        for _ in range(repeat):
            if before is not None:
                before()
            t0 = time.perf_counter()
            page.goto(f"{base}/experiments/{exp_id}")
            page.wait_for_function(
                f"document.querySelectorAll('#curves path.series').length === {trials}",
                timeout=120_000,
            )
            best = min(best, time.perf_counter() - t0)
        browser.close()
    return best


if __name__ == "__main__":
    main()
