"""Build the search method for a normalized experiment config.

The master calls :func:`make_search_method` with the config returned by
:func:`master_server.config.validate_experiment_config` (both at experiment creation and after a
restart, before ``restore``). :func:`searcher_length_unit` and :func:`searcher_time_metric` tell
the service how to read lengths: in the op style ``ValidateAfter.length`` is in
``searcher_length_unit(config)`` units; in the metrics-only style the service passes the value
of the validation metric ``searcher_time_metric(config)`` as ``length`` to
``on_validation_completed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from determined_sdk.errors import InvalidArgumentError
from master_server.searcher.asha import AdaptiveASHASearch
from master_server.searcher.base import SearchMethod
from master_server.searcher.custom import CustomSearchMethod
from master_server.searcher.early_stopping import EarlyStoppingSearchMethod
from master_server.searcher.pbt import PBTSearch
from master_server.searcher.simple import GridSearch, RandomSearch, SingleSearch


def _value(length: Any) -> int | None:
    return None if length is None else int(length["value"])


def searcher_length_unit(config: Mapping[str, Any]) -> str | None:
    """``"batches"``, ``"records"`` or ``"epochs"`` for op-style lengths; None when the searcher
    gives no lengths (metrics-only style, custom, or no ``max_length``)."""
    searcher = config["searcher"]
    for key in ("max_length", "length_per_round"):
        length = searcher.get(key)
        if length is not None:
            return str(length["unit"])
    return None


def searcher_time_metric(config: Mapping[str, Any]) -> str | None:
    """The validation metric whose value is a trial's length (metrics-only style), or None."""
    metric = config["searcher"].get("time_metric")
    return None if metric is None else str(metric)


def make_search_method(config: Mapping[str, Any]) -> SearchMethod:
    """The search method for a normalized config, wrapped with early stopping / target.

    Args:
        config: a config returned by :func:`master_server.config.validate_experiment_config`.

    Returns:
        A fresh :class:`~master_server.searcher.base.SearchMethod` (call ``restore`` on it to
        continue a persisted search).

    Raises:
        InvalidArgumentError: the config has no usable searcher section.
    """
    searcher = config.get("searcher")
    if not isinstance(searcher, Mapping):
        raise InvalidArgumentError("searcher: required")
    hparams = config.get("hyperparameters") or {}
    seed = int(config["reproducibility"]["experiment_seed"])
    name = searcher["name"]
    smaller = bool(searcher.get("smaller_is_better", True))
    method: SearchMethod
    if name == "single":
        method = SingleSearch(
            hparams,
            seed=seed,
            max_length=_value(searcher.get("max_length")),
            max_time=searcher.get("max_time"),
        )
    elif name == "random":
        method = RandomSearch(
            hparams,
            seed=seed,
            max_trials=searcher["max_trials"],
            max_concurrent_trials=searcher["max_concurrent_trials"],
            max_length=_value(searcher.get("max_length")),
            max_time=searcher.get("max_time"),
        )
    elif name == "grid":
        method = GridSearch(
            hparams,
            seed=seed,
            max_concurrent_trials=searcher["max_concurrent_trials"],
            max_length=_value(searcher.get("max_length")),
            max_time=searcher.get("max_time"),
        )
    elif name == "adaptive_asha":
        method = AdaptiveASHASearch(
            hparams,
            seed=seed,
            max_trials=searcher["max_trials"],
            max_length=_value(searcher.get("max_length")),
            max_time=searcher.get("max_time"),
            max_rungs=searcher["max_rungs"],
            divisor=searcher["divisor"],
            mode=searcher["mode"],
            bracket_rungs=searcher.get("bracket_rungs"),
            max_concurrent_trials=searcher["max_concurrent_trials"],
            smaller_is_better=smaller,
        )
    elif name == "pbt":
        method = PBTSearch(
            hparams,
            seed=seed,
            population_size=searcher["population_size"],
            num_rounds=searcher["num_rounds"],
            length_per_round=int(searcher["length_per_round"]["value"]),
            truncate_fraction=searcher["replace_function"]["truncate_fraction"],
            resample_probability=searcher["explore_function"]["resample_probability"],
            perturb_factor=searcher["explore_function"]["perturb_factor"],
            max_concurrent_trials=searcher["max_concurrent_trials"],
            smaller_is_better=smaller,
        )
    elif name == "optuna":
        from master_server.searcher.optuna_search import OptunaSearch

        method = OptunaSearch(
            hparams,
            seed=seed,
            max_trials=searcher["max_trials"],
            max_concurrent_trials=searcher["max_concurrent_trials"],
            smaller_is_better=smaller,
            sampler=searcher["sampler"],
            sampler_args=searcher["sampler_args"],
            pruner=searcher["pruner"],
            pruner_args=searcher["pruner_args"],
            max_length=_value(searcher.get("max_length")),
            max_time=searcher.get("max_time"),
            num_reports=searcher["num_reports"],
        )
    elif name == "custom":
        method = CustomSearchMethod()
    else:
        raise InvalidArgumentError(f"searcher.name: unknown searcher {name!r}")

    early = searcher.get("early_stopping")
    target = searcher.get("target")
    if early is not None or target is not None:
        method = EarlyStoppingSearchMethod(
            method,
            smaller_is_better=smaller,
            patience=None if early is None else int(early["patience"]),
            min_delta=0.0 if early is None else float(early.get("min_delta") or 0.0),
            target=None if target is None else float(target),
        )
    return method
