"""Core API benchmark: the cost of one metric report, and end-to-end ingestion into the master.

Run: ``python benchmarks/core_api_bench.py [--reports 200000] [--postgres]``

(a) **Report cost.** p50/p99 of one ``ctx.train.report_training_metrics`` call in a tight loop,
    with the background sender attached to a real master (in its own process, as in production).
    Goal: p50 <= 5 us.
(b) **Ingestion rate.** From the first report until ``close()`` returns (everything stored by
    the master, on SQLite), for N reports of one metric each; compared with inserting the same
    rows straight into SQLite (sqlite3, WAL, synchronous=NORMAL, executemany in batches of
    1000, the same indexed table, JSON payload encoding included) in this same run. Goal: ratio
    >= 0.5. ``--postgres`` repeats (b) against PostgreSQL (master on
    ``postgresql+psycopg://postgres@127.0.0.1:5432/test`` vs psycopg ``executemany``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import core_api  # noqa: E402
from determined_sdk.proto import trial_pb2, trial_pb2_grpc  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 1000


@contextmanager
def master_process(data_dir: pathlib.Path, db_url: str | None = None) -> Iterator[str]:
    """A master in its own process (as in production); yields ``host:port``."""
    port_file = data_dir / "port"
    cmd = [
        sys.executable,
        "-m",
        "master_server",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        "--slots",
        "1",
        "--port-file",
        str(port_file),
        "--log-level",
        "WARNING",
    ]
    if db_url:
        cmd += ["--db", db_url]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the master did not start")
            time.sleep(0.05)  # waiting for the port file, bounded by the deadline
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def stored_points(address: str, trial_id: int) -> int:
    import grpc

    from determined_sdk._transport import BearerToken
    from determined_sdk.proto import master_pb2, master_pb2_grpc

    with grpc.insecure_channel(address) as raw:
        token = (
            master_pb2_grpc.MasterServiceStub(raw)
            .Login(master_pb2.LoginRequest(username="admin"))
            .token
        )
        ch = grpc.intercept_channel(raw, BearerToken(lambda: token))
        stub = trial_pb2_grpc.TrialServiceStub(ch)
        return sum(
            len(page.points)
            for page in stub.StreamMetrics(trial_pb2.StreamMetricsRequest(trial_ids=[trial_id]))
        )


def bench_report_cost(address: str, n: int) -> dict[str, float]:
    """(a): per-call latency of report_training_metrics with the sender live."""
    samples: list[int] = []
    with core_api.init(master=address, experiment_name="bench-report-cost") as ctx:
        report = ctx.train.report_training_metrics
        clock = time.perf_counter_ns
        for i in range(2000):  # warm-up
            report(i, {"loss": 0.5})
        for i in range(2000, 2000 + n):
            t0 = clock()
            report(i, {"loss": 0.5})
            samples.append(clock() - t0)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }


def bench_ingest(address: str, n: int) -> tuple[float, int]:
    """(b): seconds from the first report until close() returns, and the rows stored."""
    ctx = core_api.init(master=address, experiment_name="bench-ingest")
    assert ctx.info is not None
    trial_id = ctx.info.trial.trial_id
    report = ctx.train.report_training_metrics
    t0 = time.perf_counter()
    for i in range(n):
        report(i, {"loss": 1.0 / (i + 1)})
    ctx.close()
    elapsed = time.perf_counter() - t0
    return elapsed, stored_points(address, trial_id)


def _rows(n: int) -> Iterator[list[tuple[int, str, int, float, str]]]:
    now = time.time()
    dumps = json.dumps
    for start in range(0, n, BATCH):
        yield [
            (1, "training", i, now, dumps({"loss": 1.0 / (i + 1)}))
            for i in range(start, min(start + BATCH, n))
        ]


def bench_sqlite_direct(path: pathlib.Path, n: int) -> float:
    """Seconds to insert the same rows straight into SQLite (WAL, batches of 1000, indexed)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE metrics (id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, "
        "metric_group TEXT NOT NULL, steps_completed INTEGER NOT NULL, timestamp REAL NOT NULL, "
        "payload TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX ix_metrics ON metrics (trial_id, metric_group, steps_completed, id)")
    sql = (
        "INSERT INTO metrics (trial_id, metric_group, steps_completed, timestamp, payload) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    t0 = time.perf_counter()
    for rows in _rows(n):
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == n
    conn.close()
    return elapsed


def bench_postgres_direct(n: int) -> float:
    import psycopg

    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    table = f"core_api_bench_{os.getpid()}"  # our own table: the database may be shared
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, trial_id INTEGER NOT NULL, "
            "metric_group TEXT NOT NULL, steps_completed BIGINT NOT NULL, "
            "timestamp DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL)"
        )
        conn.execute(
            f"CREATE INDEX ix_{table} ON {table} (trial_id, metric_group, steps_completed, id)"
        )
        sql = (
            f"INSERT INTO {table} (trial_id, metric_group, steps_completed, timestamp, "
            "payload) VALUES (%s, %s, %s, %s, %s)"
        )
        t0 = time.perf_counter()
        for rows in _rows(n):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        elapsed = time.perf_counter() - t0
        conn.execute(f"DROP TABLE {table}")
    return elapsed


