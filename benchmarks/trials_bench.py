"""Cheap trials: trivial trials per second on this platform vs Optuna vs starting Python.

Run: ``python benchmarks/trials_bench.py [--trials 40] [--slots 2] [--repeat 2]``

Three ways to run ``--trials`` trivial trials, ``--slots`` at a time, measured in this run:

* **platform**: a real master (its own process, SQLite, ``--slots`` slots) runs a random search
  of ``--trials`` trials, ``max_concurrent_trials`` = slots, one slot each. Every trial is a
  process of its own (``python trial.py`` under a supervisor, as in production) that imports
  ``core_api``, reads its hyperparameter, and reports one validation for its one searcher
  operation. Timed from CreateExperiment until the experiment is COMPLETED.
* **optuna**: an Optuna study on SQLite storage (``study.optimize(n_jobs=slots)``); each trial
  asks for ``x``, runs ``python objective.py X`` in a subprocess (the same arithmetic, printed)
  and tells the value it printed.
* **python x2**: the limit: ``--slots`` threads each starting ``python -c pass`` back to back.

Each is run ``--repeat`` times and the best kept (the machine is shared). Printed: trials/s of
each and the platform's ratio to the other two (goal: platform/optuna >= 1), and the CPU time
each spends per trial (every process involved: the master, its zygote, supervisors and trials;
Optuna's process and its subprocesses), which a busy machine disturbs much less than the wall
clock, and how much of the platform's is the master's own.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRIAL = """
    import core_api

    x = float(core_api.get_cluster_info().trial.hparams["x"])
    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            loss = (x - 0.1) ** 2 + 1.0 / (1 + op.length)
            ctx.train.report_validation_metrics(op.length, {"loss": loss})
            op.report_completed(loss)
"""

OBJECTIVE = """
    import sys

    x = float(sys.argv[1])
    print((x - 0.1) ** 2 + 1.0 / (1 + 1))
