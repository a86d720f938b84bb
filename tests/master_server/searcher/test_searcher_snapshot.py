"""Snapshot/restore mid-search continues identically, for every search method; progress."""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from master_server.config import validate_experiment_config
from master_server.searcher.base import SearchMethod
from master_server.searcher.factory import make_search_method
from tests.master_server.searcher.sim_harness import Simulator

optuna.logging.set_verbosity(optuna.logging.WARNING)

HPARAMS = {
    "x": {"type": "double", "minval": -10, "maxval": 10, "count": 4},
    "n": {"type": "int", "minval": 1, "maxval": 6, "count": 3},
    "opt": {"name": {"type": "categorical", "vals": ["adam", "sgd"]}, "eps": 1e-8},
}

SEARCHERS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    # name: (searcher section, simulator kwargs, trials counted toward the search)
    "single": ({"name": "single", "max_length": 20}, {}, 1),
    "random": (
        {"name": "random", "max_trials": 30, "max_concurrent_trials": 4, "max_length": 20},
        {"max_concurrent": 4, "error_rate": 0.05},
        30,
    ),
    "random-metrics": (
        {
            "name": "random",
            "max_trials": 12,
            "max_concurrent_trials": 3,
            "time_metric": "t",
            "max_time": 15,
        },
        {"style": "metrics", "report_every": 2, "natural_length": 100},
        12,
    ),
    "grid": (
        {"name": "grid", "max_concurrent_trials": 5, "max_length": 8},
        {"max_concurrent": 5},
        24,
    ),
    "asha": (
        {
            "name": "adaptive_asha",
            "max_trials": 60,
            "max_length": 64,
            "max_rungs": 3,
            "max_concurrent_trials": 6,
        },
        {"max_concurrent": 6, "error_rate": 0.03},
        60,
    ),
    "asha-metrics": (
        {
            "name": "adaptive_asha",
            "max_trials": 40,
            "time_metric": "t",
            "max_time": 64,
            "max_rungs": 3,
            "mode": "conservative",
        },
        {"style": "metrics", "report_every": 5, "natural_length": 1000},
        40,
    ),
    "pbt": (
        {
            "name": "pbt",
            "population_size": 6,
            "num_rounds": 5,
            "length_per_round": {"batches": 10},
            "replace_function": {"truncate_fraction": 0.3},
            "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
        },
        {"error_rate": 0.03},
        6 + 4 * 1,
    ),
    "optuna-tpe": (
        {"name": "optuna", "max_trials": 24, "max_concurrent_trials": 3, "max_length": 4},
        {"max_concurrent": 3},
        24,
    ),
    "optuna-random-pruned": (
        {
            "name": "optuna",
            "sampler": "random",
            "pruner": "median",
            "max_trials": 20,
            "max_concurrent_trials": 2,
            "max_length": 40,
            "num_reports": 4,
        },
        {"error_rate": 0.05},
        20,
    ),
    "optuna-qmc": (
        {"name": "optuna", "sampler": "qmc", "max_trials": 16, "max_concurrent_trials": 2},
        {"style": "metrics", "natural_length": 3},
        16,
    ),
    "random+early-stopping+target": (
        {
            "name": "random",
            "max_trials": 20,
            "max_concurrent_trials": 4,
            "time_metric": "t",
            "max_time": 50,
            "early_stopping": {"patience": 3},
            "target": 0.5,
        },
        {"style": "metrics", "report_every": 1, "natural_length": 50},
        0,
    ),
}


def build(searcher: dict[str, Any]) -> Callable[[], SearchMethod]:
    config = validate_experiment_config(
        {
            "entrypoint": "python train.py",
            "hyperparameters": HPARAMS,
            "searcher": {"metric": "loss", **searcher},
            "reproducibility": {"experiment_seed": 1234},
        }
    )
    return lambda: make_search_method(config)


def noisy(h: dict, length: float, rid: str) -> float:
    """Not monotone in length, so patience-based early stopping has work to do."""
    x = float(h["x"])
    return (
        (x - 2.0) ** 2 / 10
        + 1.0 / (1.0 + length)
        + (zlib.crc32(f"{rid}:{length}".encode()) % 7) / 20
    )


@pytest.mark.parametrize("name", list(SEARCHERS))
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_restore_mid_search_continues_identically(name: str, fraction: float) -> None:
    searcher, sim_kw, counted = SEARCHERS[name]
    make = build(searcher)
    whole = Simulator(make(), noisy, order_seed=8, **sim_kw).finish()

    split = Simulator(make(), noisy, order_seed=8, **sim_kw)
    split.run(max_events=max(1, int(whole.steps * fraction)))
    assert split.shutdown is None, "the split point should be mid-search"
    before = json.dumps(split.method.snapshot(), sort_keys=True)
    split.swap_method(make())
    if not name.startswith("optuna"):
        assert json.dumps(split.method.snapshot(), sort_keys=True) == before
    split.finish()

    assert split.trace == whole.trace
    if counted:
        real = [t for t in split.created if t.exit_kind != "INVALID_HP"]
        assert len(real) == counted


def test_restore_twice_and_after_shutdown() -> None:
    make = build(SEARCHERS["asha"][0])
    whole = Simulator(make(), noisy, order_seed=3).finish()
    split = Simulator(make(), noisy, order_seed=3)
    for _ in range(5):
        split.run(max_events=whole.steps // 6)
        split.swap_method(make())
    split.finish()
    assert split.trace == whole.trace
    split.swap_method(make())
    assert split.method.progress() == 1.0
    assert split.method.on_trial_exited("r1") == []


def test_restore_rejects_a_snapshot_of_another_method() -> None:
    asha = build(SEARCHERS["asha"][0])()
    rnd = build(SEARCHERS["random"][0])()
    with pytest.raises(ValueError, match="adaptive_asha"):
        rnd.restore(asha.snapshot())


@pytest.mark.parametrize("name", list(SEARCHERS))
def test_progress_is_monotone_and_ends_at_one(name: str) -> None:
    searcher, sim_kw, _ = SEARCHERS[name]
    sim = Simulator(build(searcher)(), noisy, order_seed=2, **sim_kw).finish()
    hist = sim.progress_history
    assert hist[0] < 0.5
    assert all(a <= b for a, b in itertools.pairwise(hist))
    assert hist[-1] == 1.0
    assert all(p < 1.0 for p in hist[:-1]) or name.endswith("target")
