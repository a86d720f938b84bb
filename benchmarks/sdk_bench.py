"""SDK read paths against a real master: listing, metric streaming, checkpoint sorting, download.

Run: ``python benchmarks/sdk_bench.py [--experiments 10000] [--points 1000000]
[--checkpoints 10000] [--download-mib 256]``. It starts a master on 127.0.0.1 (port 0) with
SQLite in a temporary directory, fills the store directly (the write paths have their own
benchmark), then times the SDK calls and, for each, the same RPC through a bare stub so the SDK's
own overhead shows as a ratio. Figures go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
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

import grpc  # noqa: E402

from determined_sdk import CheckpointSortBy, Determined, DownloadMode, OrderBy  # noqa: E402
from determined_sdk._transport import BearerToken  # noqa: E402
from determined_sdk.proto import (  # noqa: E402
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    common_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
)
from master_server.app import Master  # noqa: E402
from master_server.domain import (  # noqa: E402
    Checkpoint,
    CheckpointState,
    ExperimentState,
    MetricReport,
    NewExperiment,
)

MiB = 2**20
RAW_LIST_SQL = """
SELECT e.id, e.name, e.description, e.labels, e.state, e.archived, e.progress, e.project_id,
       p.workspace_id, e.start_time, e.end_time, e.searcher_name,
       (SELECT count(*) FROM trials t WHERE t.experiment_id = e.id), e.unmanaged, e.error
