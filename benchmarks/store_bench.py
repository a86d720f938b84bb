"""Metric ingestion benchmark: ``SQLStore.add_metrics`` against a raw sqlite3 baseline.

Inserts ``--points`` metric reports (default 200,000; three metrics each, one report in ten a
validation report, one NaN in a hundred) in batches of ``--batch`` (default 1,000):

* **baseline**: the standard library's sqlite3 on a fresh file, WAL, ``synchronous=NORMAL``,
  a table of one row per report (JSON payload) with an index on
  ``(trial_id, metric_group, steps_completed)``, ``executemany`` of one batch per
  transaction. JSON encoding is inside the timed loop, as it is for the store.
* **store/sqlite**: ``SQLStore.add_metrics`` on a fresh migrated SQLite file (batch dedup row,
  summary update and foreign keys included).
* **store/postgresql**: the same on PostgreSQL, in a throwaway schema, if the server at
  ``--pg-url`` answers.

A second part measures the group-commit path the master takes under load (``MetricIngest``):
``--trials`` live trials (default 1,000) each send one report per round, and each round is one
``SQLStore.add_metrics_many`` call (one transaction for every trial's batch), ``--rounds``
rounds (default 20), against raw sqlite3 inserting the same rows one transaction per round.

Each configuration runs ``--repeat`` times (default 3) on fresh databases and the best run
is reported (the machine is shared). Run: ``python benchmarks/store_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from master_server.domain import ExperimentState, MetricReport, NewExperiment
from master_server.store import SQLStore, open_store

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_reports(points: int) -> list[MetricReport]:
    """The reports every configuration inserts (built once, outside the timed loops)."""
    now = time.time()
    out = []
    for i in range(points):
        group = "validation" if i % 10 == 9 else "training"
        loss = math.nan if i % 100 == 50 else 1.0 / (i + 1)
        out.append(
            MetricReport(
                group=group,
                steps_completed=i,
                metrics={"loss": loss, "accuracy": i / points, "lr": 0.001},
                timestamp=now + i * 1e-3,
            )
        )
    return out


RAW_INSERT = (
    "INSERT INTO metrics (trial_id, metric_group, steps_completed, timestamp, payload) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _raw_db(path: Path) -> sqlite3.Connection:
    """A fresh sqlite3 baseline database: WAL, a table of one row per report, indexed."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE metrics (id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, "
        "metric_group TEXT NOT NULL, steps_completed INTEGER NOT NULL, "
        "timestamp REAL NOT NULL, payload TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX ix_m ON metrics (trial_id, metric_group, steps_completed)")
    return db


def bench_baseline(path: Path, reports: list[MetricReport], batch: int) -> float:
    """Seconds to insert ``reports`` with plain sqlite3 (WAL, executemany, indexed table)."""
    db = _raw_db(path)
    sql = RAW_INSERT
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    start = time.perf_counter()
    for lo in range(0, len(reports), batch):
        rows = [
            (1, r.group, r.steps_completed, r.timestamp, dumps(r.metrics))
            for r in reports[lo : lo + batch]
        ]
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    (count,) = db.execute("SELECT COUNT(*) FROM metrics").fetchone()
    assert count == len(reports), count
    db.close()
    return elapsed


def bench_store(store: SQLStore, reports: list[MetricReport], batch: int) -> float:
    """Seconds to insert ``reports`` through ``store.add_metrics`` into one new trial."""
    exp = store.create_experiment(
        NewExperiment(
            name="bench",
            config={},
            original_config="",
            project_id=1,
            searcher_name="single",
            state=ExperimentState.ACTIVE,
        )
    )
    trial = store.create_trial(exp.id, request_id="bench", hparams={})
    start = time.perf_counter()
    for n, lo in enumerate(range(0, len(reports), batch)):
        assert store.add_metrics(trial.id, f"batch-{n}", reports[lo : lo + batch])
    elapsed = time.perf_counter() - start
    got = store.get_trial(trial.id)
    assert got.steps_completed == len(reports) - 1
    count = got.summary_metrics["avg_metrics"]["loss"]["count"]
    count += got.summary_metrics["validation_metrics"]["loss"]["count"]
    assert count == len(reports), count
    return elapsed


