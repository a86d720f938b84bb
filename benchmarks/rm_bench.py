"""Run launch latency and trials per second for trivial trials: local backend vs Ray backend.

Starts a real two-node Ray cluster on loopback (``ray.cluster_utils.Cluster``, two CPUs per
node, so four slots) and, for each backend in turn, a master in-process (127.0.0.1, port 0,
SQLite in a temporary directory) with four slots:

* **launch latency**: from ``CreateExperiment`` of a one-trial experiment to the first line of
  the trial's entrypoint running (it writes ``time.time()`` to a file); the median of
  ``--launches`` experiments run one after another;
* **trials/s**: a random search of ``--trials`` trivial trials (each completes its one
  searcher operation and exits), at most four at once, from creation to COMPLETED.

Needs the ``ray`` extra. Run: ``python benchmarks/rm_bench.py``. Figures and the Ray/local
ratios go to stdout.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from master_server.app import Master, RaySettings  # noqa: E402
from tests.support import Stubs, wait_for, write_model_dir  # noqa: E402

TRIAL = """
    import os, pathlib, sys, time
    pathlib.Path(STARTS, os.environ["DET_TRIAL_ID"]).write_text(repr(time.time()))
    import core_api
    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            op.report_completed(0.0)
"""


def _config(searcher: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "rm-bench",
        "entrypoint": "python3 train.py",
        "searcher": searcher,
        "max_restarts": 0,
        "hyperparameters": {"x": {"type": "double", "minval": 0.0, "maxval": 1.0}},
    }


def measure(master: Master, tmp: pathlib.Path, launches: int, trials: int) -> tuple[float, float]:
    """(median launch latency in seconds, trials per second) on one master."""
    starts = tmp / "starts"
    starts.mkdir()
    md = write_model_dir(tmp / "model", {"train.py": TRIAL.replace("STARTS", repr(str(starts)))})
    stubs = Stubs.connect(master.address)
    single = {"name": "single", "metric": "loss", "max_length": {"batches": 1}}
    latencies = []
    for _ in range(launches):
        t0 = time.time()
        exp = stubs.create(_config(single), md)
        (trial,) = wait_for(functools.partial(stubs.trials_of, exp.id), 60, "the trial")
        f = starts / str(trial.id)
        wait_for(f.exists, 120, "the trial to start")
        latencies.append(float(wait_for(f.read_text, 10, "its start time")) - t0)
        stubs.wait_exp(exp.id, "COMPLETED", timeout=120)
    search = {
        "name": "random",
        "metric": "loss",
        "max_trials": trials,
        "max_length": {"batches": 1},
        "max_concurrent_trials": 4,
    }
    t0 = time.perf_counter()
    exp = stubs.create(_config(search), md)
    stubs.wait_exp(exp.id, "COMPLETED", timeout=600)
    rate = trials / (time.perf_counter() - t0)
    stubs.channel.close()
    return statistics.median(latencies), rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--launches", type=int, default=5)
    p.add_argument("--trials", type=int, default=16)
    args = p.parse_args()
    from ray.cluster_utils import Cluster

    node: dict[str, Any] = {
        "num_cpus": 2,
        "node_ip_address": "127.0.0.1",
        "object_store_memory": 80 * 2**20,
    }
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    results: dict[str, tuple[float, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = pathlib.Path(tmp_name)
            for name in ("local", "ray"):
                kw: dict[str, Any] = {"slots": 4}
                if name == "ray":
                    kw = {
                        "resource_manager": "ray",
                        "ray": RaySettings(address=cluster.address, run_root=str(tmp / "runs")),
                    }
                m = Master(tmp / name / "data", **kw).start()
                try:
                    assert m.parts["rm"].total_slots == 4
                    results[name] = measure(m, tmp / name, args.launches, args.trials)
                finally:
                    m.stop()
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]  # ray leaves it untyped
    (l_lat, l_rate), (r_lat, r_rate) = results["local"], results["ray"]
    print(f"{'backend':<8} {'launch latency (median)':>24} {'trials/s':>10}")
    print(f"{'local':<8} {l_lat * 1000:>21.0f} ms {l_rate:>10.2f}")
    print(f"{'ray':<8} {r_lat * 1000:>21.0f} ms {r_rate:>10.2f}")
    print(f"ray/local: launch latency {r_lat / l_lat:.2f}x, trials/s {r_rate / l_rate:.2f}x")
    print(f"({args.launches} launches, {args.trials} trials, 4 slots, 2 cores on this machine)")


if __name__ == "__main__":
    main()
