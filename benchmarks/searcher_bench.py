"""Searcher decision cost: our random and ASHA search methods against Optuna's ask/tell.

A simulated search (no processes, no database) of ``--trials`` trials (default 10,000):

* **ours/random**, **ours/asha**: a small event loop plays the experiment service: it carries
  out Create / ValidateAfter / Stop / Shutdown and feeds back a synthetic metric
  ``(x - 2)^2 + 1 / (1 + length)``; every call into the search method (``on_trial_created``,
  ``on_validation_completed``, ``on_trial_exited``, ``initial_operations``) is one *event* and
  is timed. ``max_concurrent_trials`` 16, ``max_length`` 256 (ASHA: 4 rungs, divisor 4,
  standard mode). Reported: mean and p99 cost per event, cost per trial, and the size/time of
  one ``snapshot()`` at the end (the master writes one now and then, and a small record per
  event: ``benchmarks/searcher_persistence_bench.py`` measures that cost).
* **ours/optuna-random**: our Optuna-backed method (RandomSampler), same loop, for the
  wrapper's overhead.
* **optuna/random**, **optuna/tpe**: Optuna's in-memory study, ``study.ask(distributions)`` +
  ``study.tell(trial, value)`` per trial, each call one event. TPE costs grow with the number
  of finished trials, so it runs ``--tpe-trials`` trials (default 1,000).

Each configuration runs ``--repeat`` times (default 3) and the best run is kept (the machine is
shared). Ratios are Optuna's cost per event over ours. Run: ``python benchmarks/searcher_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from master_server.searcher.asha import AdaptiveASHASearch
from master_server.searcher.base import (
    Action,
    Create,
    SearchMethod,
    Shutdown,
    Stop,
    ValidateAfter,
)
from master_server.searcher.simple import RandomSearch

HPARAMS: dict[str, Any] = {
    "x": {"type": "double", "minval": -10.0, "maxval": 10.0, "count": None},
    "lr": {"type": "log", "minval": -5.0, "maxval": -1.0, "base": 10.0, "count": None},
    "layers": {"type": "int", "minval": 1, "maxval": 8, "count": None},
    "opt": {"type": "categorical", "vals": ["adam", "sgd", "rmsprop"]},
    "seed_const": {"type": "const", "val": 3},
}
GOAL_MS = 0.2


def objective(hparams: dict[str, Any], length: int) -> float:
    return float((hparams["x"] - 2.0) ** 2 + 1.0 / (1.0 + length))


class Result:
    def __init__(self, name: str, trials: int, samples: list[int], extra: str = "") -> None:
        self.name = name
        self.trials = trials
        self.events = len(samples)
        self.total_ms = sum(samples) / 1e6
        self.mean_ms = self.total_ms / max(1, self.events)
        ordered = sorted(samples)
        self.p99_ms = ordered[int(0.99 * (len(ordered) - 1))] / 1e6 if ordered else 0.0
        self.per_trial_ms = self.total_ms / max(1, trials)
        self.extra = extra


def drive(method: SearchMethod) -> tuple[list[int], int, bool]:
    """Run a search to its Shutdown; returns per-event costs (ns), trials, clean shutdown."""
    samples: list[int] = []
    hparams: dict[str, dict[str, Any]] = {}
    ready: deque[tuple[str, int]] = deque()
    pending: deque[tuple[str, str]] = deque()
    shutdown = False
    clock = time.perf_counter_ns

    def apply(actions: list[Action]) -> None:
        nonlocal shutdown
        for a in actions:
            if isinstance(a, Create):
                hparams[a.request_id] = a.hparams
                pending.append(("created", a.request_id))
            elif isinstance(a, ValidateAfter):
                ready.append((a.request_id, a.length))
            elif isinstance(a, Stop):
                pending.append(("exited", a.request_id))
            elif isinstance(a, Shutdown):
                shutdown = True

    t0 = clock()
    actions = method.initial_operations()
    samples.append(clock() - t0)
    apply(actions)
    while pending or ready:
        if pending:
            kind, rid = pending.popleft()
            t0 = clock()
            if kind == "created":
                actions = method.on_trial_created(rid)
            else:
                actions = method.on_trial_exited(rid)
            samples.append(clock() - t0)
        else:
            rid, length = ready.popleft()
            metric = objective(hparams[rid], length)
            t0 = clock()
            actions = method.on_validation_completed(rid, metric, length)
            samples.append(clock() - t0)
        apply(actions)
    return samples, len(hparams), shutdown


def bench_ours(name: str, make: Callable[[], SearchMethod], repeat: int) -> Result:
    best: Result | None = None
    for _ in range(repeat):
        method = make()
        samples, trials, clean = drive(method)
        if not clean:
            raise SystemExit(f"{name}: the search did not shut down")
        t0 = time.perf_counter()
        state = method.snapshot()
        text = json.dumps(state)
        snap_ms = (time.perf_counter() - t0) * 1e3
        extra = f"snapshot at end: {len(text) / 1024:.0f} KiB in {snap_ms:.1f} ms"
        result = Result(name, trials, samples, extra)
        if best is None or result.total_ms < best.total_ms:
            best = result
    assert best is not None
    return best


def bench_optuna(name: str, sampler_factory: Callable[[], Any], trials: int, repeat: int) -> Result:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {
        "x": optuna.distributions.FloatDistribution(-10.0, 10.0),
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
        "layers": optuna.distributions.IntDistribution(1, 8),
        "opt": optuna.distributions.CategoricalDistribution(["adam", "sgd", "rmsprop"]),
    }
    best: Result | None = None
    for _ in range(repeat):
        study = optuna.create_study(sampler=sampler_factory())
        samples: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(trials):
            t0 = clock()
            trial = study.ask(dists)
            samples.append(clock() - t0)
            value = objective(trial.params, 256)
            t0 = clock()
            study.tell(trial, value)
            samples.append(clock() - t0)
        result = Result(name, trials, samples)
        if best is None or result.total_ms < best.total_ms:
            best = result
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--tpe-trials", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-optuna", action="store_true")
    args = parser.parse_args()
    n = args.trials

    results: list[Result] = []
    results.append(
        bench_ours(
            "ours/random",
            lambda: RandomSearch(
                HPARAMS, seed=1, max_trials=n, max_concurrent_trials=16, max_length=256
            ),
            args.repeat,
        )
    )
    results.append(
        bench_ours(
            "ours/asha",
            lambda: AdaptiveASHASearch(
                HPARAMS,
                seed=1,
                max_trials=n,
                max_length=256,
                max_rungs=4,
                divisor=4,
                mode="standard",
                max_concurrent_trials=16,
            ),
            args.repeat,
        )
    )
    if not args.skip_optuna:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from master_server.searcher.optuna_search import OptunaSearch

        results.append(
            bench_ours(
                "ours/optuna-random",
                lambda: OptunaSearch(
                    HPARAMS,
                    seed=1,
                    max_trials=n,
                    max_concurrent_trials=16,
                    sampler="random",
                    max_length=256,
                ),
                1,
            )
        )
        results.append(
            bench_optuna("optuna/random", lambda: optuna.samplers.RandomSampler(seed=1), n, 1)
        )
        results.append(
            bench_optuna(
                "optuna/tpe", lambda: optuna.samplers.TPESampler(seed=1), args.tpe_trials, 1
            )
        )

    ours = {r.name: r for r in results if r.name in ("ours/random", "ours/asha")}
    print(
        f"searcher decision cost (python {sys.version.split()[0]}; best of {args.repeat} "
        "for ours/random and ours/asha, 1 run otherwise)"
    )
    header = (
        f"{'method':<20} {'trials':>7} {'events':>8} {'ms/event':>9} {'p99 ms':>8} "
        f"{'ms/trial':>9} {'vs random':>10} {'vs asha':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio_r = r.mean_ms / ours["ours/random"].mean_ms
        ratio_a = r.mean_ms / ours["ours/asha"].mean_ms
        print(
            f"{r.name:<20} {r.trials:>7} {r.events:>8} {r.mean_ms:>9.4f} {r.p99_ms:>8.4f} "
            f"{r.per_trial_ms:>9.4f} {ratio_r:>9.1f}x {ratio_a:>7.1f}x"
        )
    for r in results:
        if r.extra:
            print(f"  {r.name}: {r.extra}")
    worst = max(ours["ours/random"].mean_ms, ours["ours/asha"].mean_ms)
    verdict = "PASS" if worst <= GOAL_MS else "FAIL"
    print(f"goal <= {GOAL_MS} ms per random/ASHA decision: {verdict} (worst {worst:.4f} ms)")


if __name__ == "__main__":
    main()
