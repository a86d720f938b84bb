"""Population-based training: rounds, exploit (warm starts), explore."""

from __future__ import annotations

import random

import pytest

from master_server.config import normalize_hyperparameters
from master_server.searcher import hparams as hp
from master_server.searcher.base import Create, Stop, ValidateAfter
from master_server.searcher.pbt import PBTSearch, explore
from tests.master_server.searcher.sim_harness import Simulator

HP = normalize_hyperparameters(
    {
        "x": {"type": "double", "minval": -10, "maxval": 10},
        "n": {"type": "int", "minval": 1, "maxval": 100},
        "lr": {"type": "log", "minval": -4, "maxval": -1},
        "opt": {"type": "categorical", "vals": ["adam", "sgd"]},
        "const": 3,
    }
)


def make(**kw: object) -> PBTSearch:
    args: dict = dict(
        seed=5,
        population_size=6,
        num_rounds=4,
        length_per_round=10,
        truncate_fraction=0.34,
        resample_probability=0.2,
        perturb_factor=0.2,
    )
    args.update(kw)
    return PBTSearch(HP, **args)


def test_rounds_keep_the_population_and_warm_start_children() -> None:
    sim = Simulator(make(), order_seed=1).finish()
    trials = sim.created
    # 6 initial members + 2 children in each of the 3 later rounds.
    assert len(trials) == 6 + 3 * 2
    initial, children = trials[:6], trials[6:]
    assert all(t.checkpoint_from is None for t in initial)
    assert all(t.checkpoint_from is not None for t in children)
    # population_size members report in every round.
    for r in range(4):
        length = (r + 1) * 10
        reporting = [t for t in trials if any(rep[0] == length for rep in t.reports)]
        assert len(reporting) == 6, (r, len(reporting))
    # Every trial reaching the last round is stopped there (absolute lineage lengths).
    assert sum(1 for t in trials if t.trained == 40) == 6
    assert sim.shutdown is not None and not sim.shutdown.failure


def test_exploit_copies_the_best_and_stops_the_worst() -> None:
    method = make(num_rounds=2, population_size=4, truncate_fraction=0.5)
    ops = method.initial_operations()
    creates = [a for a in ops if isinstance(a, Create)]
    assert [c.request_id for c in creates] == ["r1", "r2", "r3", "r4"]
    assert all(a.length == 10 for a in ops if isinstance(a, ValidateAfter))
    assert method.on_validation_completed("r1", 3.0, 10) == []
    assert method.on_validation_completed("r2", 1.0, 10) == []
    assert method.on_validation_completed("r3", 4.0, 10) == []
    assert method.progress() == pytest.approx(3 / 8)
    actions = method.on_validation_completed("r4", 2.0, 10)
    stops = [a.request_id for a in actions if isinstance(a, Stop)]
    assert sorted(stops) == ["r1", "r3"]  # the two worst
    cont = {a.request_id: a.length for a in actions if isinstance(a, ValidateAfter)}
    assert cont["r2"] == 20 and cont["r4"] == 20
    children = [a for a in actions if isinstance(a, Create)]
    assert [c.checkpoint_from for c in children] == ["r2", "r4"]  # best first, round robin
    assert cont[children[0].request_id] == 20  # the child continues its parent's lineage
    child = children[0].hparams
    assert child["const"] == 3
    assert -10 <= child["x"] <= 10 and 1 <= child["n"] <= 100


def test_children_wait_for_room_under_max_concurrent() -> None:
    method = make(max_concurrent_trials=6)
    sim = Simulator(method, max_concurrent=6, order_seed=4).finish()
    assert len(sim.created) == 12
    assert sim.max_live_seen == 6


def test_lost_members_are_replaced_by_children() -> None:
    sim = Simulator(make(num_rounds=6), error_rate=0.08, order_seed=3).finish()
    assert sim.shutdown is not None
    errored = sum(1 for t in sim.created if t.exit_kind == "ERRORED")
    assert errored > 0
    # Each round's survivors + children refill the population.
    for r in range(1, 5):
        length = (r + 1) * 10
        started = [t for t in sim.created if t.last_target >= length and t.trained >= r * 10]
        assert len(started) >= 6


def test_explore_perturbs_within_bounds() -> None:
    specs = hp.flatten(HP)
    parent = {"x": 9.5, "n": 50, "lr": 0.05, "opt": "sgd", "const": 3}
    seen_x = set()
    for i in range(200):
        child = explore(
            specs, parent, random.Random(i), resample_probability=0.0, perturb_factor=0.2
        )
        assert child["opt"] == "sgd" and child["const"] == 3
        assert child["n"] in (40, 60)
        assert child["x"] in (pytest.approx(7.6), 10.0)  # 9.5 * 1.2 clamps to the max
        assert child["lr"] in (pytest.approx(0.04), pytest.approx(0.06))
        seen_x.add(round(child["x"], 6))
    assert seen_x == {7.6, 10.0}


def test_explore_resamples_with_probability_one() -> None:
    specs = hp.flatten(HP)
    parent = {"x": 1.0, "n": 50, "lr": 0.05, "opt": "sgd", "const": 3}
    xs = {
        explore(specs, parent, random.Random(i), resample_probability=1.0, perturb_factor=0.2)["x"]
        for i in range(50)
    }
    assert len(xs) == 50 and all(-10 <= x <= 10 for x in xs)


def test_pbt_improves_the_population() -> None:
    method = make(population_size=10, num_rounds=8, truncate_fraction=0.3)
    sim = Simulator(method, order_seed=2).finish()
    first = sorted(abs(t.hparams["x"] - 2) for t in sim.created[:10])
    last = sorted(abs(t.hparams["x"] - 2) for t in sim.created if t.trained == 80)
    assert sum(last) / len(last) < sum(first) / len(first)
