"""The Optuna-backed search method: distributions, convergence, pruning, failures."""

from __future__ import annotations

import math

import optuna
import pytest

from master_server.config import normalize_hyperparameters
from master_server.searcher import hparams as hp
from master_server.searcher.base import Create, ExitedReason, Shutdown, Stop, ValidateAfter
from master_server.searcher.optuna_search import OptunaSearch, check_args, distributions
from tests.master_server.searcher.sim_harness import Simulator

optuna.logging.set_verbosity(optuna.logging.WARNING)

X = normalize_hyperparameters({"x": {"type": "double", "minval": -10, "maxval": 10}})


def square(h: dict, length: float, rid: str) -> float:
    return (h["x"] - 2.0) ** 2


def test_distributions_from_specs() -> None:
    space = normalize_hyperparameters(
        {
            "i": {"type": "int", "minval": 1, "maxval": 8, "count": 3},
            "d": {"type": "double", "minval": 0, "maxval": 1},
            "l": {"type": "log", "minval": -4, "maxval": -1},
            "l2": {"type": "log", "minval": 1, "maxval": 3, "base": 2},
            "c": {"type": "categorical", "vals": [[1, 2], {"a": 1}, "s"]},
            "g": {"k": 5},
        }
    )
    dists = distributions(hp.flatten(space))
    assert set(dists) == {"i", "d", "l", "l2", "c"}  # consts have none
    assert dists["i"] == optuna.distributions.IntDistribution(1, 8)
    assert dists["d"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert dists["l"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["l2"] == optuna.distributions.FloatDistribution(2.0, 8.0, log=True)
    assert dists["c"] == optuna.distributions.CategoricalDistribution([0, 1, 2])
    method = OptunaSearch(space, seed=1, max_trials=30, max_concurrent_trials=0, sampler="random")
    for action in method.initial_operations():
        assert isinstance(action, Create)
        h = action.hparams
        assert isinstance(h["i"], int) and 1 <= h["i"] <= 8
        assert 1e-4 <= h["l"] <= 1e-1 and 2.0 <= h["l2"] <= 8.0
        assert h["c"] in ([1, 2], {"a": 1}, "s")
        assert h["g"] == {"k": 5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_converges_on_a_quadratic(seed: int) -> None:
    method = OptunaSearch(X, seed=seed, max_trials=50, max_concurrent_trials=1, max_length=1)
    sim = Simulator(method, square).finish()
    best = method.best_trial()
    assert best is not None
    assert abs(best["hparams"]["x"] - 2.0) < 0.3
    assert best["value"] == pytest.approx(min(t.reports[-1][1] for t in sim.created))
    # TPE beats its own random start-up phase.
    startup = min(t.reports[-1][1] for t in sim.created[:10])
    assert best["value"] < startup


def test_tpe_maximizes_when_larger_is_better() -> None:
    method = OptunaSearch(
        X, seed=4, max_trials=40, max_concurrent_trials=1, smaller_is_better=False
    )
    Simulator(
        method, lambda h, n, r: -((h["x"] + 3.0) ** 2), style="metrics", natural_length=1
    ).finish()
    best = method.best_trial()
    assert best is not None and abs(best["hparams"]["x"] + 3.0) < 0.5
    assert method.study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_same_seed_same_search() -> None:
    def xs(seed: int) -> list[float]:
        m = OptunaSearch(X, seed=seed, max_trials=20, max_concurrent_trials=2, max_length=1)
        return [t.hparams["x"] for t in Simulator(m, square).finish().created]

    assert xs(3) == xs(3)
    assert xs(3) != xs(4)


def test_op_style_reports_at_evenly_spaced_lengths() -> None:
    method = OptunaSearch(X, seed=0, max_trials=1, max_length=100, pruner="median", num_reports=4)
    ops = method.initial_operations()
    assert ops[1] == ValidateAfter("r1", 25)
    assert method.on_validation_completed("r1", 3.0, 25) == [ValidateAfter("r1", 50)]
    assert method.on_validation_completed("r1", 2.0, 50) == [ValidateAfter("r1", 75)]
    assert method.on_validation_completed("r1", 1.0, 75) == [ValidateAfter("r1", 100)]
    assert method.on_validation_completed("r1", 0.5, 100) == [Stop("r1")]
    trial = method.study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    assert trial.intermediate_values == {25: 3.0, 50: 2.0, 75: 1.0}


def test_median_pruner_stops_bad_trials_early() -> None:
    def curve(h: dict, length: float, rid: str) -> float:
        return (h["x"] - 2.0) ** 2 + 10.0 / length

    method = OptunaSearch(
        X,
        seed=1,
        max_trials=40,
        max_concurrent_trials=1,
        max_length=100,
        pruner="median",
        pruner_args={"n_startup_trials": 5},
        num_reports=5,
    )
    sim = Simulator(method, curve).finish()
    states = [t.state for t in method.study.trials]
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    assert pruned >= 10
    assert states.count(optuna.trial.TrialState.COMPLETE) + pruned == 40
    short = [t for t in sim.created if t.trained < 100]
    assert len(short) == pruned


def test_early_exits_are_told_fail_and_invalid_hp_replaced() -> None:
    method = OptunaSearch(X, seed=1, max_trials=30, max_concurrent_trials=3, max_length=5)
    sim = Simulator(method, square, error_rate=0.1, invalid_rate=0.1, order_seed=5).finish()
    invalid = sum(1 for t in sim.created if t.exit_kind == "INVALID_HP")
    assert invalid > 0 and len(sim.created) == 30 + invalid
    fails = sum(1 for t in method.study.trials if t.state == optuna.trial.TrialState.FAIL)
    assert fails == sum(1 for t in sim.created if t.exit_kind != "ok")


def test_exit_without_full_length_tells_last_metric() -> None:
    method = OptunaSearch(X, seed=1, max_trials=1, max_concurrent_trials=1)
    method.initial_operations()
    assert method.on_validation_completed("r1", 4.0, 3) == []
    assert method.on_validation_completed("r1", math.nan, 4) == []
    assert method.on_trial_exited("r1")[-1] == Shutdown(False, "all 1 optuna trial(s) finished")
    assert method.study.trials[0].value == 4.0


def test_a_failing_sampler_fails_the_search_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method = OptunaSearch(X, seed=1, max_trials=5, max_concurrent_trials=1)
    ops = method.initial_operations()
    assert len(ops) == 1 and isinstance(ops[0], Create)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(method.study, "ask", broken)
    method.on_validation_completed("r1", 1.0, 1)
    final = method.on_trial_exited("r1")
    assert len(final) == 1 and isinstance(final[0], Shutdown) and final[0].failure
    assert "sampler exploded" in final[0].reason
    assert method.progress() == 1.0
    # A sampler that cannot even start ends the search at once.
    bad = OptunaSearch(X, seed=1, max_trials=5, sampler_args={"n_startup_trials": "many"})
    ops = bad.initial_operations()
    assert len(ops) == 1 and isinstance(ops[0], Shutdown) and ops[0].failure


def test_exited_early_on_unknown_trial_is_a_no_op() -> None:
    method = OptunaSearch(X, seed=1, max_trials=2)
    method.initial_operations()
    assert method.on_trial_exited_early("zzz", ExitedReason.ERRORED) == []


def test_check_args() -> None:
    assert check_args("tpe", {"n_startup_trials": 3}, "median", {"n_warmup_steps": 2}) == []
    assert check_args("tpe", {"seed": 1}, "none", {})[0][0] == "sampler_args.seed"
    assert check_args("random", {"bogus": 1}, "none", {})[0][0] == "sampler_args"
    assert check_args("tpe", {}, "hyperband", {"bogus": 1})[0][0] == "pruner_args"
