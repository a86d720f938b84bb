"""Experiment config validation and normalization (master_server.config)."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
from typing import Any

import pytest

from determined_sdk.errors import InvalidArgumentError
from master_server.config import (
    ConfigError,
    normalize_length,
    parse_config_text,
    validate_experiment_config,
)

DELETE = object()


class Replace:
    """A patch value that replaces instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


BASE: dict[str, Any] = {
    "name": "mnist",
    "entrypoint": "python train.py",
    "hyperparameters": {
        "x": {"type": "double", "minval": 0.0, "maxval": 1.0},
        "optimizer": {"lr": {"type": "log", "minval": -4, "maxval": -1}, "name": "adam"},
    },
    "searcher": {"name": "random", "metric": "loss", "max_trials": 4, "max_length": 100},
    "reproducibility": {"experiment_seed": 7},
}

ASHA = {"name": "adaptive_asha", "metric": "loss", "max_trials": 8, "max_length": 64}
PBT = {
    "name": "pbt",
    "metric": "loss",
    "population_size": 4,
    "num_rounds": 3,
    "length_per_round": 10,
    "replace_function": {"truncate_fraction": 0.25},
    "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
}
OPTUNA = {"name": "optuna", "metric": "loss", "max_trials": 8}
GRID = {"name": "grid", "metric": "loss", "max_length": 10}


