"""make_search_method from normalized configs, and the custom (driver-led) search method."""

from __future__ import annotations

import json
from typing import Any

import pytest

from determined_sdk.errors import InvalidArgumentError
from master_server.config import validate_experiment_config
from master_server.searcher.asha import AdaptiveASHASearch
from master_server.searcher.base import Create, ExitedReason, Shutdown, Stop, ValidateAfter
from master_server.searcher.custom import (
    CustomSearchMethod,
    action_from_json,
    action_to_json,
)
from master_server.searcher.early_stopping import EarlyStoppingSearchMethod
from master_server.searcher.factory import (
    make_search_method,
    searcher_length_unit,
    searcher_time_metric,
)
from master_server.searcher.optuna_search import OptunaSearch
from master_server.searcher.pbt import PBTSearch
from master_server.searcher.simple import GridSearch, RandomSearch, SingleSearch
from tests.master_server.searcher.sim_harness import Simulator


def config(searcher: dict[str, Any], **extra: Any) -> dict[str, Any]:
    raw = {
        "entrypoint": "python train.py",
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1, "count": 2}},
        "searcher": {"metric": "loss", **searcher},
        "reproducibility": {"experiment_seed": 9},
        **extra,
    }
    return validate_experiment_config(raw)


PBT = {
    "name": "pbt",
    "population_size": 4,
    "num_rounds": 2,
    "length_per_round": {"epochs": 1},
    "replace_function": {"truncate_fraction": 0.25},
    "explore_function": {"resample_probability": 0.1, "perturb_factor": 0.2},
}


@pytest.mark.parametrize(
    ("searcher", "cls"),
    [
        ({"name": "single", "max_length": 5}, SingleSearch),
        ({"name": "random", "max_trials": 3}, RandomSearch),
        ({"name": "grid"}, GridSearch),
        ({"name": "adaptive_asha", "max_trials": 3, "max_length": 10}, AdaptiveASHASearch),
        (PBT, PBTSearch),
        ({"name": "optuna", "max_trials": 3}, OptunaSearch),
        ({"name": "custom"}, CustomSearchMethod),
    ],
)
def test_factory_builds_each_searcher(searcher: dict[str, Any], cls: type) -> None:
    assert type(make_search_method(config(searcher))) is cls


def test_factory_wraps_early_stopping_and_target() -> None:
    method = make_search_method(
        config({"name": "random", "max_trials": 3, "early_stopping": {"patience": 2}})
    )
    assert isinstance(method, EarlyStoppingSearchMethod)
    assert isinstance(method.inner, RandomSearch)
    method = make_search_method(config({"name": "single", "target": 0.1}))
    assert isinstance(method, EarlyStoppingSearchMethod)


def test_factory_rejects_a_config_without_searcher() -> None:
    with pytest.raises(InvalidArgumentError, match="searcher"):
        make_search_method({"searcher": None, "reproducibility": {"experiment_seed": 1}})


def test_length_helpers() -> None:
    assert searcher_length_unit(config({"name": "single", "max_length": {"epochs": 2}})) == (
        "epochs"
    )
    assert searcher_length_unit(config(PBT)) == "epochs"
    metrics = config(
        {"name": "adaptive_asha", "max_trials": 3, "time_metric": "batches", "max_time": 9}
    )
    assert searcher_length_unit(metrics) is None
    assert searcher_time_metric(metrics) == "batches"
    assert searcher_time_metric(config({"name": "random", "max_trials": 2})) is None


def test_factory_search_runs_from_yaml_to_the_end() -> None:
    cfg = validate_experiment_config(
        """
        entrypoint: python train.py
        hyperparameters:
          x: {type: double, minval: -10, maxval: 10}
        searcher:
          name: adaptive_asha
          metric: loss
          max_trials: 16
          max_length: {batches: 64}
          max_rungs: 3
        reproducibility: {experiment_seed: 3}
        """
    )
    sim = Simulator(make_search_method(cfg), max_concurrent=16).finish()
    assert len(sim.created) == 16


# --- custom ---------------------------------------------------------------------------------


def test_custom_records_events_and_returns_pushed_actions() -> None:
    method = CustomSearchMethod()
    assert method.initial_operations() == []
    assert method.pop_events() == [{"type": "initial_operations", "id": 1}]
    method.push_actions(
        [
            {"type": "create", "request_id": "a", "hparams": {"x": 1}},
            {"type": "validate_after", "request_id": "a", "length": 10},
        ]
    )
    assert method.pending_actions() == [Create("a", {"x": 1}), ValidateAfter("a", 10)]
    assert method.pending_actions() == []
    assert method.on_trial_created("a") == []
    method.on_trial_progress("a", 3.0)
    method.on_trial_progress("a", 6.0)  # coalesced
    method.push_actions([Stop("a")])
    assert method.on_validation_completed("a", 0.5, 10) == [Stop("a")]
    events = method.pop_events()
    assert [e["type"] for e in events] == ["trial_created", "trial_progress", "validation"]
    assert events[1]["length_done"] == 6.0
    assert events[2] == {
        "type": "validation",
        "request_id": "a",
        "metric": 0.5,
        "length": 10,
        "id": 4,
    }
    method.set_progress(0.5)
    assert method.progress() == 0.5
    method.push_actions([Create("b", {"x": 2}, checkpoint_from="a"), Shutdown()])
    out = method.on_trial_exited_early("a", ExitedReason.ERRORED)
    assert out == [Create("b", {"x": 2}, checkpoint_from="a"), Shutdown()]
    assert method.progress() == 1.0
    assert method.pop_events()[0]["reason"] == "ERRORED"


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (
            [{"type": "create", "request_id": "a"}, {"type": "create", "request_id": "a"}],
            r"actions\[1\]\.request_id: 'a' was already created",
        ),
        ([{"type": "stop", "request_id": "zz"}], r"actions\[0\]\.request_id: unknown"),
        (
            [{"type": "create", "request_id": "b", "checkpoint_from": "q"}],
            r"actions\[0\]\.checkpoint_from",
        ),
        ([{"type": "shutdown"}, {"type": "create", "request_id": "c"}], "already shut down"),
        ([{"type": "explode"}], r"action\.type"),
        ([{"type": "validate_after", "request_id": "a", "length": 0}], r"action\.length"),
        ([{"type": "stop"}], r"action\.request_id: required"),
    ],
)
def test_custom_rejects_bad_pushes_atomically(actions: list[dict], match: str) -> None:
    method = CustomSearchMethod()
    with pytest.raises(InvalidArgumentError, match=match):
        method.push_actions(actions)
    assert method.pending_actions() == []


def test_custom_snapshot_round_trip() -> None:
    method = CustomSearchMethod()
    method.initial_operations()
    method.push_actions([Create("a", {"x": 1}), ValidateAfter("a", 5)])
    state = json.loads(json.dumps(method.snapshot()))
    fresh = CustomSearchMethod()
    fresh.restore(state)
    assert fresh.pending_actions() == [Create("a", {"x": 1}), ValidateAfter("a", 5)]
    assert fresh.pop_events() == [{"type": "initial_operations", "id": 1}]
    with pytest.raises(InvalidArgumentError):
        fresh.push_actions([Create("a", {})])  # still known after restore


def test_action_json_round_trip() -> None:
    for action in (
        Create("a", {"x": [1, 2]}, checkpoint_from="b"),
        ValidateAfter("a", 3),
        Stop("a"),
        Shutdown(True, "why"),
    ):
        assert action_from_json(json.loads(json.dumps(action_to_json(action)))) == action
