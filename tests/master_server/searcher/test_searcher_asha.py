"""Adaptive ASHA: brackets, rungs, promotions, both length styles."""

from __future__ import annotations

import statistics

import pytest

from master_server.config import normalize_hyperparameters
from master_server.searcher.asha import (
    AdaptiveASHASearch,
    allocate_trials,
    bracket_rung_counts,
    rung_lengths,
)
from master_server.searcher.base import Create, ExitedReason, Shutdown, Stop, ValidateAfter
from tests.master_server.searcher.sim_harness import Simulator, quadratic_objective

HP = normalize_hyperparameters({"x": {"type": "double", "minval": -10, "maxval": 10}})


def test_bracket_shapes_by_mode() -> None:
    assert bracket_rung_counts("aggressive", 5) == [5]
    assert bracket_rung_counts("standard", 5) == [5, 4, 3]
    assert bracket_rung_counts("standard", 4) == [4, 3]
    assert bracket_rung_counts("conservative", 3) == [3, 2, 1]


def test_trial_allocation_sums_and_favours_aggressive_brackets() -> None:
    alloc = allocate_trials(100, [5, 4, 3], 4.0)
    assert sum(alloc) == 100
    assert alloc[0] > alloc[1] > alloc[2] > 0
    assert sum(allocate_trials(7, [3, 2, 1], 3.0)) == 7


def test_rung_lengths() -> None:
    assert rung_lengths(256, 4, 4.0) == [4, 16, 64, 256]
    assert rung_lengths(100, 3, 2.0) == [25, 50, 100]
    assert rung_lengths(10, 5, 4.0) == [1, 2, 10]  # equal rungs merged, at least 1
    assert rung_lengths(7, 1, 4.0) == [7]


def test_promotions_follow_top_one_over_divisor() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=0,
        max_trials=4,
        max_length=100,
        max_rungs=2,
        divisor=2,
        mode="aggressive",
        max_concurrent_trials=0,
    )
    assert method.brackets == [([50, 100], 4)]
    ops = method.initial_operations()
    assert [a.request_id for a in ops if isinstance(a, Create)] == ["r1", "r2", "r3", "r4"]
    assert all(a.length == 50 for a in ops if isinstance(a, ValidateAfter))
    # First trial at a rung is always promoted.
    assert method.on_validation_completed("r1", 5.0, 50) == [ValidateAfter("r1", 100)]
    # 2 records: top max(1, 2 // 2) = 1; 6.0 ranks second.
    assert method.on_validation_completed("r2", 6.0, 50) == [Stop("r2")]
    # 3 records: top 1; 1.0 is the best.
    assert method.on_validation_completed("r3", 1.0, 50) == [ValidateAfter("r3", 100)]
    # 4 records: top 2; 3.0 ranks second.
    assert method.on_validation_completed("r4", 3.0, 50) == [ValidateAfter("r4", 100)]
    # The last rung ends the trial.
    assert method.on_validation_completed("r1", 4.0, 100) == [Stop("r1")]
    for rid in ("r2", "r1"):
        assert method.on_trial_exited(rid) == []
    assert method.on_validation_completed("r3", 0.5, 100) == [Stop("r3")]
    assert method.on_trial_exited("r3") == []
    method.on_validation_completed("r4", 0.7, 100)
    assert method.on_trial_exited("r4") == [Shutdown(False, "all 4 trial(s) finished")]


def test_larger_is_better_flips_the_ranking() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=0,
        max_trials=3,
        max_length=100,
        max_rungs=2,
        divisor=2,
        mode="aggressive",
        max_concurrent_trials=0,
        smaller_is_better=False,
    )
    method.initial_operations()
    assert method.on_validation_completed("r1", 5.0, 50) == [ValidateAfter("r1", 100)]
    assert method.on_validation_completed("r2", 6.0, 50) == [ValidateAfter("r2", 100)]
    assert method.on_validation_completed("r3", 1.0, 50) == [Stop("r3")]


def test_nan_metric_is_the_worst() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=0,
        max_trials=3,
        max_length=100,
        max_rungs=2,
        divisor=2,
        mode="aggressive",
        max_concurrent_trials=0,
    )
    method.initial_operations()
    method.on_validation_completed("r1", 5.0, 50)
    assert method.on_validation_completed("r2", float("nan"), 50) == [Stop("r2")]