"""


@dataclass(frozen=True)
class Result:
    rate: float  # trials/s, best run
    cpu_ms: float  # CPU time per trial, best run
    own_ms: float = 0.0  # of which the master process's own (platform only), of that run


def _best(runs: list[Result]) -> Result:
    least = min(runs, key=lambda r: r.cpu_ms)
    return Result(max(r.rate for r in runs), least.cpu_ms, least.own_ms)


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and of its waited-for descendants (from /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _self_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` itself (no descendants)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread or process ended meanwhile
            continue
    return out


def _tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and every descendant: the live ones (a long-lived zygote
    and what it forked) and those already waited for (counted in their parent's)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _cpu(p)
            todo += _children(p)
        except OSError:  # ended meanwhile: counted in its parent once waited for
            continue
    return total


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@contextmanager
def master_process(data_dir: pathlib.Path, slots: int) -> Iterator[tuple[str, int]]:
    """A master in its own process, as in production; yields ``host:port`` and its pid."""
    port_file = data_dir / "port"
    cmd = [sys.executable, "-m", "master_server", "--data-dir", str(data_dir), "--port", "0"]
    cmd += ["--slots", str(slots), "--port-file", str(port_file), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the master did not start")
            time.sleep(0.05)  # waiting for the port file, bounded by the deadline
        yield f"127.0.0.1:{port_file.read_text().strip()}", proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_platform(tmp: pathlib.Path, trials: int, slots: int, repeat: int) -> Result:
    import determined_sdk

    model = tmp / "model"
    model.mkdir()
    (model / "trial.py").write_text(textwrap.dedent(TRIAL).lstrip())

    def config(n: int) -> dict[str, object]:
        return {
            "name": "trials-bench",
            "entrypoint": "python trial.py",
            "searcher": {
                "name": "random",
                "metric": "loss",
                "max_trials": n,
                "max_concurrent_trials": slots,
                "max_length": {"batches": 1},
            },
            "hyperparameters": {"x": {"type": "double", "minval": -1.0, "maxval": 1.0}},
            "resources": {"slots_per_trial": 1},
            "max_restarts": 0,
        }

    runs: list[Result] = []
    with master_process(tmp / "data", slots) as (address, pid):
        client = determined_sdk.Determined(master=address, user="admin", password="")

        def run_once(n: int) -> Result:
            cpu0, own0, t0 = _tree_cpu(pid), _self_cpu(pid), time.time()
            exp = client.create_experiment(config(n), model)
            deadline = time.monotonic() + 600
            while True:
                exp.reload()
                state = exp.state
                if state.name in ("COMPLETED", "ERROR", "CANCELED"):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the benchmark experiment did not finish")
                # A slow poll (its cost is the master's CPU too): the time taken is the
                # experiment's own end time, not when this loop saw it.
                time.sleep(0.25)
            cpu, own = _tree_cpu(pid) - cpu0, _self_cpu(pid) - own0
            if state.name != "COMPLETED":
                raise SystemExit(f"the benchmark experiment ended {state.name}")
            end = exp.end_time
            assert end is not None
            return Result(n / (end - t0), cpu * 1e3 / n, own * 1e3 / n)

        run_once(slots)  # warm-up: model unpacking, .pyc files, first connections
        runs = [run_once(trials) for _ in range(repeat)]
        client.close()
    return _best(runs)


def bench_optuna(tmp: pathlib.Path, trials: int, slots: int, repeat: int) -> Result:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    script = tmp / "objective.py"
    script.write_text(textwrap.dedent(OBJECTIVE).lstrip())

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        out = subprocess.run(
            [sys.executable, str(script), repr(x)], capture_output=True, text=True, check=True
        )
        return float(out.stdout)

    runs: list[Result] = []
    for i in range(repeat + 1):  # the first run warms up
        storage = f"sqlite:///{tmp / f'optuna-{i}.db'}"
        n = slots if i == 0 else trials
        cpu0, t0 = _own_cpu(), time.perf_counter()
        study = optuna.create_study(storage=storage, study_name=f"bench-{i}")
        study.optimize(objective, n_trials=n, n_jobs=slots)
        result = Result(n / (time.perf_counter() - t0), (_own_cpu() - cpu0) * 1e3 / n)
        if i > 0:
            runs.append(result)
    return _best(runs)


def _start_pythons(left: list[int], lock: threading.Lock) -> None:
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def bench_python(trials: int, slots: int, repeat: int) -> Result:
    runs: list[Result] = []
    for _ in range(repeat):
        left, lock = [trials], threading.Lock()
        threads = [threading.Thread(target=_start_pythons, args=(left, lock)) for _ in range(slots)]
        cpu0, t0 = _own_cpu(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs.append(Result(trials / (time.perf_counter() - t0), (_own_cpu() - cpu0) * 1e3 / trials))
    return _best(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-optuna", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trials-bench-") as d:
        tmp = pathlib.Path(d)
        python = bench_python(args.trials, args.slots, args.repeat)
        optuna = (
            None if args.skip_optuna else bench_optuna(tmp, args.trials, args.slots, args.repeat)
        )
        ours = bench_platform(tmp, args.trials, args.slots, args.repeat)

    print(f"{args.trials} trivial trials, {args.slots} at a time (best of {args.repeat}):")
    print(f"  {'':28} {'trials/s':>9} {'CPU ms/trial':>13}")
    rows = [(f"python x{args.slots} (limit)", python)]
    if optuna is not None:
        rows.append(("optuna (SQLite, subprocess)", optuna))
    rows.append(("platform", ours))
    for name, r in rows:
        print(f"  {name:28} {r.rate:9.1f} {r.cpu_ms:13.0f}")
    print(
        f"  platform CPU per trial: master {ours.own_ms:.0f} ms, its zygote, supervisors and"
        f" trials {ours.cpu_ms - ours.own_ms:.0f} ms"
    )
    print(f"  platform / python limit      {ours.rate / python.rate:8.3f}x")
    if optuna is not None:
        verdict = "met" if ours.rate >= optuna.rate else "not met"
        print(
            f"  platform / optuna            {ours.rate / optuna.rate:8.3f}x"
            f"  (goal >= 1: {verdict})"
        )
        print(f"  CPU per trial, platform / optuna {ours.cpu_ms / optuna.cpu_ms:5.2f}x")


if __name__ == "__main__":
    main()