def _row(label: str, rate: float, secs: float) -> None:
    print(f"    {label:<31}: {rate:>10,.0f} rows/s ({secs:.2f} s)")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reports", type=int, default=200_000, help="reports for the ingestion run")
    p.add_argument("--calls", type=int, default=100_000, help="timed calls for the cost run")
    p.add_argument("--repeat", type=int, default=3, help="ingestion runs; the median is shown")
    p.add_argument("--postgres", action="store_true", help=f"also ingest into {PG_URL}")
    args = p.parse_args()
    n = args.reports

    with tempfile.TemporaryDirectory(prefix="core-api-bench-") as tmp:
        root = pathlib.Path(tmp)
        print(f"core_api benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        with master_process(root / "sqlite-master") as address:
            cost = bench_report_cost(address, args.calls)
            print(
                f"(a) report_training_metrics, {args.calls} calls, sender live (master on SQLite):"
                f" p50 {cost['p50_us']:.2f} us, p99 {cost['p99_us']:.2f} us,"
                f" mean {cost['mean_us']:.2f} us  (goal p50 <= 5 us:"
                f" {'met' if cost['p50_us'] <= 5 else 'NOT met'})"
            )
            api_times, direct_times = [], []
            for i in range(args.repeat):  # interleaved, so both see the same machine load
                secs, stored = bench_ingest(address, n)
                assert stored == n, f"the master stored {stored} of {n} reports"
                api_times.append(secs)
                direct_times.append(bench_sqlite_direct(root / f"direct-{i}.db", n))
        secs, direct = statistics.median(api_times), statistics.median(direct_times)
        api_rate, direct_rate = n / secs, n / direct
        print(
            f"(b) ingestion of {n} reports x 1 metric, first report -> close() returned"
            f" (median of {args.repeat}):"
        )
        _row("core_api -> master -> SQLite", api_rate, secs)
        _row("sqlite3 executemany direct", direct_rate, direct)
        print(
            f"    {'ratio core_api / direct':<31}: {api_rate / direct_rate:.2f}  (goal >= 0.5:"
            f" {'met' if api_rate / direct_rate >= 0.5 else 'NOT met'})"
        )
        if args.postgres:
            with master_process(root / "pg-master", PG_URL) as address:
                secs, stored = bench_ingest(address, n)
            assert stored == n, f"the master stored {stored} of {n} reports"
            direct = bench_postgres_direct(n)
            api_rate, direct_rate = n / secs, n / direct
            print("    PostgreSQL:")
            _row("core_api -> master -> Postgres", api_rate, secs)
            _row("psycopg executemany direct", direct_rate, direct)
            print(f"    {'ratio core_api / direct':<31}: {api_rate / direct_rate:.2f}")


if __name__ == "__main__":
    main()
