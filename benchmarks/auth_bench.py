"""What authentication costs per call: authenticated RPCs against the public health check.

Starts a master in-process (127.0.0.1, port 0, SQLite in a temporary directory) and times, on one
channel, ``--calls`` sequential calls (default 2,000; best of ``--repeat`` runs) of:

* **baseline**: ``grpc.health.v1.Health/Check`` (public: the interceptor passes it through);
* **user token**: ``MasterService/GetMasterInfo`` with an admin session token (session and user
  looked up, rule checked);
* **trial token**: ``TrialService/GetTrial`` of a live trial with that run's token (signature,
  trial, owner looked up, scope checked);
* **ReportMetrics** (one point) with the trial token and with a user token: a coroutine handler
  (as the long polls are), whose check of a running trial's token runs on the event loop;
* **login**: ``MasterService/Login`` (an argon2id verification; per login, not per call).

Run: ``python benchmarks/auth_bench.py``. Figures and ratios against the baseline go to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from determined_sdk.metrics_wire import pack_reports  # noqa: E402
from determined_sdk.proto import (  # noqa: E402
    experiment_pb2,
    experiment_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
)
from master_server.app import Master  # noqa: E402


def best(fn: Callable[[], None], calls: int, repeat: int) -> float:
    """Best seconds per call over ``repeat`` runs of ``calls`` calls."""
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out = min(out, (time.perf_counter() - t0) / calls)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = Master(pathlib.Path(tmp) / "master", slots=1).start()
        try:
            with grpc.insecure_channel(m.address) as ch:
                master = master_pb2_grpc.MasterServiceStub(ch)
                token = master.Login(master_pb2.LoginRequest(username="admin")).token
                md = [("authorization", f"Bearer {token}")]
                # A live trial (unmanaged: RUNNING at once) and a token for its run.
                trial = (
                    experiment_pb2_grpc.ExperimentServiceStub(ch)
                    .CreateUnmanagedTrial(
                        experiment_pb2.CreateUnmanagedTrialRequest(config="name: bench"),
                        metadata=md,
                    )
                    .trial
                )
                trial_md = [("authorization", f"Bearer {m.parts['auth'].trial_token(trial.id, 1)}")]
                batches = itertools.count()

                def report() -> trial_pb2.ReportMetricsRequest:
                    n = next(batches)
                    return pack_reports(trial.id, f"b{n}", [("training", n, {"loss": 1.0}, 0.0)])

                health = health_pb2_grpc.HealthStub(ch)
                trials = trial_pb2_grpc.TrialServiceStub(ch)
                rows = {
                    "baseline: Health/Check (no auth)": lambda: health.Check(
                        health_pb2.HealthCheckRequest()
                    ),
                    "GetMasterInfo, user token": lambda: master.GetMasterInfo(
                        master_pb2.GetMasterInfoRequest(), metadata=md
                    ),
                    "GetTrial, trial token": lambda: trials.GetTrial(
                        trial_pb2.GetTrialRequest(trial_id=trial.id), metadata=trial_md
                    ),
                    "GetTrial, user token": lambda: trials.GetTrial(
                        trial_pb2.GetTrialRequest(trial_id=trial.id), metadata=md
                    ),
                    # A coroutine handler: a running trial's token is checked on the loop.
                    "ReportMetrics, trial token": lambda: trials.ReportMetrics(
                        report(), metadata=trial_md
                    ),
                    "ReportMetrics, user token": lambda: trials.ReportMetrics(
                        report(), metadata=md
                    ),
                }
                base = None
                print(f"{args.calls:,} sequential calls, best of {args.repeat}")
                for name, fn in rows.items():
                    t = best(fn, args.calls, args.repeat)
                    base = base or t
                    print(f"  {name:<36} {t * 1e6:8.0f} us/call   x{t / base:5.2f} of baseline")
                t = best(
                    lambda: master.Login(master_pb2.LoginRequest(username="admin")),
                    20,
                    args.repeat,
                )
                print(f"  {'Login (argon2id verify)':<36} {t * 1e3:8.1f} ms/call")
        finally:
            m.stop()


if __name__ == "__main__":
    main()
