"""Every benchmark still runs: each one, at a tiny size, exits 0 and prints its figures.

Benchmarks are run by hand, so a change that breaks one (an API renamed, a master that now asks
for a token) used to go unnoticed until someone needed its figures. The figures printed here
mean nothing (tiny sizes, a busy machine); only that the command works end to end is checked.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

#: (script, tiny arguments, a piece of what a complete run prints)
BENCHMARKS = [
    ("auth_bench.py", ["--calls", "20", "--repeat", "1"], "x 1.00 of baseline"),
    (
        "checkpoint_download_bench.py",
        ["--mib", "2", "--files", "2", "--repeat", "1", "--no-s3"],
        "MB/s",
    ),
    ("core_api_bench.py", ["--reports", "2000", "--calls", "2000", "--repeat", "1"], "us"),
    (
        "load_bench.py",
        ["--trials", "10", "--clients", "2", "--duration", "3", "--procs", "1"],
        "reports served/offered",
    ),
    (
        "metrics_read_bench.py",
        ["--points", "20000", "--chart-trials", "3", "--chart-points", "500", "--repeat", "1"],
        "metric_series(ids, 'loss', max_points=1000)",
    ),
    ("restart_bench.py", ["--runs", "2", "--outage", "2"], "stored once each"),
    (
        "sdk_bench.py",
        ["--experiments", "50", "--points", "5000", "--checkpoints", "20", "--download-mib", "2"],
        "x",
    ),
    ("searcher_bench.py", ["--trials", "100", "--tpe-trials", "10", "--repeat", "1"], "x"),
    ("searcher_persistence_bench.py", ["--trials", "50", "--samples", "5"], "ms"),
    (
        "store_bench.py",
        ["--points", "2000", "--batch", "100", "--repeat", "1", "--trials", "10", "--rounds", "2"],
        "x",
    ),
    ("trials_bench.py", ["--trials", "4", "--repeat", "1"], "trials/s"),
    (
        "web_chart_bench.py",
        ["--trials", "3", "--points", "300", "--repeat", "1", "--no-browser"],
        "REST",
    ),
]


@pytest.mark.parametrize(
    ("script", "args", "prints"), BENCHMARKS, ids=[b[0].removesuffix(".py") for b in BENCHMARKS]
)
def test_benchmark_runs(script: str, args: list[str], prints: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert prints in proc.stdout, out[-4000:]


def test_every_benchmark_is_smoke_run() -> None:
    scripts = {p.name for p in (REPO / "benchmarks").glob("*_bench.py")}
    # The Ray and the training-API benchmarks start whole Ray clusters or train real models:
    # their code paths are covered by their own tests.
    assert scripts - {b[0] for b in BENCHMARKS} == {"rm_bench.py", "training_apis_bench.py"}
