"""Searcher persistence cost per event: full snapshot every event (before) vs the event log.

Run: ``python benchmarks/searcher_persistence_bench.py [--trials 1000 10000] [--db URL]``

A simulated search (the search methods the master runs, no trial processes) of ``--trials``
trials, ASHA (adaptive_asha, 4 rungs, divisor 4) and Optuna (random sampler: the sampler does
not change what is persisted), ``max_concurrent_trials`` 16, ``max_length`` 256. It plays the
engine: every searcher call and the Creates/ValidateAfters/Stops it returns is one *event*,
with the trial runtimes kept as the engine keeps them, and after each event the search is
persisted into a real store (a SQLite file in a temp dir, or ``--db``), two ways, each into its
own experiment:

* **before**: what the master did until now: the whole state (method snapshot + every trial
  runtime) written after every event. Timed on ~``--samples`` events spread evenly over the
  search (each sample is the real cost at that point; writing it on all events would take
  minutes at 10,000 trials); ``mean`` is over the samples, ``end`` the last one.
* **after**: :class:`master_server.engine.search_log.SearchLog`: one small record per event,
  a snapshot when the log outgrows the last one (or after 1 s of searcher work). Timed on every
  event; ``mean`` includes the snapshots; ``end`` is the mean over the last 10% of events.

Also printed: snapshots written, bytes of the last snapshot, and what a restart at the end costs
(load the snapshot, replay the log after it). Flat means ``after`` at 10,000 trials is about
``after`` at 1,000; the ratio column is before/after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from master_server.domain import ExperimentState, NewExperiment
from master_server.engine.search_log import full_state
from master_server.engine.state import ExperimentRuntime, TrialRuntime
from master_server.searcher.asha import AdaptiveASHASearch
from master_server.searcher.base import (
    Action,
    Create,
    SearchMethod,
    Shutdown,
    Stop,
    ValidateAfter,
)
from master_server.searcher.journal import JournaledSearch
from master_server.store import Store, open_store

HPARAMS: dict[str, Any] = {
    "x": {"type": "double", "minval": -10.0, "maxval": 10.0, "count": None},
    "lr": {"type": "log", "minval": -5.0, "maxval": -1.0, "base": 10.0, "count": None},
    "layers": {"type": "int", "minval": 1, "maxval": 8, "count": None},
    "opt": {"type": "categorical", "vals": ["adam", "sgd", "rmsprop"]},
}


def objective(hparams: dict[str, Any], length: int) -> float:
    return float((hparams["x"] - 2.0) ** 2 + 1.0 / (1.0 + length))


def _new_exp(store: Store, name: str) -> int:
    return store.create_experiment(
        NewExperiment(
            name=name,
            config={},
            original_config="",
            project_id=1,
            searcher_name=name,
            state=ExperimentState.ACTIVE,
        )
    ).id


class Row:
    def __init__(self, method: str, trials: int) -> None:
        self.method, self.trials = method, trials
        self.events = 0
        self.before: list[float] = []
        self.after: list[float] = []
        self.snapshots = 0
        self.snapshot_kib = 0.0
        self.restart_ms = 0.0
        self.replayed = 0


def run(
    method_name: str, make: Callable[[], SearchMethod], trials: int, store: Store, samples: int
) -> Row:
    """Drive one search to its end, persisting both ways after each event."""
    row = Row(method_name, trials)
    exp_after = _new_exp(store, f"{method_name}-after")
    exp_before = _new_exp(store, f"{method_name}-before")
    rt = ExperimentRuntime(exp_after, {}, JournaledSearch(make()))
    rt.started = True
    expected_events = trials * 4  # roughly; only spreads the before-samples
    every = max(1, expected_events // samples)
    hparams: dict[str, dict[str, Any]] = {}
    ready: deque[tuple[str, int]] = deque()
    exits: deque[str] = deque()
    clock = time.perf_counter

    def apply(actions: list[Action]) -> None:
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, Create):
                hparams[a.request_id] = a.hparams
                rt.trials[a.request_id] = TrialRuntime(len(hparams), exp_after, a.request_id)
                rt.dirty.add(a.request_id)
                pending.extend(rt.searcher.on_trial_created(a.request_id))
            elif isinstance(a, ValidateAfter):
                rt.trials[a.request_id].ops.append(a.length)
                rt.dirty.add(a.request_id)
                ready.append((a.request_id, a.length))
            elif isinstance(a, Stop):
                rt.trials[a.request_id].closed = True
                rt.dirty.add(a.request_id)
                exits.append(a.request_id)
            elif isinstance(a, Shutdown):
                rt.shutdown = a

    def persist() -> None:
        t0 = clock()
        rt.searcher.progress()  # asked before the save, as the engine does
        rt.log.save(store, rt)
        row.after.append(clock() - t0)
        if row.events % every == 0:
            t0 = clock()
            store.save_searcher_state(exp_before, full_state(rt))
            row.before.append(clock() - t0)
        row.events += 1

    apply(rt.searcher.initial_operations())
    persist()
    while exits or ready:
        if exits:
            apply(rt.searcher.on_trial_exited(exits.popleft()))
        else:
            rid, length = ready.popleft()
            rt.trials[rid].completed_length = length
            rt.dirty.add(rid)
            apply(rt.searcher.on_validation_completed(rid, objective(hparams[rid], length), length))
        persist()
    if rt.shutdown is None:
        raise SystemExit(f"{method_name}: the search did not shut down")
    row.snapshots = rt.log.snapshots
    row.snapshot_kib = rt.log.snapshot_bytes / 1024
    # A restart now: load the snapshot and replay the log after it.
    fresh = ExperimentRuntime(exp_after, {}, JournaledSearch(make()))
    t0 = clock()
    fresh.log.restore(store, fresh)
    row.restart_ms = (clock() - t0) * 1e3
    row.replayed = fresh.log.records
    if fresh.searcher.snapshot() != rt.searcher.snapshot():
        raise SystemExit(f"{method_name}: the restored search differs from the live one")
    return row


def _ms(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--samples", type=int, default=150, help="before-samples per search")
    parser.add_argument("--db", default=None, help="store URL (default: a temp SQLite file)")
    parser.add_argument("--skip-optuna", action="store_true")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from master_server.searcher.optuna_search import OptunaSearch

    def asha(n: int) -> Callable[[], SearchMethod]:
        return lambda: AdaptiveASHASearch(
            HPARAMS, seed=1, max_trials=n, max_length=256, max_rungs=4, divisor=4,
            mode="standard", max_concurrent_trials=16,
        )  # fmt: skip

    def optuna_random(n: int) -> Callable[[], SearchMethod]:
        return lambda: OptunaSearch(
            HPARAMS, seed=1, max_trials=n, max_concurrent_trials=16, sampler="random",
            max_length=256, num_reports=2,
        )  # fmt: skip

    methods: list[tuple[str, Callable[[int], Callable[[], SearchMethod]]]] = [("asha", asha)]
    if not args.skip_optuna:
        methods.append(("optuna", optuna_random))

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args.db or f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            for name, factory in methods:
                for n in args.trials:
                    rows.append(run(name, factory(n), n, store, args.samples))
                    r = rows[-1]
                    print(f"  done {name} {n}: {r.events} events", file=sys.stderr, flush=True)
        finally:
            store.close()

    where = args.db or "SQLite file"
    print(f"searcher persistence per event ({where}; python {sys.version.split()[0]})")
    header = (
        f"{'method':<8} {'trials':>6} {'events':>7} | {'before ms':>9} {'end ms':>8} | "
        f"{'after ms':>8} {'end ms':>7} {'p99 ms':>7} | {'before/after':>12} | "
        f"{'snaps':>5} {'snap KiB':>8} | {'restart ms':>10} {'replayed':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        after_end = r.after[-max(1, len(r.after) // 10) :]
        p99 = sorted(r.after)[int(0.99 * (len(r.after) - 1))] * 1e3
        print(
            f"{r.method:<8} {r.trials:>6} {r.events:>7} | {_ms(r.before):>9.3f} "
            f"{r.before[-1] * 1e3:>8.3f} | {_ms(r.after):>8.3f} {_ms(after_end):>7.3f} "
            f"{p99:>7.3f} | {_ms(r.before) / _ms(r.after):>11.1f}x | {r.snapshots:>5} "
            f"{r.snapshot_kib:>8.0f} | {r.restart_ms:>10.1f} {r.replayed:>8}"
        )
    for name, _ in methods:
        mine = [r for r in rows if r.method == name]
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            print(
                f"{name}: after at {hi.trials} / after at {lo.trials} trials = "
                f"{_ms(hi.after) / _ms(lo.after):.2f} (flat ~ 1); before: "
                f"{_ms(hi.before) / _ms(lo.before):.1f}"
            )


if __name__ == "__main__":
    main()