def test_op_style_stops_most_trials_early() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=1,
        max_trials=200,
        max_length=256,
        max_rungs=4,
        divisor=4,
        mode="aggressive",
        max_concurrent_trials=8,
    )
    sim = Simulator(method, max_concurrent=8, order_seed=2).finish()
    trained = [t.trained for t in sim.created]
    assert len(trained) == 200
    assert sum(1 for x in trained if x == 4) > 120  # most stopped at the first rung
    full = [t for t in sim.created if t.trained == 256]
    assert 1 <= len(full) <= 20  # few trained to max length
    # Those that went the distance are far better than the average trial.
    score = [abs(t.hparams["x"] - 2) for t in sim.created]
    assert statistics.mean(abs(t.hparams["x"] - 2) for t in full) < statistics.mean(score) / 2
    assert sum(trained) < 0.15 * 200 * 256  # far cheaper than training every trial fully


def test_metrics_only_style_stops_trials_by_time_metric() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=1,
        max_trials=120,
        max_time=256,
        max_rungs=4,
        divisor=4,
        mode="aggressive",
        max_concurrent_trials=8,
    )
    sim = Simulator(
        method, style="metrics", report_every=3, natural_length=10_000, max_concurrent=8
    ).finish()
    trained = [t.trained for t in sim.created]
    assert len(trained) == 120
    # Reports come every 3 units: the first one past rung 4 is at 6.
    assert sum(1 for x in trained if x == 6) > 70
    full = [x for x in trained if x >= 256]
    assert 1 <= len(full) <= 15
    assert max(trained) == 258  # stopped at the first report past max_time


def test_metrics_only_report_can_cross_several_rungs() -> None:
    method = AdaptiveASHASearch(
        HP, seed=0, max_trials=1, max_time=64, max_rungs=3, divisor=4, mode="aggressive"
    )
    method.initial_operations()
    assert method.brackets == [([4, 16, 64], 1)]
    assert method.on_validation_completed("r1", 1.0, 2) == []  # below the first rung
    assert method.on_validation_completed("r1", 1.0, 20) == [ValidateAfter("r1", 64)]
    assert method.on_validation_completed("r1", 1.0, 70) == [Stop("r1")]


def test_standard_mode_uses_several_brackets() -> None:
    method = AdaptiveASHASearch(
        HP, seed=3, max_trials=60, max_length=64, max_rungs=3, divisor=4, mode="standard"
    )
    assert [b[0] for b in method.brackets] == [[4, 16, 64], [16, 64]]
    sim = Simulator(method, max_concurrent=16).finish()
    firsts = {t.reports[0][0] for t in sim.created if t.reports}
    assert firsts == {4, 16}


def test_bracket_rungs_override_mode() -> None:
    method = AdaptiveASHASearch(
        HP, seed=3, max_trials=10, max_length=64, divisor=4, bracket_rungs=[2, 1]
    )
    assert [b[0] for b in method.brackets] == [[16, 64], [64]]


def test_invalid_hp_is_replaced_in_asha() -> None:
    method = AdaptiveASHASearch(
        HP, seed=1, max_trials=40, max_length=64, max_rungs=3, divisor=4, mode="aggressive"
    )
    sim = Simulator(method, invalid_rate=0.2, error_rate=0.05, order_seed=7).finish()
    counted = [t for t in sim.created if t.exit_kind != "INVALID_HP"]
    assert len(counted) == 40
    assert len(sim.created) > 40


def test_both_or_neither_length_is_rejected() -> None:
    with pytest.raises(ValueError):
        AdaptiveASHASearch(HP, seed=0, max_trials=2)
    with pytest.raises(ValueError):
        AdaptiveASHASearch(HP, seed=0, max_trials=2, max_length=10, max_time=10)


def test_progress_is_monotone_and_complete() -> None:
    method = AdaptiveASHASearch(
        HP, seed=1, max_trials=100, max_length=256, max_rungs=4, divisor=4, mode="standard"
    )
    sim = Simulator(method, order_seed=11, error_rate=0.02).finish()
    hist = sim.progress_history
    assert hist == sorted(hist)
    assert hist[-1] == 1.0
    assert hist[len(hist) // 2] > 0.2  # the estimate tracks real work, not a late jump


def test_early_exit_mid_rung_counts_as_done() -> None:
    method = AdaptiveASHASearch(
        HP,
        seed=0,
        max_trials=2,
        max_length=16,
        max_rungs=2,
        divisor=4,
        mode="aggressive",
        max_concurrent_trials=1,
    )
    ops = method.initial_operations()
    assert [type(a) for a in ops] == [Create, ValidateAfter]
    ops = method.on_trial_exited_early("r1", ExitedReason.ERRORED)
    assert [type(a) for a in ops] == [Create, ValidateAfter]
    method.on_validation_completed("r2", 1.0, 4)
    method.on_validation_completed("r2", 1.0, 16)
    assert method.on_trial_exited("r2") == [Shutdown(False, "all 2 trial(s) finished")]
    assert quadratic_objective({"x": 2.0}, 0.0, "r") == pytest.approx(1.0, abs=0.05)