def bench_group_baseline(path: Path, trials: int, rounds: int) -> float:
    """Seconds for raw sqlite3 to insert ``rounds`` rounds of one report per trial."""
    db = _raw_db(path)
    sql = RAW_INSERT
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    start = time.perf_counter()
    for step in range(rounds):
        now = time.time()
        rows = [
            (t, "training", step, now, dumps({"loss": 1.0 / (step + 1)})) for t in range(trials)
        ]
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def bench_group(store: SQLStore, trials: int, rounds: int) -> float:
    """Seconds for ``rounds`` ``add_metrics_many`` calls of one batch per trial."""
    exp = store.create_experiment(
        NewExperiment(
            name="bench",
            config={},
            original_config="",
            project_id=1,
            searcher_name="asha",
            state=ExperimentState.ACTIVE,
        )
    )
    ids = [store.create_trial(exp.id, request_id=f"t{i}", hparams={}).id for i in range(trials)]
    start = time.perf_counter()
    for step in range(rounds):
        now = time.time()
        batches = [
            (
                tid,
                uuid.uuid4().hex,
                [MetricReport("training", step, {"loss": 1.0 / (step + 1)}, now)],
                1,
            )
            for tid in ids
        ]
        assert all(r is True for r in store.add_metrics_many(batches))
    elapsed = time.perf_counter() - start
    assert store.get_trial(ids[-1]).steps_completed == rounds - 1
    return elapsed


def best_of(repeat: int, run: Callable[[], float]) -> float:
    """The smallest of ``repeat`` timings."""
    return min(run() for _ in range(repeat))


def main() -> None:
    """Run the benchmark and print rows/s for each configuration."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trials", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    reports = make_reports(args.points)
    n = len(reports)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def baseline() -> float:
            return bench_baseline(root / f"raw-{uuid.uuid4().hex}.db", reports, args.batch)

        def via_store() -> float:
            store = open_store(f"sqlite:///{root / f'store-{uuid.uuid4().hex}.db'}")
            assert isinstance(store, SQLStore)
            try:
                return bench_store(store, reports, args.batch)
            finally:
                store.close()

        def group_baseline() -> float:
            path = root / f"raw-group-{uuid.uuid4().hex}.db"
            return bench_group_baseline(path, args.trials, args.rounds)

        def group_store() -> float:
            store = open_store(f"sqlite:///{root / f'group-{uuid.uuid4().hex}.db'}")
            assert isinstance(store, SQLStore)
            try:
                return bench_group(store, args.trials, args.rounds)
            finally:
                store.close()

        t_raw = best_of(args.repeat, baseline)
        t_store = best_of(args.repeat, via_store)
        tg_raw = best_of(args.repeat, group_baseline)
        tg_store = best_of(args.repeat, group_store)

    print(f"points={n} batch={args.batch} repeat={args.repeat} (best run)")
    print(f"raw sqlite3 baseline : {n / t_raw:>10,.0f} rows/s  ({t_raw:.2f} s)")
    print(f"SQLStore on SQLite   : {n / t_store:>10,.0f} rows/s  ({t_store:.2f} s)")
    print(f"ratio store/baseline : {t_raw / t_store:>10.2f}")
    g = args.trials * args.rounds
    print(f"\ngroup commit: {args.trials} trials x 1 report per transaction, {args.rounds} rounds")
    print(f"raw sqlite3 baseline : {g / tg_raw:>10,.0f} batches/s  ({tg_raw:.2f} s)")
    print(f"add_metrics_many     : {g / tg_store:>10,.0f} batches/s  ({tg_store:.2f} s)")
    print(f"ratio store/baseline : {tg_raw / tg_store:>10.2f}")

    if args.no_pg:
        return
    try:
        import psycopg

        plain = args.pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        print(f"PostgreSQL           : skipped ({type(exc).__name__}: {exc})")
        return

    def via_pg() -> float:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in args.pg_url else "?"
        store = open_store(f"{args.pg_url}{sep}options=-csearch_path%3D{schema}")
        assert isinstance(store, SQLStore)
        try:
            return bench_store(store, reports, args.batch)
        finally:
            store.close()
            with psycopg.connect(plain, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

    def group_pg() -> float:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in args.pg_url else "?"
        store = open_store(f"{args.pg_url}{sep}options=-csearch_path%3D{schema}")
        assert isinstance(store, SQLStore)
        try:
            return bench_group(store, args.trials, args.rounds)
        finally:
            store.close()
            with psycopg.connect(plain, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

    t_pg = best_of(args.repeat, via_pg)
    print(f"SQLStore on Postgres : {n / t_pg:>10,.0f} rows/s  ({t_pg:.2f} s)")
    tg_pg = best_of(args.repeat, group_pg)
    print(f"add_metrics_many, PG : {g / tg_pg:>10,.0f} batches/s  ({tg_pg:.2f} s)")


if __name__ == "__main__":
    main()
