"""single / random / grid search methods, driven by the simulator."""

from __future__ import annotations

import pytest

from master_server.config import normalize_hyperparameters
from master_server.searcher import hparams as hp
from master_server.searcher.base import (
    Create,
    ExitedReason,
    Shutdown,
    Stop,
    ValidateAfter,
)
from master_server.searcher.simple import GridSearch, RandomSearch, SingleSearch
from tests.master_server.searcher.sim_harness import Simulator

HP = normalize_hyperparameters(
    {
        "x": {"type": "double", "minval": -10, "maxval": 10, "count": 3},
        "n": {"type": "int", "minval": 1, "maxval": 4, "count": 4},
        "opt": {"name": {"type": "categorical", "vals": ["adam", "sgd"]}, "eps": 1e-8},
    }
)


def test_single_creates_exactly_one_trial_and_shuts_down_after_it() -> None:
    method = SingleSearch(HP, seed=3, max_length=100)
    ops = method.initial_operations()
    assert [type(a) for a in ops] == [Create, ValidateAfter]
    assert ops[1] == ValidateAfter("r1", 100)
    assert ops[0].hparams["opt"]["eps"] == 1e-8
    assert method.on_trial_created("r1") == []
    assert method.on_validation_completed("r1", 0.5, 100) == [Stop("r1")]
    assert method.progress() == pytest.approx(0.999)
    assert method.on_trial_exited("r1") == [Shutdown(False, "all 1 trial(s) finished")]
    assert method.progress() == 1.0
    sim = Simulator(SingleSearch(HP, seed=3, max_length=100)).finish()
    assert len(sim.created) == 1 and sim.created[0].trained == 100


def test_random_creates_max_trials_within_concurrency() -> None:
    method = RandomSearch(HP, seed=1, max_trials=25, max_concurrent_trials=3, max_length=40)
    sim = Simulator(method, max_concurrent=3, order_seed=4).finish()
    assert len(sim.created) == 25
    assert sim.max_live_seen == 3
    assert all(t.trained == 40 for t in sim.created)
    assert sim.shutdown == Shutdown(False, "all 25 trial(s) finished")
    assert all(n == 1 for n in sim.stop_counts.values())


def test_random_is_reproducible_by_seed() -> None:
    def hparams(seed: int, order: int) -> list[dict]:
        m = RandomSearch(HP, seed=seed, max_trials=12, max_concurrent_trials=2, max_length=5)
        sim = Simulator(m, order_seed=order).finish()
        return [t.hparams for t in sim.created]

    assert hparams(7, 0) == hparams(7, 1)  # event order does not matter
    assert hparams(7, 0) != hparams(8, 0)
    assert [t["opt"]["name"] for t in hparams(7, 0)] != ["adam"] * 12


def test_random_request_ids_are_sequential_strings() -> None:
    sim = Simulator(RandomSearch(HP, seed=1, max_trials=5, max_length=3)).finish()
    assert sim.order == ["r1", "r2", "r3", "r4", "r5"]


def test_grid_trains_every_point_once() -> None:
    method = GridSearch(HP, seed=0, max_concurrent_trials=4, max_length=10)
    assert method.num_points == 3 * 4 * 2
    sim = Simulator(method, max_concurrent=4).finish()
    got = sorted(repr(sorted(t.hparams.items())) for t in sim.created)
    want = sorted(repr(sorted(p.items())) for p in hp.grid(HP))
    assert got == want
    assert sim.shutdown is not None and not sim.shutdown.failure


def test_grid_does_not_replace_invalid_points() -> None:
    method = GridSearch(HP, seed=0, max_length=10)
    sim = Simulator(method, invalid_rate=0.3, order_seed=2).finish()
    assert len(sim.created) == 24


def test_invalid_hp_trials_are_replaced_and_do_not_count() -> None:
    method = RandomSearch(HP, seed=2, max_trials=10, max_concurrent_trials=2, max_length=5)
    sim = Simulator(method, invalid_rate=0.3, order_seed=9).finish()
    invalid = [t for t in sim.created if t.exit_kind == "INVALID_HP"]
    ok = [t for t in sim.created if t.exit_kind == "ok"]
    assert invalid, "the seed should produce some invalid trials"
    assert len(ok) == 10
    assert len(sim.created) == 10 + len(invalid)
    assert sim.shutdown is not None and not sim.shutdown.failure


def test_errored_trials_count_as_done() -> None:
    method = RandomSearch(HP, seed=2, max_trials=10, max_length=5)
    sim = Simulator(method, error_rate=0.3, order_seed=1).finish()
    assert len(sim.created) == 10
    assert any(t.exit_kind == "ERRORED" for t in sim.created)
    assert sim.shutdown is not None and not sim.shutdown.failure


