"""Early stopping (patience / min_delta) and the target metric, as a wrapper."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from master_server.config import normalize_hyperparameters
from master_server.searcher.asha import AdaptiveASHASearch
from master_server.searcher.base import Create, ExitedReason, Shutdown, Stop, ValidateAfter
from master_server.searcher.early_stopping import EarlyStoppingSearchMethod
from master_server.searcher.simple import RandomSearch, SingleSearch
from tests.master_server.searcher.sim_harness import Simulator

HP = normalize_hyperparameters({"x": {"type": "double", "minval": -10, "maxval": 10}})


def scripted(values: list[float]) -> Callable[[dict, float, str], float]:
    """Report ``i`` (length ``i + 1``) of every trial gives ``values[i]`` (then the last)."""

    def objective(h: dict, length: float, rid: str) -> float:
        return values[min(int(length) - 1, len(values) - 1)]

    return objective


def stopped_after(values: list[float], **kw: object) -> int:
    """How many validations a single trial made before early stopping ended it."""
    inner = SingleSearch(HP, seed=0, max_time=1000)
    method = EarlyStoppingSearchMethod(inner, **kw)  # type: ignore[arg-type]
    sim = Simulator(method, scripted(values), style="metrics", natural_length=1000).finish()
    (trial,) = sim.created
    return len(trial.reports)


@pytest.mark.parametrize(
    ("values", "patience", "min_delta", "expected"),
    [
        # best 3.0 at report 3; reports 4, 5, 6 do not improve -> stopped at report 6
        ([5, 4, 3, 3.5, 3.2, 3.1, 1.0], 3, 0.0, 6),
        # an improvement resets the count
        ([5, 6, 7, 4, 5, 6, 7, 0], 3, 0.0, 7),
        # steps below min_delta 0.1 (from the best, 5) are not improvements
        ([5, 4.95, 4.92, 4.91, 1.0], 3, 0.1, 4),
        # ... but are with min_delta 0
        ([5, 4.95, 4.9, 4.85, 4.8, 4.8, 4.8, 4.8], 3, 0.0, 8),
        # patience 1: the first report that is not better
        ([5, 4, 4, 1], 1, 0.0, 3),
        # NaN never improves
        ([5, float("nan"), float("nan"), 1], 2, 0.0, 3),
    ],
)
def test_patience_stops_at_the_exact_validation(
    values: list[float], patience: int, min_delta: float, expected: int
) -> None:
    assert stopped_after(values, patience=patience, min_delta=min_delta) == expected


def test_patience_larger_is_better() -> None:
    values = [1.0, 2.0, 3.0, 2.5, 2.9, 2.0, 9.0]
    assert stopped_after(values, patience=3, smaller_is_better=False) == 6


def test_early_stop_drops_the_pending_validate_after() -> None:
    inner = AdaptiveASHASearch(
        HP, seed=0, max_trials=1, max_length=64, max_rungs=3, divisor=4, mode="aggressive"
    )
    method = EarlyStoppingSearchMethod(inner, patience=1)
    ops = method.initial_operations()
    assert ops[1] == ValidateAfter("r1", 4)
    assert method.on_validation_completed("r1", 1.0, 4) == [ValidateAfter("r1", 16)]
    # Not better: the ASHA promotion is replaced by a Stop.
    assert method.on_validation_completed("r1", 1.0, 16) == [Stop("r1")]
    assert method.on_trial_exited("r1") == [Shutdown(False, "all 1 trial(s) finished")]
    assert method.progress() == 1.0


def test_target_shuts_down_at_the_report_that_reaches_it() -> None:
    def objective(h: dict, length: float, rid: str) -> float:
        return 10.0 - length if rid == "r3" else 10.0

    inner = RandomSearch(HP, seed=0, max_trials=50, max_concurrent_trials=4, max_time=100)
    method = EarlyStoppingSearchMethod(inner, target=4.0)
    sim = Simulator(method, objective, style="metrics", natural_length=100, order_seed=1)
    sim.finish()
    r3 = sim.trials["r3"]
    assert r3.reports[-1] == (6.0, 4.0)  # stopped right at the first metric <= 4.0
    assert all(m > 4.0 for _, m in r3.reports[:-1])
    # The validation that reached the target answered: Stop every live trial, then Shutdown.
    i = sim.trace.index(("validation", "r3", 6.0, 4.0))
    kind, actions = sim.trace[i + 1]
    assert kind == "actions"
    assert actions[-1].startswith("Shutdown(failure=False")
    stopped = {a.split("'")[1] for a in actions[:-1]}
    assert stopped == {t.rid for t in sim.created if t.exit_kind == "ok"} and "r3" in stopped
    assert len(sim.created) < 50
    assert method.progress() == 1.0


def test_target_larger_is_better_and_no_events_after() -> None:
    inner = RandomSearch(HP, seed=0, max_trials=5, max_concurrent_trials=2, max_length=10)
    method = EarlyStoppingSearchMethod(inner, target=0.9, smaller_is_better=False)
    method.initial_operations()
    assert method.on_validation_completed("r1", 0.5, 10) == [Stop("r1")]
    actions = method.on_validation_completed("r2", 0.95, 10)
    assert actions[0] == Stop("r2") and isinstance(actions[-1], Shutdown)
    assert Stop("r1") not in actions  # already stopping
    assert method.on_trial_exited("r1") == []  # nothing new is created
    assert method.on_trial_exited_early("r2", ExitedReason.ERRORED) == []
    assert method.on_validation_completed("r2", 0.99, 10) == []


def test_wrapper_passes_everything_else_through() -> None:
    inner = RandomSearch(HP, seed=0, max_trials=6, max_concurrent_trials=2, max_length=10)
    method = EarlyStoppingSearchMethod(inner, patience=3)
    sim = Simulator(method).finish()
    assert len(sim.created) == 6 and all(t.trained == 10 for t in sim.created)
    ops = EarlyStoppingSearchMethod(
        RandomSearch(HP, seed=0, max_trials=1, max_length=10), patience=2
    ).initial_operations()
    assert isinstance(ops[0], Create)


def test_patience_counts_validations_inside_one_long_operation() -> None:
    inner = SingleSearch(HP, seed=0, max_length=500)
    method = EarlyStoppingSearchMethod(inner, patience=3)
    ops = method.initial_operations()
    assert ops[1] == ValidateAfter("r1", 500)
    assert method.on_validation_reported("r1", 1.0, 5) == []
    assert method.on_validation_reported("r1", 1.0, 10) == []
    assert method.on_validation_reported("r1", 1.0, 15) == []
    assert method.on_validation_reported("r1", 1.0, 20) == [Stop("r1")]
    assert method.on_validation_reported("r1", 1.0, 25) == []  # stopped once
    # Survives a restart of the master.
    again = EarlyStoppingSearchMethod(SingleSearch(HP, seed=0, max_length=500), patience=3)
    again.restore(method.snapshot())
    assert again.on_trial_exited("r1") == [Shutdown(False, "all 1 trial(s) finished")]


def test_a_completion_repeating_the_last_report_is_not_counted_twice() -> None:
    inner = AdaptiveASHASearch(
        HP, seed=0, max_trials=1, max_length=64, max_rungs=3, divisor=4, mode="aggressive"
    )
    method = EarlyStoppingSearchMethod(inner, patience=2)
    method.initial_operations()
    assert method.on_validation_reported("r1", 3.0, 2) == []
    assert method.on_validation_reported("r1", 2.0, 4) == []
    # The op's completion repeats the validation at 4: no patience step, ASHA promotes.
    assert method.on_validation_completed("r1", 2.0, 4) == [ValidateAfter("r1", 16)]
    assert method.on_validation_reported("r1", 2.5, 8) == []
    assert method.on_validation_reported("r1", 2.1, 12) == [Stop("r1")]


def test_target_applies_to_reported_validations() -> None:
    inner = SingleSearch(HP, seed=0, max_length=500)
    method = EarlyStoppingSearchMethod(inner, target=0.5)
    method.initial_operations()
    assert method.on_validation_reported("r1", 0.9, 10) == []
    actions = method.on_validation_reported("r1", 0.4, 20)
    assert actions[0] == Stop("r1") and isinstance(actions[1], Shutdown)


def test_methods_without_early_stopping_ignore_reports() -> None:
    assert SingleSearch(HP, seed=0, max_length=10).on_validation_reported("r1", 1.0, 5) is None