def patched(patch: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` deep-merged with ``patch`` (``DELETE`` removes a key; non-dicts replace)."""
    out = copy.deepcopy(BASE if base is None else base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Replace):
            out[key] = copy.deepcopy(value.value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def errors_of(raw: Any, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_experiment_config(raw, **kw)
    err = info.value
    assert isinstance(err, InvalidArgumentError)
    assert str(err) == "; ".join(err.errors)
    return err.errors


def searcher(section: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A whole searcher section replacing BASE's."""
    out = dict(section)
    for key, value in changes.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return {"searcher": Replace(out)}


BAD_CASES: list[tuple[str, dict[str, Any], str]] = [
    # (id, patch, expected start of one error: "<path>: <message prefix>")
    (
        "max_trials-negative",
        {"searcher": {"max_trials": -3}},
        "searcher.max_trials: must be a positive integer, got -3",
    ),
    (
        "max_trials-string",
        {"searcher": {"max_trials": "ten"}},
        'searcher.max_trials: must be a positive integer, got "ten"',
    ),
    (
        "max_trials-bool",
        {"searcher": {"max_trials": True}},
        "searcher.max_trials: must be a positive integer, got true",
    ),
    ("max_trials-missing", {"searcher": {"max_trials": DELETE}}, "searcher.max_trials: required"),
    ("searcher-missing", {"searcher": DELETE}, "searcher: required"),
    ("searcher-not-mapping", {"searcher": "random"}, "searcher: must be a mapping"),
    ("searcher-name-missing", {"searcher": {"name": DELETE}}, "searcher.name: required"),
    ("searcher-name-unknown", {"searcher": {"name": "bayes"}}, "searcher.name: must be one of"),
    ("metric-missing", {"searcher": {"metric": DELETE}}, "searcher.metric: required"),
    ("metric-number", {"searcher": {"metric": 3}}, "searcher.metric: must be a string"),
    ("metric-empty", {"searcher": {"metric": " "}}, "searcher.metric: must not be empty"),
    (
        "smaller_is_better",
        {"searcher": {"smaller_is_better": "yes"}},
        "searcher.smaller_is_better: must be true or false",
    ),
    (
        "max_concurrent",
        {"searcher": {"max_concurrent_trials": -1}},
        "searcher.max_concurrent_trials: must be a non-negative integer, got -1",
    ),
    ("max_length-zero", {"searcher": {"max_length": 0}}, "searcher.max_length: must be a positive"),
    (
        "max_length-unit",
        {"searcher": {"max_length": {"steps": 3}}},
        "searcher.max_length: must be a positive integer (batches) or a mapping",
    ),
    (
        "max_length-value",
        {"searcher": {"max_length": {"epochs": -1}}},
        "searcher.max_length.epochs: must be a positive integer",
    ),
    (
        "max_length-two-units",
        {"searcher": {"max_length": {"batches": 1, "epochs": 1}}},
        "searcher.max_length: must be",
    ),
    (
        "searcher-typo",
        {"searcher": {"max_trails": 3}},
        "searcher.max_trails: unknown key (did you mean 'max_trials'?)",
    ),
    (
        "searcher-other-searchers-key",
        {"searcher": {"num_reports": 3}},
        "searcher.num_reports: unknown key",
    ),
    (
        "time_metric-alone",
        {"searcher": {"time_metric": "t", "max_length": DELETE}},
        "searcher.max_time: required when time_metric is set",
    ),
    (
        "source_trial_id",
        {"searcher": {"source_trial_id": 0}},
        "searcher.source_trial_id: must be a positive integer",
    ),
    (
        "asha-no-length",
        searcher(ASHA, max_length=DELETE),
        "searcher.max_length: required (or time_metric + max_time)",
    ),
    (
        "asha-both-lengths",
        searcher(ASHA, time_metric="t", max_time=5),
        "searcher.max_length: give either max_length or time_metric + max_time",
    ),
    (
        "asha-max_time-alone",
        searcher(ASHA, max_length=DELETE, max_time=5),
        "searcher.time_metric: required when max_time is set",
    ),
    (
        "asha-max_time-zero",
        searcher(ASHA, max_length=DELETE, time_metric="t", max_time=0),
        "searcher.max_time: must be a positive integer",
    ),
    ("asha-divisor", searcher(ASHA, divisor=1), "searcher.divisor: must be a number > 1"),
    ("asha-mode", searcher(ASHA, mode="wild"), "searcher.mode: must be one of aggressive"),
    ("asha-max_rungs", searcher(ASHA, max_rungs=0), "searcher.max_rungs: must be a positive"),
    (
        "asha-bracket_rungs-item",
        searcher(ASHA, bracket_rungs=[3, 0]),
        "searcher.bracket_rungs[1]: must be a positive integer",
    ),
    (
        "asha-bracket_rungs-type",
        searcher(ASHA, bracket_rungs=3),
        "searcher.bracket_rungs: must be a non-empty list",
    ),
    ("pbt-population", searcher(PBT, population_size=DELETE), "searcher.population_size: required"),
    ("pbt-rounds", searcher(PBT, num_rounds=0), "searcher.num_rounds: must be a positive"),
    ("pbt-length", searcher(PBT, length_per_round=DELETE), "searcher.length_per_round: required"),
    (
        "pbt-truncate",
        searcher(PBT, replace_function={"truncate_fraction": 0.7}),
        "searcher.replace_function.truncate_fraction: must be in (0, 0.5]",
    ),
    (
        "pbt-replace-missing",
        searcher(PBT, replace_function=DELETE),
        "searcher.replace_function: required",
    ),
    (
        "pbt-perturb",
        searcher(PBT, explore_function={"resample_probability": 0.2, "perturb_factor": 1.0}),
        "searcher.explore_function.perturb_factor: must be in (0, 1)",
    ),
    (
        "pbt-resample",
        searcher(PBT, explore_function={"resample_probability": 2, "perturb_factor": 0.1}),
        "searcher.explore_function.resample_probability: must be in [0, 1]",
    ),
    (
        "pbt-explore-typo",
        searcher(
            PBT, explore_function={"resample_probability": 0.2, "perturb_factor": 0.1, "perturb": 1}
        ),
        "searcher.explore_function.perturb: unknown key",
    ),
    (
        "pbt-concurrency",
        searcher(PBT, max_concurrent_trials=2),
        "searcher.max_concurrent_trials: must be 0 (unlimited) or at least population_size (4)",
    ),
    ("optuna-sampler", searcher(OPTUNA, sampler="bohb"), "searcher.sampler: must be one of tpe"),
    ("optuna-pruner", searcher(OPTUNA, pruner="x"), "searcher.pruner: must be one of none"),
    (
        "optuna-sampler_args",
        searcher(OPTUNA, sampler_args="x"),
        "searcher.sampler_args: must be a mapping",
    ),
    (
        "optuna-sampler_args-seed",
        searcher(OPTUNA, sampler_args={"seed": 1}),
        "searcher.sampler_args.seed: set reproducibility.experiment_seed instead",
    ),
    (
        "optuna-sampler_args-bad",
        searcher(OPTUNA, sampler_args={"bogus": 1}),
        "searcher.sampler_args: rejected by optuna tpe",
    ),
    (
        "optuna-pruner_args-bad",
        searcher(OPTUNA, pruner="median", pruner_args={"bogus": 1}),
        "searcher.pruner_args: rejected by optuna median",
    ),
    (
        "optuna-num_reports",
        searcher(OPTUNA, num_reports=0),
        "searcher.num_reports: must be a positive integer",
    ),
    (
        "early-patience-zero",
        {"searcher": {"early_stopping": {"patience": 0}}},
        "searcher.early_stopping.patience: must be a positive integer, got 0",
    ),
    (
        "early-patience-missing",
        {"searcher": {"early_stopping": {}}},
        "searcher.early_stopping.patience: required",
    ),
    (
        "early-min_delta",
        {"searcher": {"early_stopping": {"patience": 2, "min_delta": -1}}},
        "searcher.early_stopping.min_delta: must be >= 0",
    ),
    (
        "early-typo",
        {"searcher": {"early_stopping": {"patience": 2, "patiense": 3}}},
        "searcher.early_stopping.patiense: unknown key (did you mean 'patience'?)",
    ),
    (
        "early-not-mapping",
        {"searcher": {"early_stopping": 3}},
        "searcher.early_stopping: must be a mapping",
    ),
    ("target", {"searcher": {"target": "high"}}, "searcher.target: must be a number"),
    ("target-nan", {"searcher": {"target": float("nan")}}, "searcher.target: must be a number"),
    (
        "custom-target",
        searcher({"name": "custom"}, target=0.1),
        "searcher.target: not supported by the custom searcher",
    ),
    ("grid-no-count", searcher(GRID), "hyperparameters.x.count: required by the grid searcher"),
    (
        "grid-nested-no-count",
        {
            **searcher(GRID),
            "hyperparameters": Replace(
                {
                    "x": {"type": "int", "minval": 1, "maxval": 3, "count": 2},
                    "opt": {"lr": {"type": "log", "minval": -4, "maxval": -1}},
                }
            ),
        },
        "hyperparameters.opt.lr.count: required by the grid searcher",
    ),
    (
        "grid-too-big",
        {
            **searcher(GRID),
            "hyperparameters": Replace(
                {
                    f"h{i}": {"type": "double", "minval": 0, "maxval": 1, "count": 10}
                    for i in range(7)
                }
            ),
        },
        "searcher: the grid has 10000000 points",
    ),
    ("hparams-not-mapping", {"hyperparameters": [1, 2]}, "hyperparameters: must be a mapping"),
    (
        "hp-type",
        {"hyperparameters": {"x": {"type": "float", "minval": 0, "maxval": 1}}},
        'hyperparameters.x.type: must be one of const, int, double, log, categorical, got "float"',
    ),
    (
        "hp-int-float",
        {"hyperparameters": {"x": {"type": "int", "minval": 1.5, "maxval": 3}}},
        "hyperparameters.x.minval: must be an integer, got 1.5",
    ),
    (
        "hp-int-order",
        {"hyperparameters": {"x": {"type": "int", "minval": 5, "maxval": 3}}},
        "hyperparameters.x.minval: must be <= maxval (3), got 5",
    ),
    (
        "hp-double-missing",
        {"hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": DELETE}}},
        "hyperparameters.x.maxval: required",
    ),
    (
        "hp-nested-bad",
        {"hyperparameters": {"optimizer": {"lr": {"type": "double", "minval": "a"}}}},
        'hyperparameters.optimizer.lr.minval: must be a number, got "a"',
    ),
    (
        "hp-log-base",
        {"hyperparameters": {"x": {"type": "log", "minval": 0, "maxval": 1, "base": 1}}},
        "hyperparameters.x.base: must be a positive number other than 1",
    ),
    (
        "hp-cat-empty",
        {"hyperparameters": {"x": {"type": "categorical", "vals": []}}},
        "hyperparameters.x.vals: must be a non-empty list",
    ),
    (
        "hp-cat-string",
        {"hyperparameters": {"x": {"type": "categorical", "vals": "abc"}}},
        "hyperparameters.x.vals: must be a non-empty list",
    ),
    (
        "hp-const-no-val",
        {"hyperparameters": {"x": {"type": "const"}}},
        "hyperparameters.x.val: required",
    ),
    (
        "hp-count",
        {"hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1, "count": 0}}},
        "hyperparameters.x.count: must be a positive integer, got 0",
    ),
    (
        "hp-spec-typo",
        {"hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1, "maxvall": 2}}},
        "hyperparameters.x.maxvall: unknown key (did you mean 'maxval'?)",
    ),
    (
        "hp-nan",
        {"hyperparameters": {"x": {"type": "double", "minval": float("nan"), "maxval": 1}}},
        "hyperparameters.x.minval: must be a number",
    ),
    ("entrypoint-missing", {"entrypoint": DELETE}, "entrypoint: required"),
    ("entrypoint-empty-list", {"entrypoint": []}, "entrypoint: must be a string or a non-empty"),
    ("entrypoint-list-items", {"entrypoint": ["python", 1]}, "entrypoint: must be a string"),
    ("entrypoint-blank", {"entrypoint": "  "}, "entrypoint: must not be empty"),
    ("name", {"name": 3}, "name: must be a string, got 3"),
    ("description", {"description": ["x"]}, "description: must be a string"),
    ("labels-type", {"labels": "a"}, "labels: must be a list of strings"),
    ("labels-item", {"labels": ["a", 1]}, "labels[1]: must be a string, got 1"),
    ("project", {"project": ""}, "project: must not be empty"),
    ("workspace", {"workspace": 5}, "workspace: must be a string"),
    (
        "slots",
        {"resources": {"slots_per_trial": 0}},
        "resources.slots_per_trial: must be a positive integer, got 0",
    ),
    ("max_slots", {"resources": {"max_slots": -1}}, "resources.max_slots: must be a positive"),
    (
        "resources-typo",
        {"resources": {"slots": 2}},
        "resources.slots: unknown key (did you mean 'max_slots'?)",
    ),
    ("resources-type", {"resources": "x"}, "resources: must be a mapping"),
    ("max_restarts", {"max_restarts": -1}, "max_restarts: must be a non-negative integer, got -1"),
    (
        "min_validation_period",
        {"min_validation_period": {"epochs": 0}},
        "min_validation_period.epochs: must be a positive integer, got 0",
    ),
    (
        "min_checkpoint_period",
        {"min_checkpoint_period": "x"},
        "min_checkpoint_period: must be a positive integer (batches)",
    ),
    (
        "storage-type",
        {"checkpoint_storage": {"type": "hdfs"}},
        'checkpoint_storage.type: must be one of shared_fs, directory, s3, gcs, azure, got "hdfs"',
    ),
    (
        "storage-s3-no-bucket",
        {"checkpoint_storage": {"type": "s3"}},
        "checkpoint_storage.bucket: required for s3 storage",
    ),
    (
        "storage-s3-secret",
        {"checkpoint_storage": {"type": "s3", "bucket": "b", "secret_key": "x"}},
        "checkpoint_storage.secret_key: credentials are never stored in a config",
    ),
    (
        "storage-s3-endpoint",
        {"checkpoint_storage": {"type": "s3", "bucket": "b", "endpoint_url": "localhost:9000"}},
        "checkpoint_storage.endpoint_url: must be an http:// or https:// URL",
    ),
    (
        "storage-s3-path",
        {"checkpoint_storage": {"type": "s3", "bucket": "b", "path": "/x"}},
        "checkpoint_storage.path: is for shared_fs storage, not s3",
    ),
    (
        "storage-fs-bucket",
        {"checkpoint_storage": {"type": "shared_fs", "bucket": "b"}},
        "checkpoint_storage.bucket: is for object storage",
    ),
    (
        "storage-azure-container",
        {"checkpoint_storage": {"type": "azure", "bucket": "b"}},
        "checkpoint_storage.container: required for azure storage",
    ),
    (
        "storage-save",
        {"checkpoint_storage": {"save_trial_best": -1}},
        "checkpoint_storage.save_trial_best: must be a non-negative integer",
    ),
    (
        "storage-unknown",
        {"checkpoint_storage": {"bukcet": "b"}},
        "checkpoint_storage.bukcet: unknown key",
    ),
    (
        "env-item",
        {"environment": {"environment_variables": ["A=1", "FOO"]}},
        'environment.environment_variables[1]: must be a "KEY=VALUE" string, got "FOO"',
    ),
    (
        "env-first-item",
        {"environment": {"environment_variables": ["FOO"]}},
        "environment.environment_variables[0]: must be",
    ),
    (
        "env-no-key",
        {"environment": {"environment_variables": ["=x"]}},
        "environment.environment_variables[0]: must be",
    ),
    (
        "env-string",
        {"environment": {"environment_variables": "A=1"}},
        "environment.environment_variables: must be a list",
    ),
    (
        "env-dict-value",
        {"environment": {"environment_variables": {"A": [1]}}},
        "environment.environment_variables.A: must be a string or number",
    ),
    ("environment-typo", {"environment": {"env_vars": []}}, "environment.env_vars: unknown key"),
    ("data", {"data": [1]}, "data: must be a mapping"),
    ("data-date", {"data": {"when": datetime.date(2024, 1, 1)}}, "data.when: must be a JSON value"),
    ("records_per_epoch", {"records_per_epoch": 0}, "records_per_epoch: must be a positive"),
    (
        "seed-negative",
        {"reproducibility": {"experiment_seed": -1}},
        "reproducibility.experiment_seed: must be a non-negative integer",
    ),
    (
        "seed-big",
        {"reproducibility": {"experiment_seed": 2**32}},
        "reproducibility.experiment_seed: must be < 2**32",
    ),
    ("seed-typo", {"reproducibility": {"seed": 1}}, "reproducibility.seed: unknown key"),
    (
        "top-level-typo",
        {"hyperparameter": {}},
        "hyperparameter: unknown top-level key (did you mean 'hyperparameters'?)",
    ),
    ("top-level-unknown", {"gpus": 2}, "gpus: unknown top-level key"),
    ("scheduling_unit", {"scheduling_unit": 0}, "scheduling_unit: must be a positive integer"),
]


@pytest.mark.parametrize(
    ("patch", "expected"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_config_error_names_the_field(patch: dict[str, Any], expected: str) -> None:
    errors = errors_of(patched(patch))
    assert any(e.startswith(expected) for e in errors), errors
    path = expected.split(":", 1)[0]
    assert all(":" in e for e in errors)
    assert path in str(errors)


def test_bad_cases_are_valid_without_their_patch() -> None:
    for section in (ASHA, PBT, OPTUNA):
        validate_experiment_config(patched({"searcher": Replace(section)}))
    assert validate_experiment_config(BASE)["searcher"]["max_trials"] == 4


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes installed")
def test_sampler_missing_package_is_reported() -> None:
    errors = errors_of(patched(searcher(OPTUNA, sampler="cmaes")))
    assert errors == ["searcher.sampler: the cmaes sampler needs the package(s) cmaes"]


def test_all_errors_are_collected_in_order() -> None:
    raw = patched(
        {
            "entrypoint": DELETE,
            "searcher": {"max_trials": -3, "max_lenght": 3},
            "hyperparameters": {"optimizer": {"lr": {"type": "double", "minval": "a"}}},
            "environment": {"environment_variables": ["FOO"]},
            "bogus": 1,
        }
    )
    errors = errors_of(raw)
    assert errors == [
        "bogus: unknown top-level key",
        "entrypoint: required (a command string or a list of strings)",
        'hyperparameters.optimizer.lr.minval: must be a number, got "a"',
        "searcher.max_lenght: unknown key (did you mean 'max_length'?)",
        "searcher.max_trials: must be a positive integer, got -3",
        'environment.environment_variables[0]: must be a "KEY=VALUE" string, got "FOO"',
    ]
    with pytest.raises(InvalidArgumentError, match=r"^bogus: unknown top-level key; entrypoint"):
        validate_experiment_config(raw)


# --- normalization ----------------------------------------------------------------------------


def test_normalized_shape_of_a_random_config() -> None:
    cfg = validate_experiment_config(BASE)
    assert cfg == {
        "name": "mnist",
        "description": "",
        "labels": [],
        "entrypoint": "python train.py",
        "project": None,
        "workspace": None,
        "hyperparameters": {
            "x": {"type": "double", "minval": 0.0, "maxval": 1.0, "count": None},
            "optimizer": {
                "lr": {"type": "log", "minval": -4.0, "maxval": -1.0, "base": 10.0, "count": None},
                "name": {"type": "const", "val": "adam"},
            },
        },
        "searcher": {
            "name": "random",
            "metric": "loss",
            "smaller_is_better": True,
            "max_trials": 4,
            "max_concurrent_trials": 16,
            "max_length": {"unit": "batches", "value": 100},
            "time_metric": None,
            "max_time": None,
            "source_trial_id": None,
            "source_checkpoint_uuid": None,
            "early_stopping": None,
            "target": None,
        },
        "resources": {"slots_per_trial": 1, "max_slots": None},
        "max_restarts": 5,
        "min_validation_period": None,
        "min_checkpoint_period": None,
        "checkpoint_storage": {
            "type": "shared_fs",
            "path": None,
            "host_path": None,
            "storage_path": None,
            "save_experiment_best": 0,
            "save_trial_best": 1,
            "save_trial_latest": 1,
        },
        "environment": {"environment_variables": {}},
        "data": {},
        "records_per_epoch": None,
        "reproducibility": {"experiment_seed": 7},
    }
    json.dumps(cfg, allow_nan=False)


RICH = """
name: rich
description: every section
labels: [a, b]
entrypoint: [python, train.py, --fast]
project: p
workspace: w
hyperparameters:
  lr: {type: log, minval: -4, maxval: -1, base: 2, count: 3}
  layers: [64, 64]
  nothing: null
  n: {type: int, minval: 1.0, maxval: 4, count: 2}
  opt:
    name: {type: categorical, vals: [adam, {sgd: {momentum: 0.9}}]}
    inner: {deeper: {type: const, val: {a: 1}}}
searcher:
  name: adaptive_asha
  metric: acc
  smaller_is_better: false
  max_trials: 10
  time_metric: batches
  max_time: 1000
  mode: aggressive
  stop_once: true
  early_stopping: {patience: 3}
  target: 0.99
resources: {slots_per_trial: 2, max_slots: 4, resource_pool: default}
max_restarts: 0
min_validation_period: {epochs: 1}
min_checkpoint_period: 500
checkpoint_storage:
  type: shared_fs
  host_path: /tmp/ckpt/
  storage_path: det
  save_experiment_best: 2
environment:
  environment_variables: {A: 1, B: true, C: x=y}
  image: ignored/image
data: {url: "s3://x", n: 3}
records_per_epoch: 60000
reproducibility: {experiment_seed: 1}
scheduling_unit: 50
bind_mounts: []
profiling: {enabled: false}
"""


def test_rich_config_normalizes() -> None:
    cfg = validate_experiment_config(RICH)
    hp = cfg["hyperparameters"]
    assert hp["lr"] == {"type": "log", "minval": -4.0, "maxval": -1.0, "base": 2.0, "count": 3}
    assert hp["layers"] == {"type": "const", "val": [64, 64]}
    assert hp["nothing"] == {"type": "const", "val": None}
    assert hp["n"] == {"type": "int", "minval": 1, "maxval": 4, "count": 2}
    assert hp["opt"]["inner"]["deeper"] == {"type": "const", "val": {"a": 1}}
    s = cfg["searcher"]
    assert s["max_length"] is None and s["time_metric"] == "batches" and s["max_time"] == 1000
    assert (s["max_rungs"], s["divisor"], s["mode"], s["bracket_rungs"]) == (
        5,
        4.0,
        "aggressive",
        None,
    )
    assert s["early_stopping"] == {"patience": 3, "min_delta": 0.0}
    assert s["target"] == 0.99 and s["smaller_is_better"] is False
    assert cfg["entrypoint"] == ["python", "train.py", "--fast"]
    assert cfg["resources"] == {"slots_per_trial": 2, "max_slots": 4, "resource_pool": "default"}
    assert cfg["min_validation_period"] == {"unit": "epochs", "value": 1}
    assert cfg["min_checkpoint_period"] == {"unit": "batches", "value": 500}
    assert cfg["checkpoint_storage"]["path"] == "/tmp/ckpt/det"
    assert cfg["checkpoint_storage"]["save_experiment_best"] == 2
    assert cfg["environment"] == {
        "environment_variables": {"A": "1", "B": "true", "C": "x=y"},
        "image": "ignored/image",
    }
    assert cfg["scheduling_unit"] == 50 and cfg["bind_mounts"] == []
    assert cfg["profiling"] == {"enabled": False}


@pytest.mark.parametrize("text", [RICH, json.dumps(BASE)])
def test_normalizing_twice_changes_nothing(text: str) -> None:
    once = validate_experiment_config(text)
    assert validate_experiment_config(once) == once
    assert validate_experiment_config(json.loads(json.dumps(once))) == once


def test_input_dict_is_not_modified() -> None:
    raw = copy.deepcopy(BASE)
    validate_experiment_config(raw)
    assert raw == BASE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (100, {"unit": "batches", "value": 100}),
        (100.0, {"unit": "batches", "value": 100}),
        ({"batches": 5}, {"unit": "batches", "value": 5}),
        ({"records": 640}, {"unit": "records", "value": 640}),
        ({"epochs": 2}, {"unit": "epochs", "value": 2}),
        ({"unit": "epochs", "value": 3}, {"unit": "epochs", "value": 3}),
    ],
)
def test_length_forms(raw: Any, expected: dict[str, Any]) -> None:
    assert normalize_length(raw, "x") == expected
    cfg = validate_experiment_config(patched({"searcher": {"max_length": raw}}))
    assert cfg["searcher"]["max_length"] == expected


def test_bad_length_raises_with_path() -> None:
    with pytest.raises(ConfigError, match=r"^searcher\.max_length\.unit: must be one of"):
        normalize_length({"unit": "steps", "value": 3}, "searcher.max_length")


def test_env_var_list_and_dict_forms() -> None:
    listed = validate_experiment_config(
        patched({"environment": {"environment_variables": ["A=1", "B=", "C=x=y"]}})
    )
    assert listed["environment"]["environment_variables"] == {"A": "1", "B": "", "C": "x=y"}
    mapped = validate_experiment_config(
        patched({"environment": {"environment_variables": {"A": 1, "B": 2.5}}})
    )
    assert mapped["environment"]["environment_variables"] == {"A": "1", "B": "2.5"}


def test_checkpoint_storage_paths() -> None:
    given = validate_experiment_config(patched({"checkpoint_storage": {"path": "/data/ck"}}))
    assert given["checkpoint_storage"]["path"] == "/data/ck"
    directory = validate_experiment_config(
        patched({"checkpoint_storage": {"type": "directory", "container_path": "/ck"}})
    )
    assert directory["checkpoint_storage"]["type"] == "directory"
    assert directory["checkpoint_storage"]["path"] == "/ck"
    host = validate_experiment_config(patched({"checkpoint_storage": {"host_path": "/h"}}))
    assert host["checkpoint_storage"]["path"] == "/h"


def test_experiment_seed_defaults_to_a_concrete_int() -> None:
    cfg = validate_experiment_config(patched({"reproducibility": DELETE}))
    seed = cfg["reproducibility"]["experiment_seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert validate_experiment_config(cfg)["reproducibility"]["experiment_seed"] == seed


def test_searcher_defaults_by_name() -> None:
    asha = validate_experiment_config(patched(searcher(ASHA)))["searcher"]
    assert (asha["max_rungs"], asha["divisor"], asha["mode"], asha["max_concurrent_trials"]) == (
        5,
        4.0,
        "standard",
        16,
    )
    opt = validate_experiment_config(patched(searcher(OPTUNA)))["searcher"]
    assert (opt["sampler"], opt["pruner"], opt["num_reports"], opt["sampler_args"]) == (
        "tpe",
        "none",
        1,
        {},
    )
    pruned = validate_experiment_config(patched(searcher(OPTUNA, pruner="hyperband")))["searcher"]
    assert pruned["num_reports"] == 4
    pbt = validate_experiment_config(patched(searcher(PBT)))["searcher"]
    assert pbt["length_per_round"] == {"unit": "batches", "value": 10}
    assert pbt["max_concurrent_trials"] == 0
    assert pbt["replace_function"] == {"truncate_fraction": 0.25}
    grid = validate_experiment_config(
        patched(
            {
                **searcher(GRID),
                "hyperparameters": Replace({"c": {"type": "categorical", "vals": [1, 2]}}),
            }
        )
    )
    assert grid["searcher"]["max_concurrent_trials"] == 16
    custom = validate_experiment_config(patched(searcher({"name": "custom"})))["searcher"]
    assert custom["metric"] is None


def test_unmanaged_needs_no_entrypoint_nor_searcher() -> None:
    cfg = validate_experiment_config({"name": "by hand"}, unmanaged=True)
    assert cfg["entrypoint"] is None
    assert cfg["searcher"]["name"] == "single" and cfg["searcher"]["metric"] is None
    assert cfg["searcher"]["max_length"] is None
    errors = errors_of({"name": "by hand"})
    assert errors == [
        "entrypoint: required (a command string or a list of strings)",
        "searcher: required",
    ]
    # An explicit searcher is still checked.
    assert errors_of({"searcher": {"name": "random"}}, unmanaged=True) == [
        "searcher.metric: required",
        "searcher.max_trials: required",
    ]


# --- text -------------------------------------------------------------------------------------


def test_parse_config_text() -> None:
    assert parse_config_text("a: 1\nb: [1, 2]\n") == {"a": 1, "b": [1, 2]}
    assert parse_config_text('{"a":\t1}') == {"a": 1}  # JSON with a tab (not YAML-safe)
    assert parse_config_text(b"a: 1") == {"a": 1}
    assert parse_config_text("") == {}
    with pytest.raises(ConfigError, match=r"^config: must be a mapping at the top level"):
        parse_config_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"^config: invalid YAML"):
        parse_config_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^config: not UTF-8"):
        parse_config_text(b"\xff\xfe")


def test_validate_accepts_yaml_text_and_rejects_other_types() -> None:
    cfg = validate_experiment_config(
        "entrypoint: x\nsearcher: {name: single, metric: loss, max_length: 5}\n"
    )
    assert cfg["searcher"]["max_length"] == {"unit": "batches", "value": 5}
    with pytest.raises(ConfigError, match=r"^config: must be a mapping or YAML text"):
        validate_experiment_config(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^searcher\.name: required"):
        validate_experiment_config("entrypoint: x\nsearcher: {metric: loss}\n")


def test_non_string_keys_are_reported() -> None:
    errors = errors_of(patched({"data": {1: "a"}}))
    assert errors[0].startswith("data: keys must be strings")