def test_all_trials_errored_is_a_failed_search() -> None:
    method = RandomSearch(HP, seed=2, max_trials=4, max_concurrent_trials=2, max_length=5)
    ops = method.initial_operations()
    assert [a.request_id for a in ops if isinstance(a, Create)] == ["r1", "r2"]
    ops = method.on_trial_exited_early("r1", ExitedReason.ERRORED)
    ops += method.on_trial_exited_early("r2", ExitedReason.USER_CANCELED)
    ops += method.on_trial_exited_early("r3", ExitedReason.ERRORED)
    final = method.on_trial_exited_early("r4", ExitedReason.ERRORED)
    assert len(final) == 1 and isinstance(final[0], Shutdown) and final[0].failure
    assert method.progress() == 1.0


def test_every_invalid_space_still_ends() -> None:
    method = RandomSearch(HP, seed=2, max_trials=2, max_concurrent_trials=1, max_length=5)
    actions = method.initial_operations()
    for _ in range(1000):
        creates = [a for a in actions if isinstance(a, Create)]
        if not creates:
            break
        actions = method.on_trial_exited_early(creates[0].request_id, ExitedReason.INVALID_HP)
    assert actions and isinstance(actions[-1], Shutdown) and actions[-1].failure


def test_unknown_and_repeated_events_are_no_ops() -> None:
    method = RandomSearch(HP, seed=2, max_trials=2, max_length=5)
    method.initial_operations()
    assert method.on_validation_completed("nope", 1.0, 5) == []
    assert method.on_trial_exited("nope") == []
    assert method.on_trial_exited_early("nope", ExitedReason.ERRORED) == []
    method.on_trial_progress("nope", 3.0)
    assert method.on_validation_completed("r1", 1.0, 5) == [Stop("r1")]
    assert method.on_validation_completed("r1", 1.0, 5) == []  # no second Stop
    assert method.on_trial_exited("r1") == []
    assert method.on_trial_exited("r1") == []
    assert method.on_trial_exited_early("r1", ExitedReason.ERRORED) == []


def test_metrics_only_trials_are_stopped_at_max_time() -> None:
    ops = RandomSearch(HP, seed=1, max_trials=6, max_time=20).initial_operations()
    assert not any(isinstance(a, ValidateAfter) for a in ops)
    method = RandomSearch(HP, seed=1, max_trials=6, max_concurrent_trials=2, max_time=20)
    sim = Simulator(method, style="metrics", report_every=3, natural_length=1000).finish()
    assert [t.trained for t in sim.created] == [21.0] * 6  # first report >= 20


def test_no_length_trials_run_to_their_own_end() -> None:
    method = RandomSearch(HP, seed=1, max_trials=4, max_concurrent_trials=2)
    sim = Simulator(method, style="metrics", report_every=5, natural_length=15).finish()
    assert [t.trained for t in sim.created] == [15.0] * 4
    # Progress is the fraction of trials that exited.
    assert sorted(set(sim.progress_history)) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_progress_counts_completed_work() -> None:
    method = RandomSearch(HP, seed=1, max_trials=2, max_concurrent_trials=2, max_length=100)
    method.initial_operations()
    assert method.progress() == 0.0
    method.on_trial_progress("r1", 50)
    assert method.progress() == pytest.approx(0.25)
    method.on_trial_progress("r1", 500)  # capped at max_length
    assert method.progress() == pytest.approx(0.5)
    method.on_trial_progress("r2", 10)
    assert method.progress() == pytest.approx(0.55)
    method.on_trial_exited_early("r2", ExitedReason.ERRORED)  # counts as full
    assert method.progress() == pytest.approx(0.999)  # capped below 1 until Shutdown
    method.on_validation_completed("r1", 0.1, 100)
    assert method.on_trial_exited("r1")[-1] == Shutdown(False, "all 2 trial(s) finished")
    assert method.progress() == 1.0


def test_progress_is_monotone_over_a_full_search() -> None:
    method = RandomSearch(HP, seed=1, max_trials=30, max_concurrent_trials=5, max_length=64)
    sim = Simulator(method, error_rate=0.05, invalid_rate=0.05, order_seed=3).finish()
    hist = sim.progress_history
    assert hist == sorted(hist) and hist[-1] == 1.0
    assert len(set(hist)) > 20


def test_invalid_hp_work_does_not_count_toward_progress() -> None:
    method = RandomSearch(HP, seed=1, max_trials=2, max_concurrent_trials=1, max_length=100)
    method.initial_operations()
    method.on_trial_progress("r1", 50)
    assert method.progress() == pytest.approx(0.25)
    (create, _) = method.on_trial_exited_early("r1", ExitedReason.INVALID_HP)
    assert create.request_id == "r2"
    assert method.progress() == pytest.approx(0.25)  # never goes down
    method.on_validation_completed("r2", 1.0, 100)
    assert method.progress() == pytest.approx(0.5)  # r1's discarded work is not counted
