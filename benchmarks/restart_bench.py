"""Master restart benchmark: trials outlive the master.

Run: ``python benchmarks/restart_bench.py [--runs 50] [--outage 30]``

(a) **Restart to serving, adopting live runs.** A master (its own process, as in production)
    runs ``--runs`` trials that sleep; it is ``kill -9``ed and started again on the same data
    dir and port. Measured: from the new process's start until it answers (health) and until
    every trial is RUNNING as run 1 with its slots held (adopted). Baseline in the same run: the
    same restart with no experiment at all. Printed: both times and their ratio.
(b) **Worst report call during an outage.** An unmanaged Core API run reports one metric every
    millisecond; the master is ``kill -9``ed for ``--outage`` seconds, then started again.
    Measured: p50 / p99 / max of ``report_training_metrics`` calls while the master is up
    (baseline) and during the outage; every report is checked stored once afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import yaml  # noqa: E402

import core_api  # noqa: E402
from determined_sdk.model_dir import pack_model_dir  # noqa: E402
from determined_sdk.proto import (  # noqa: E402
    common_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
)

_TOKENS: dict[str, str] = {}


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the loopback quick start admin's session token (every RPC but Login needs one)."""

    def __init__(self, token: str) -> None:
        self.md = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self.md))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


def _channel(address: str) -> grpc.Channel:
    """A channel to the master that logs in once per address (the admin's empty password; the
    session is stored, so it outlives a restart of the master)."""
    if address not in _TOKENS:
        with grpc.insecure_channel(address) as ch:
            login = master_pb2_grpc.MasterServiceStub(ch).Login
            _TOKENS[address] = login(master_pb2.LoginRequest(username="admin"), timeout=30).token
    return grpc.intercept_channel(grpc.insecure_channel(address), _Bearer(_TOKENS[address]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Master:
    """A master process that can be killed and started again on the same data dir and port."""

    def __init__(self, data_dir: pathlib.Path, slots: int) -> None:
        self.data_dir, self.slots, self.port = data_dir, slots, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start; returns seconds until GetMasterInfo answers."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "master_server",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--slots",
                str(self.slots),
                "--log-level",
                "WARNING",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        with grpc.insecure_channel(self.address) as ch:
            stub = master_pb2_grpc.MasterServiceStub(ch)
            deadline = time.monotonic() + 120
            while True:
                try:
                    stub.GetMasterInfo(master_pb2.GetMasterInfoRequest(), timeout=1)
                    return time.perf_counter() - t0
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNAUTHENTICATED:  # it answers: serving
                        return time.perf_counter() - t0
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise SystemExit("the master did not start") from None
                    time.sleep(0.01)  # polling for the server, bounded by the deadline

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop_all(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid_file in self.data_dir.glob("runs/trial-*/run-*/.det/supervisor.pid"):
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _trials(address: str, exp_id: int) -> list[trial_pb2.Trial]:
    with _channel(address) as ch:
        stub = experiment_pb2_grpc.ExperimentServiceStub(ch)
        req = experiment_pb2.ListExperimentTrialsRequest(experiment_id=exp_id)
        return list(stub.ListExperimentTrials(req, timeout=30).trials)


def _all_adopted(address: str, exp_id: int, n: int) -> bool:
    try:
        ts = _trials(address, exp_id)
        with _channel(address) as ch:
            info = master_pb2_grpc.MasterServiceStub(ch).GetMasterInfo(
                master_pb2.GetMasterInfoRequest(), timeout=30
            )
    except grpc.RpcError:
        return False
    running = common_pb2.TRIAL_STATE_RUNNING
    ok = len(ts) == n and all(t.state == running and t.run_id == 1 and t.restarts == 0 for t in ts)
    return ok and info.free_slots == 0


def bench_adoption(runs: int, root: pathlib.Path) -> dict[str, float]:
    """(a): restart to serving with ``runs`` live runs vs with none."""
    empty = Master(root / "empty", runs)
    empty.start()
    empty.kill9()
    baseline = empty.start()
    empty.stop_all()

    m = Master(root / "live", runs)
    m.start()
    model = root / "model"
    model.mkdir()
    (model / "main.py").write_text("import time\ntime.sleep(3600)\n")
    cfg = {
        "name": "restart-bench",
        "entrypoint": "python main.py",
        "searcher": {
            "name": "grid",
            "metric": "loss",
            "max_length": 1,
            "max_concurrent_trials": runs,
        },
        "hyperparameters": {"x": {"type": "categorical", "vals": list(range(runs))}},
        "resources": {"slots_per_trial": 1},
        "max_restarts": 0,
    }
    try:
        with _channel(m.address) as ch:
            exp = (
                experiment_pb2_grpc.ExperimentServiceStub(ch)
                .CreateExperiment(
                    experiment_pb2.CreateExperimentRequest(
                        config=yaml.safe_dump(cfg),
                        model_definition=pack_model_dir(model),
                        activate=True,
                    )
                )
                .experiment
            )
        deadline = time.monotonic() + 300
        # RUNNING is stored before the launch thread starts a run: wait for every run's
        # supervisor too, or the kill below may come before a start (and that run is rerun).
        pid_files = "runs/trial-*/run-1/.det/supervisor.pid"
        while not (
            _all_adopted(m.address, exp.id, runs) and len(list(m.data_dir.glob(pid_files))) == runs
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the trials did not start")
            time.sleep(0.2)  # polling for the trials, bounded by the deadline
        m.kill9()
        t0 = time.perf_counter()
        serving = m.start()
        deadline = time.monotonic() + 300
        while not _all_adopted(m.address, exp.id, runs):
            if time.monotonic() > deadline:
                raise SystemExit("the runs were not adopted")
            time.sleep(0.01)  # polling, bounded by the deadline
        adopted = time.perf_counter() - t0
    finally:
        m.stop_all()
    return {"baseline_serving_s": baseline, "serving_s": serving, "all_adopted_s": adopted}


def bench_outage(outage_s: float, root: pathlib.Path) -> dict[str, float]:
    """(b): report call latency with the master up vs during a kill -9 outage."""
    m = Master(root / "outage", 1)
    m.start()
    up: list[int] = []
    down: list[int] = []
    clock = time.perf_counter_ns
    step = 0
    try:
        with core_api.init(master=m.address, experiment_name="outage-bench") as ctx:
            report = ctx.train.report_training_metrics
            assert ctx.info is not None
            trial_id = ctx.info.trial.trial_id
            end = time.monotonic() + 5
            while time.monotonic() < end:
                step += 1
                t0 = clock()
                report(step, {"loss": 1.0 / step})
                up.append(clock() - t0)
                time.sleep(0.001)
            m.kill9()
            end = time.monotonic() + outage_s
            while time.monotonic() < end:
                step += 1
                t0 = clock()
                report(step, {"loss": 1.0 / step})
                down.append(clock() - t0)
                time.sleep(0.001)
            m.start()
        with _channel(m.address) as ch:
            stub = trial_pb2_grpc.TrialServiceStub(ch)
            req = trial_pb2.StreamMetricsRequest(trial_ids=[trial_id])
            stored = [p.steps_completed for page in stub.StreamMetrics(req) for p in page.points]
    finally:
        m.stop_all()
    if stored != list(range(1, step + 1)):
        raise SystemExit(f"reports lost or duplicated: {len(stored)} stored of {step}")

    def stats(xs: list[int], name: str) -> dict[str, float]:
        xs = sorted(xs)
        return {
            f"{name}_p50_us": xs[len(xs) // 2] / 1000,
            f"{name}_p99_us": xs[int(len(xs) * 0.99)] / 1000,
            f"{name}_max_ms": xs[-1] / 1e6,
        }

    return {**stats(up, "up"), **stats(down, "outage"), "reports": float(step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--skip-adoption", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        if not args.skip_adoption:
            a = bench_adoption(args.runs, root)
            base = a["baseline_serving_s"]
            print(
                f"(a) restart with {args.runs} live runs: serving in {a['serving_s']:.2f} s, all"
                f" adopted in {a['all_adopted_s']:.2f} s; empty master serving in {base:.2f} s"
                f" (serving ratio {a['serving_s'] / base:.2f}, adopted ratio"
                f" {a['all_adopted_s'] / base:.2f})"
            )
        b = bench_outage(args.outage, root)
        print(
            f"(b) report call, master up: p50 {b['up_p50_us']:.1f} us, p99 {b['up_p99_us']:.1f} us,"
            f" max {b['up_max_ms']:.2f} ms; during a {args.outage:g} s outage: p50"
            f" {b['outage_p50_us']:.1f} us, p99 {b['outage_p99_us']:.1f} us, max"
            f" {b['outage_max_ms']:.2f} ms (max ratio {b['outage_max_ms'] / b['up_max_ms']:.2f});"
            f" {int(b['reports'])} reports stored once each"
        )


if __name__ == "__main__":
    main()