FROM experiments e JOIN projects p ON p.id = e.project_id ORDER BY e.id
"""


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs, and the last result."""
    best = float("inf")
    out: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def row(name: str, seconds: float, n: float, unit: str, extra: str = "") -> None:
    print(f"  {name:<44} {seconds * 1e3:9.1f} ms  {n / seconds:14,.0f} {unit}/s  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiments", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--checkpoints", type=int, default=10_000)
    ap.add_argument("--download-mib", type=int, default=256)
    args = ap.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sdk-bench-"))
    try:
        ids = fill(tmp / "master", args)
        proc, address = serve(tmp / "master")
        try:
            measure(address, ids, args, tmp)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fill(data_dir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fill a master's store directly (in-process), then stop that master."""
    master = Master(data_dir, slots=1).start()
    store = master.parts["store"]
    ids: dict[str, Any] = {}
    try:
        with Determined(master.address) as det:
            base = det.create_experiment(
                {
                    "name": "bench",
                    "entrypoint": ["python", "-c", "pass"],
                    "searcher": {
                        "name": "single",
                        "metric": "loss",
                        "smaller_is_better": True,
                        "max_length": {"batches": 1},
                    },
                    "hyperparameters": {"lr": 0.1},
                },
                None,
                activate=False,
            )
            cfg = base.config
        ids["experiment"] = base.id
        t0 = time.perf_counter()
        for i in range(args.experiments - 1):
            store.create_experiment(
                NewExperiment(
                    name=f"bench-{i}",
                    config=cfg,
                    original_config="",
                    project_id=1,
                    searcher_name="single",
                    state=ExperimentState.PAUSED,
                    labels=("bench",),
                )
            )
        print(f"[fill] {args.experiments:,} experiments in {time.perf_counter() - t0:.1f}s")

        trial = store.create_trial(base.id, request_id="bench", hparams={"lr": 0.1})
        ids["metrics_trial"] = trial.id
        per_batch = 10_000
        t0 = time.perf_counter()
        now = time.time()
        for start in range(0, args.points, per_batch):
            reports = [
                MetricReport(
                    "training" if s % 10 else "validation",
                    s,
                    {"loss": 1.0 / (s + 1), "acc": s / args.points},
                    now,
                )
                for s in range(start, min(start + per_batch, args.points))
            ]
            store.add_metrics(trial.id, uuid.uuid4().hex, reports)
        print(f"[fill] {args.points:,} metric points in {time.perf_counter() - t0:.1f}s")

        ck_trial = store.create_trial(base.id, request_id="bench-ck", hparams={"lr": 0.2})
        ids["ckpt_trial"] = ck_trial.id
        storage = str(master.checkpoint_dir)
        t0 = time.perf_counter()
        for start in range(0, args.checkpoints, per_batch):
            store.add_metrics(
                ck_trial.id,
                uuid.uuid4().hex,
                [
                    MetricReport("validation", s, {"loss": ((s * 7919) % 10007) / 10007}, now)
                    for s in range(start + 1, min(start + per_batch, args.checkpoints) + 1)
                ],
            )
        for s in range(1, args.checkpoints + 1):
            store.add_checkpoint(
                Checkpoint(
                    uuid=str(uuid.uuid4()),
                    trial_id=ck_trial.id,
                    experiment_id=base.id,
                    state=CheckpointState.COMPLETED,
                    steps_completed=s,
                    resources={"model.bin": 1024},
                    metadata={"steps_completed": s},
                    storage={"type": "shared_fs", "path": storage},
                    report_time=now + s,
                )
            )
        print(f"[fill] {args.checkpoints:,} checkpoints in {time.perf_counter() - t0:.1f}s")

        size = args.download_mib * MiB
        big = str(uuid.uuid4())
        src = pathlib.Path(storage, big)
        (src / "shards").mkdir(parents=True)
        n_files = 4
        chunk = os.urandom(MiB)
        resources: dict[str, int] = {}
        for i in range(n_files):
            rel = f"shards/part-{i}.bin" if i else "model.bin"
            with open(src / rel, "wb") as f:
                for _ in range(size // n_files // MiB):
                    f.write(chunk)
            resources[rel] = (src / rel).stat().st_size
        store.add_checkpoint(
            Checkpoint(
                uuid=big,
                trial_id=ck_trial.id,
                experiment_id=base.id,
                state=CheckpointState.COMPLETED,
                steps_completed=args.checkpoints + 1,
                resources=resources,
                metadata={"steps_completed": args.checkpoints + 1},
                storage={"type": "shared_fs", "path": storage},
                report_time=time.time(),
            )
        )
        ids["big_ckpt"] = big
        ids["big_src"] = src
        ids["big_files"] = n_files
    finally:
        master.stop()
    return ids


def serve(data_dir: pathlib.Path) -> tuple[subprocess.Popen[bytes], str]:
    """Run the master in its own process, so client and server do not share one GIL."""
    port_file = data_dir / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
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
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 300  # it recovers every unfinished experiment first
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the master did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def measure(address: str, ids: dict[str, Any], args: argparse.Namespace, tmp: pathlib.Path) -> None:
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", 128 * MiB),
            ("grpc.max_send_message_length", 128 * MiB),
        ],
    )
    try:
        with Determined(address, "admin", "", timeout=600) as det:
            token = det.session.token
            channel = grpc.intercept_channel(channel, BearerToken(lambda: token))
            print(f"\nmaster {address} in its own process; figures are the best of a few runs")
            print(f"list_experiments over {args.experiments:,} experiments")
            exp_stub = experiment_pb2_grpc.ExperimentServiceStub(channel)

            def raw_list() -> int:
                # Every page (the master sends at most 1,000 rows a reply).
                n, offset = 0, 0
                while True:
                    req = experiment_pb2.ListExperimentsRequest(
                        pagination=common_pb2.Pagination(offset=offset, limit=1000)
                    )
                    got = len(exp_stub.ListExperiments(req).experiments)
                    n, offset = n + got, offset + got
                    if got < 1000:
                        return n

            t_raw, n = timed(raw_list)
            row("raw stub, pages of 1000", t_raw, n, "exp")
            t_sdk, exps = timed(det.list_experiments)
            assert len(exps) == args.experiments, len(exps)
            row(
                "SDK list_experiments (pages of 1000)",
                t_sdk,
                len(exps),
                "exp",
                f"SDK/raw = {t_sdk / t_raw:.2f}",
            )
            t_attr, _ = timed(lambda: [(e.name, e.state, e.labels) for e in exps], 1)
            row("  + read name/state/labels of each", t_attr, len(exps), "exp")
            db = tmp / "master" / "master.db"

            def raw_select() -> int:
                # The same rows and columns a list sends (a summary: no configs), no gRPC.
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    return len(conn.execute(RAW_LIST_SQL).fetchall())

            t_sel, n_sel = timed(raw_select)
            assert n_sel == args.experiments, n_sel
            row(
                "raw sqlite3 SELECT of the same rows",
                t_sel,
                n_sel,
                "exp",
                f"stub/SELECT = {t_raw / t_sel:.2f}, SDK/SELECT = {t_sdk / t_sel:.2f} (goal <= 3)",
            )

            print(f"\niter_metrics over {args.points:,} points")
            trial_stub = trial_pb2_grpc.TrialServiceStub(channel)
            trial_id = ids["metrics_trial"]

            def raw_stream() -> int:
                req = trial_pb2.StreamMetricsRequest(trial_ids=[trial_id], columnar=True)
                return sum(len(p.columns.steps_completed) for p in trial_stub.StreamMetrics(req))

            t_raw, n = timed(raw_stream, 2)
            row("raw stub StreamMetrics (messages only)", t_raw, n, "pts")
            sdk_trial = det.get_trial(trial_id)
            t_sdk, n = timed(lambda: sum(1 for _ in sdk_trial.iter_metrics()), 2)
            assert n == args.points, n
            row("SDK Trial.iter_metrics", t_sdk, n, "pts", f"SDK/raw = {t_sdk / t_raw:.2f}")
            t_val, n = timed(lambda: sum(1 for _ in sdk_trial.iter_metrics("validation")), 2)
            row("SDK Trial.iter_metrics('validation')", t_val, n, "pts")

            print(f"\nlist_checkpoints over {args.checkpoints:,} checkpoints")
            ck_stub = checkpoint_pb2_grpc.CheckpointServiceStub(channel)
            ck_trial = ids["ckpt_trial"]

            def raw_ckpts() -> int:
                req = checkpoint_pb2.ListCheckpointsRequest(
                    trial_id=ck_trial, sort_by="metric:loss"
                )
                return len(ck_stub.ListCheckpoints(req).checkpoints)

            t_raw, n = timed(raw_ckpts)
            row("raw stub, sort_by metric:loss", t_raw, n, "ckpt")
            sdk_ck_trial = det.get_trial(ck_trial)
            t_sdk, ckpts = timed(lambda: sdk_ck_trial.list_checkpoints(sort_by="loss"))
            assert len(ckpts) == args.checkpoints + 1, len(ckpts)
            losses = [c.validation_metrics["loss"] for c in ckpts[:1000]]
            assert losses == sorted(losses)
            row(
                'SDK list_checkpoints(sort_by="loss")',
                t_sdk,
                len(ckpts),
                "ckpt",
                f"SDK/raw = {t_sdk / t_raw:.2f}",
            )
            t_top, top = timed(
                lambda: sdk_ck_trial.list_checkpoints(sort_by="loss", max_results=10)
            )
            row("SDK same, max_results=10", t_top, len(top), "ckpt")
            t_enum, _ = timed(
                lambda: sdk_ck_trial.list_checkpoints(CheckpointSortBy.END_TIME, OrderBy.DESC)
            )
            row("SDK sort_by=END_TIME desc", t_enum, args.checkpoints, "ckpt")

            src: pathlib.Path = ids["big_src"]
            ck = det.get_checkpoint(ids["big_ckpt"])
            total = ck.total_bytes
            print(f"\ncheckpoint download, {total / MiB:.0f} MiB in {ids['big_files']} files")
            out = tmp / "dl"

            def fresh(name: str) -> pathlib.Path:
                p = out / name
                shutil.rmtree(p, ignore_errors=True)
                return p

            t_copy, _ = timed(lambda: shutil.copytree(src, fresh("copy")), 3)
            t_direct, _ = timed(lambda: ck.download(fresh("direct"), mode=DownloadMode.DIRECT), 3)
            t_master, _ = timed(lambda: ck.download(fresh("master"), mode=DownloadMode.MASTER), 3)
            mbs = total / MiB
            print(
                f"  {'plain shutil.copytree':<44} {t_copy * 1e3:9.1f} ms  {mbs / t_copy:10.0f} MB/s"
            )
            print(
                f"  {'SDK download(mode=DIRECT)':<44} {t_direct * 1e3:9.1f} ms  "
                f"{mbs / t_direct:10.0f} MB/s  direct/copy = {t_direct / t_copy:.2f}"
            )
            print(
                f"  {'SDK download(mode=MASTER) (gRPC stream)':<44} {t_master * 1e3:9.1f} ms  "
                f"{mbs / t_master:10.0f} MB/s  master/copy = {t_master / t_copy:.2f}"
            )
    finally:
        channel.close()


if __name__ == "__main__":
    main()
