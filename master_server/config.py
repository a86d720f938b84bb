"""Validation and normalization of experiment configs (Determined-compatible YAML or dict).

:func:`validate_experiment_config` takes what a user submitted (YAML or JSON text, or a dict) and
returns a *normalized* config: every section present, defaults filled, lengths as
``{"unit": ..., "value": ...}``, hyperparameters as spec dicts, environment variables as a
``dict[str, str]`` and a concrete ``reproducibility.experiment_seed``. Normalizing a normalized
config again gives the same config, so the master may re-validate what it stored.

Every problem is collected before anything is raised; the :class:`ConfigError` (an
:class:`~determined_sdk.errors.InvalidArgumentError`) lists them joined by ``"; "``, each one
starting with the field path, e.g. ``searcher.max_trials: must be a positive integer, got -3``.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import yaml

from determined_sdk import checkpoint_storage
from determined_sdk.errors import InvalidArgumentError
from master_server.limits import check_value, load_yaml, loads_json

JSONDict = dict[str, Any]

#: Searcher names this master knows.
SEARCHER_NAMES = ("single", "grid", "random", "adaptive_asha", "pbt", "optuna", "custom")
#: Units a length may be given in.
LENGTH_UNITS = ("batches", "records", "epochs")
#: Hyperparameter spec types.
HPARAM_TYPES = ("const", "int", "double", "log", "categorical")
#: Optuna samplers and pruners selectable by name.
OPTUNA_SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
OPTUNA_PRUNERS = ("none", "median", "hyperband", "successive_halving")
ASHA_MODES = ("aggressive", "standard", "conservative")
CHECKPOINT_STORAGE_TYPES = checkpoint_storage.STORAGE_TYPES
#: The grid searcher refuses grids larger than this.
MAX_GRID_POINTS = 1_000_000

_TOP_LEVEL_KEYS = (
    "name",
    "description",
    "labels",
    "entrypoint",
    "project",
    "workspace",
    "hyperparameters",
    "searcher",
    "resources",
    "max_restarts",
    "max_idle",
    "min_validation_period",
    "min_checkpoint_period",
    "checkpoint_storage",
    "environment",
    "data",
    "records_per_epoch",
    "reproducibility",
    "scheduling_unit",
)
# Accepted for compatibility with Determined configs and passed through untouched.
_IGNORED_TOP_LEVEL_KEYS = (
    "bind_mounts",
    "optimizations",
    "profiling",
    "perform_initial_validation",
)

_SEARCHER_COMMON_KEYS = (
    "name",
    "metric",
    "smaller_is_better",
    "source_trial_id",
    "source_checkpoint_uuid",
    "early_stopping",
    "target",
)
_LENGTH_STYLE_KEYS = ("max_length", "time_metric", "max_time")
_SEARCHER_KEYS: dict[str, tuple[str, ...]] = {
    "single": _LENGTH_STYLE_KEYS,
    "random": ("max_trials", "max_concurrent_trials", *_LENGTH_STYLE_KEYS),
    "grid": ("max_concurrent_trials", *_LENGTH_STYLE_KEYS),
    "adaptive_asha": (
        "max_trials",
        "max_rungs",
        "divisor",
        "mode",
        "max_concurrent_trials",
        "bracket_rungs",
        "stop_once",
        *_LENGTH_STYLE_KEYS,
    ),
    "pbt": (
        "population_size",
        "num_rounds",
        "length_per_round",
        "replace_function",
        "explore_function",
        "max_concurrent_trials",
    ),
    "optuna": (
        "sampler",
        "sampler_args",
        "pruner",
        "pruner_args",
        "max_trials",
        "max_concurrent_trials",
        "num_reports",
        *_LENGTH_STYLE_KEYS,
    ),
    "custom": (),
}
_RESOURCES_KEYS = ("slots_per_trial", "max_slots")
# Determined resource keys accepted and passed through (no effect on the local scheduler).
_RESOURCES_PASSTHROUGH = (
    "resource_pool",
    "priority",
    "weight",
    "shm_size",
    "devices",
    "is_single_node",
)
_CHECKPOINT_KEYS = (
    "type",
    "host_path",
    "storage_path",
    "container_path",
    "path",
    "propagation",
    "save_experiment_best",
    "save_trial_best",
    "save_trial_latest",
    # Object stores (determined_sdk.checkpoint_storage); secrets are named only to be refused.
    "bucket",
    "container",
    "prefix",
    "endpoint_url",
    "account_name",
    *checkpoint_storage.SECRET_KEYS,
)
_ENVIRONMENT_KEYS = ("environment_variables",)
_ENVIRONMENT_PASSTHROUGH = (
    "image",
    "force_pull_image",
    "pod_spec",
    "registry_auth",
    "add_capabilities",
    "drop_capabilities",
    "proxy_ports",
    "ports",
)


class ConfigError(InvalidArgumentError):
    """An invalid experiment config; ``errors`` lists every problem as ``"path: message"``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


class _Errors:
    """Collects ``path: message`` problems while a config is walked."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    """A short rendering of a user value for error messages (JSON-like, truncated)."""
    try:
        text = json.dumps(value, allow_nan=True, default=repr)
    except (TypeError, ValueError):  # pragma: no cover - default=repr covers most values
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_keys(
    section: Mapping[Any, Any],
    allowed: tuple[str, ...],
    path: str,
    errs: _Errors,
    what: str = "key",
) -> None:
    for key in section:
        if not isinstance(key, str):
            errs.add(path or "config", f"keys must be strings, got {_show(key)}")
            continue
        if key in allowed:
            continue
        hint = difflib.get_close_matches(key, allowed, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        errs.add(_join(path, key), f"unknown {what}{suffix}")


def _check_jsonable(value: Any, path: str, errs: _Errors) -> None:
    """Reports values that cannot be stored as JSON (YAML dates, sets, ...)."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        return  # NaN/inf are rejected by the fields that take numbers
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_jsonable(item, f"{path}[{i}]", errs)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                _check_jsonable(item, _join(path, key), errs)
            else:
                errs.add(path or "config", f"keys must be strings, got {_show(key)}")
        return
    errs.add(path, f"must be a JSON value (string, number, bool, list, mapping), got {value!r}")


# --- scalar readers ---------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is one (bools excluded; integral floats accepted)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _as_number(value: Any) -> float | None:
    """``value`` as a finite float if it is a number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _read_int(
    section: Mapping[str, Any],
    key: str,
    path: str,
    errs: _Errors,
    *,
    default: int | None = None,
    minimum: int = 1,
    required: bool = False,
) -> int | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), "required")
        return default
    value = _as_int(raw)
    if value is None or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        errs.add(_join(path, key), f"must be {what}, got {_show(raw)}")
        return default
    return value


def _read_number(
    section: Mapping[str, Any],
    key: str,
    path: str,
    errs: _Errors,
    *,
    default: float | None = None,
    required: bool = False,
) -> float | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), "required")
        return default
    value = _as_number(raw)
    if value is None:
        errs.add(_join(path, key), f"must be a number, got {_show(raw)}")
        return default
    return value


def _read_str(
    section: Mapping[str, Any],
    key: str,
    path: str,
    errs: _Errors,
    *,
    default: str | None = None,
    required: bool = False,
    non_empty: bool = False,
) -> str | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), "required")
        return default
    if not isinstance(raw, str):
        errs.add(_join(path, key), f"must be a string, got {_show(raw)}")
        return default
    if non_empty and not raw.strip():
        errs.add(_join(path, key), "must not be empty")
        return default
    return raw


def _read_bool(
    section: Mapping[str, Any], key: str, path: str, errs: _Errors, *, default: bool
) -> bool:
    raw = section.get(key)
    if raw is None:
        return default
    if not isinstance(raw, bool):
        errs.add(_join(path, key), f"must be true or false, got {_show(raw)}")
        return default
    return raw


def _read_choice(
    section: Mapping[str, Any],
    key: str,
    path: str,
    errs: _Errors,
    choices: tuple[str, ...],
    *,
    default: str | None = None,
    required: bool = False,
) -> str | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), f"required (one of {', '.join(choices)})")
        return default
    if raw not in choices:
        errs.add(_join(path, key), f"must be one of {', '.join(choices)}, got {_show(raw)}")
        return default
    return str(raw)


def _read_mapping(
    section: Mapping[str, Any], key: str, path: str, errs: _Errors, *, required: bool = False
) -> Mapping[str, Any] | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), "required")
        return None
    if not isinstance(raw, Mapping):
        errs.add(_join(path, key), f"must be a mapping, got {_show(raw)}")
        return None
    return raw


# --- lengths ----------------------------------------------------------------------------------


def normalize_length(raw: Any, path: str, errs: _Errors | None = None) -> JSONDict | None:
    """Normalize a length to ``{"unit": "batches"|"records"|"epochs", "value": int}``.

    Accepted forms: a positive int (batches), ``{"batches": n}``, ``{"records": n}``,
    ``{"epochs": n}``, or the normalized form itself. Returns None (after recording an error in
    ``errs``, or raising :class:`ConfigError` when ``errs`` is None) for a bad value.
    """
    own = errs is None
    sink = _Errors() if errs is None else errs
    out: JSONDict | None = None
    bad = (
        f"must be a positive integer (batches) or a mapping with exactly one of "
        f"{', '.join(LENGTH_UNITS)}, got {_show(raw)}"
    )
    if isinstance(raw, Mapping):
        if set(raw) == {"unit", "value"}:
            unit, value = raw["unit"], _as_int(raw["value"])
            if unit not in LENGTH_UNITS:
                sink.add(
                    _join(path, "unit"),
                    f"must be one of {', '.join(LENGTH_UNITS)}, got {_show(unit)}",
                )
            elif value is None or value < 1:
                sink.add(
                    _join(path, "value"), f"must be a positive integer, got {_show(raw['value'])}"
                )
            else:
                out = {"unit": unit, "value": value}
        elif len(raw) == 1 and next(iter(raw)) in LENGTH_UNITS:
            unit = next(iter(raw))
            value = _as_int(raw[unit])
            if value is None or value < 1:
                sink.add(_join(path, unit), f"must be a positive integer, got {_show(raw[unit])}")
            else:
                out = {"unit": unit, "value": value}
        else:
            sink.add(path, bad)
    else:
        value = _as_int(raw)
        if value is None or value < 1:
            sink.add(path, bad)
        else:
            out = {"unit": "batches", "value": value}
    if own and sink.items:
        raise ConfigError(sink.items)
    return out


def _read_length(
    section: Mapping[str, Any], key: str, path: str, errs: _Errors, *, required: bool = False
) -> JSONDict | None:
    raw = section.get(key)
    if raw is None:
        if required:
            errs.add(_join(path, key), "required")
        return None
    return normalize_length(raw, _join(path, key), errs)


# --- hyperparameters --------------------------------------------------------------------------

_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "const": ("type", "val"),
    "int": ("type", "minval", "maxval", "count"),
    "double": ("type", "minval", "maxval", "count"),
    "log": ("type", "minval", "maxval", "base", "count"),
    "categorical": ("type", "vals"),
}


def _normalize_spec(raw: Mapping[str, Any], path: str, errs: _Errors) -> JSONDict | None:
    kind = raw.get("type")
    if kind not in HPARAM_TYPES:
        errs.add(
            _join(path, "type"), f"must be one of {', '.join(HPARAM_TYPES)}, got {_show(kind)}"
        )
        return None
    _check_keys(raw, _SPEC_KEYS[kind], path, errs)
    n_before = len(errs.items)
    if kind == "const":
        if "val" not in raw:
            errs.add(_join(path, "val"), "required")
            return None
        return {"type": "const", "val": copy.deepcopy(raw["val"])}
    if kind == "categorical":
        vals = raw.get("vals")
        if not isinstance(vals, list) or not vals:
            errs.add(_join(path, "vals"), f"must be a non-empty list, got {_show(vals)}")
            return None
        return {"type": "categorical", "vals": copy.deepcopy(vals)}
    count = _read_int(raw, "count", path, errs)
    lo: float | int | None
    hi: float | int | None
    if kind == "int":
        lo = _read_int_any(raw, "minval", path, errs)
        hi = _read_int_any(raw, "maxval", path, errs)
    else:
        lo = _read_number(raw, "minval", path, errs, required=True)
        hi = _read_number(raw, "maxval", path, errs, required=True)
    base = 10.0
    if kind == "log":
        base_raw = _read_number(raw, "base", path, errs, default=10.0)
        if base_raw is not None and (base_raw <= 0 or base_raw == 1):
            errs.add(
                _join(path, "base"),
                f"must be a positive number other than 1, got {_show(raw.get('base'))}",
            )
        elif base_raw is not None:
            base = base_raw
    if lo is not None and hi is not None and lo > hi:
        errs.add(_join(path, "minval"), f"must be <= maxval ({_show(hi)}), got {_show(lo)}")
    if len(errs.items) != n_before:
        return None
    spec: JSONDict = {"type": kind, "minval": lo, "maxval": hi}
    if kind == "log":
        spec["base"] = base
    spec["count"] = count
    return spec


def _read_int_any(section: Mapping[str, Any], key: str, path: str, errs: _Errors) -> int | None:
    raw = section.get(key)
    if raw is None:
        errs.add(_join(path, key), "required")
        return None
    value = _as_int(raw)
    if value is None:
        errs.add(_join(path, key), f"must be an integer, got {_show(raw)}")
    return value


def _normalize_hparams(raw: Mapping[str, Any], path: str, errs: _Errors) -> JSONDict:
    out: JSONDict = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            errs.add(path, f"names must be non-empty strings, got {_show(key)}")
            continue
        sub = _join(path, key)
        if isinstance(value, Mapping):
            if "type" in value:
                spec = _normalize_spec(value, sub, errs)
                if spec is not None:
                    out[key] = spec
            else:
                out[key] = _normalize_hparams(value, sub, errs)
        else:
            out[key] = {"type": "const", "val": copy.deepcopy(value)}
    return out


def normalize_hyperparameters(raw: Any) -> JSONDict:
    """Normalize a ``hyperparameters`` section alone (raises :class:`ConfigError`)."""
    errs = _Errors()
    if not isinstance(raw, Mapping):
        raise ConfigError([f"hyperparameters: must be a mapping, got {_show(raw)}"])
    out = _normalize_hparams(raw, "hyperparameters", errs)
    if errs.items:
        raise ConfigError(list(dict.fromkeys(errs.items)))
    return out


def _check_grid(hparams: Mapping[str, Any], path: str, errs: _Errors) -> int:
    """Checks every numeric range has a ``count``; returns the grid size (0 if unknown)."""
    size = 1
    for key, value in hparams.items():
        sub = _join(path, key)
        if "type" not in value:
            size *= _check_grid(value, sub, errs)
            continue
        kind = value["type"]
        if kind == "const":
            continue
        if kind == "categorical":
            size *= len(value["vals"])
            continue
        count = value.get("count")
        if count is None:
            errs.add(_join(sub, "count"), f"required by the grid searcher for a {kind} range")
            size = 0
            continue
        if kind == "int":
            count = min(count, value["maxval"] - value["minval"] + 1)
        size *= count
    return size


# --- sections ---------------------------------------------------------------------------------


def _normalize_early_stopping(
    section: Mapping[str, Any], path: str, errs: _Errors
) -> JSONDict | None:
    raw = _read_mapping(section, "early_stopping", path, errs)
    if raw is None:
        return None
    sub = _join(path, "early_stopping")
    _check_keys(raw, ("patience", "min_delta"), sub, errs)
    patience = _read_int(raw, "patience", sub, errs, required=True)
    min_delta = _read_number(raw, "min_delta", sub, errs, default=0.0)
    if min_delta is not None and min_delta < 0:
        errs.add(_join(sub, "min_delta"), f"must be >= 0, got {_show(raw.get('min_delta'))}")
    return {"patience": patience, "min_delta": min_delta}


def _normalize_length_style(
    section: Mapping[str, Any], path: str, errs: _Errors, out: JSONDict, *, required: bool
) -> None:
    """``max_length`` xor (``time_metric`` + ``max_time``); ``required``: one style is needed."""
    out["max_length"] = _read_length(section, "max_length", path, errs)
    out["time_metric"] = _read_str(section, "time_metric", path, errs, non_empty=True)
    out["max_time"] = _read_int(section, "max_time", path, errs)
    has_time = section.get("time_metric") is not None or section.get("max_time") is not None
    if section.get("time_metric") is not None and section.get("max_time") is None:
        errs.add(_join(path, "max_time"), "required when time_metric is set")
    if section.get("max_time") is not None and section.get("time_metric") is None:
        errs.add(_join(path, "time_metric"), "required when max_time is set")
    if section.get("max_length") is not None and has_time:
        errs.add(
            _join(path, "max_length"),
            "give either max_length or time_metric + max_time, not both",
        )
    if required and section.get("max_length") is None and not has_time:
        errs.add(_join(path, "max_length"), "required (or time_metric + max_time)")


def _normalize_searcher(
    raw: Mapping[str, Any], errs: _Errors, hparams: JSONDict | None
) -> JSONDict | None:
    path = "searcher"
    name = _read_choice(raw, "name", path, errs, SEARCHER_NAMES, required=True)
    if name is None:
        return None
    _check_keys(raw, _SEARCHER_COMMON_KEYS + _SEARCHER_KEYS[name], path, errs)
    out: JSONDict = {"name": name}
    out["metric"] = _read_str(raw, "metric", path, errs, required=name != "custom", non_empty=True)
    out["smaller_is_better"] = _read_bool(raw, "smaller_is_better", path, errs, default=True)

    if name in ("random", "adaptive_asha", "optuna"):
        out["max_trials"] = _read_int(raw, "max_trials", path, errs, required=True)
    if name in ("random", "grid", "adaptive_asha", "optuna"):
        out["max_concurrent_trials"] = _read_int(
            raw, "max_concurrent_trials", path, errs, default=16, minimum=0
        )
    if name in ("single", "random", "grid", "optuna"):
        _normalize_length_style(raw, path, errs, out, required=False)

    if name == "grid" and hparams is not None:
        size = _check_grid(hparams, "hyperparameters", errs)
        if size > MAX_GRID_POINTS:
            errs.add(path, f"the grid has {size} points, more than the limit of {MAX_GRID_POINTS}")

    if name == "adaptive_asha":
        _normalize_length_style(raw, path, errs, out, required=True)
        out["max_rungs"] = _read_int(raw, "max_rungs", path, errs, default=5)
        divisor = _read_number(raw, "divisor", path, errs, default=4.0)
        if divisor is not None and divisor <= 1:
            errs.add(
                _join(path, "divisor"), f"must be a number > 1, got {_show(raw.get('divisor'))}"
            )
        out["divisor"] = divisor
        out["mode"] = _read_choice(raw, "mode", path, errs, ASHA_MODES, default="standard")
        rungs = raw.get("bracket_rungs")
        if rungs is None:
            out["bracket_rungs"] = None
        elif not isinstance(rungs, list) or not rungs:
            errs.add(
                _join(path, "bracket_rungs"),
                f"must be a non-empty list of positive integers, got {_show(rungs)}",
            )
        else:
            good: list[int] = []
            for i, item in enumerate(rungs):
                value = _as_int(item)
                if value is None or value < 1:
                    errs.add(
                        f"{path}.bracket_rungs[{i}]",
                        f"must be a positive integer, got {_show(item)}",
                    )
                else:
                    good.append(value)
            out["bracket_rungs"] = good
        if raw.get("stop_once") is not None:
            # Only stop-once semantics are implemented: a trial not promoted is stopped.
            _read_bool(raw, "stop_once", path, errs, default=True)

    if name == "pbt":
        pop = _read_int(raw, "population_size", path, errs, required=True)
        out["population_size"] = pop
        out["num_rounds"] = _read_int(raw, "num_rounds", path, errs, required=True)
        out["length_per_round"] = _read_length(raw, "length_per_round", path, errs, required=True)
        mct = _read_int(raw, "max_concurrent_trials", path, errs, default=0, minimum=0)
        if mct and pop is not None and mct < pop:
            errs.add(
                _join(path, "max_concurrent_trials"),
                f"must be 0 (unlimited) or at least population_size ({pop}), got {mct}",
            )
        out["max_concurrent_trials"] = mct
        rep = _read_mapping(raw, "replace_function", path, errs, required=True)
        if rep is not None:
            sub = _join(path, "replace_function")
            _check_keys(rep, ("truncate_fraction",), sub, errs)
            frac = _read_number(rep, "truncate_fraction", sub, errs, required=True)
            if frac is not None and not 0 < frac <= 0.5:
                errs.add(_join(sub, "truncate_fraction"), f"must be in (0, 0.5], got {_show(frac)}")
            out["replace_function"] = {"truncate_fraction": frac}
        exp = _read_mapping(raw, "explore_function", path, errs, required=True)
        if exp is not None:
            sub = _join(path, "explore_function")
            _check_keys(exp, ("resample_probability", "perturb_factor"), sub, errs)
            prob = _read_number(exp, "resample_probability", sub, errs, required=True)
            if prob is not None and not 0 <= prob <= 1:
                errs.add(
                    _join(sub, "resample_probability"), f"must be in [0, 1], got {_show(prob)}"
                )
            factor = _read_number(exp, "perturb_factor", sub, errs, required=True)
            if factor is not None and not 0 < factor < 1:
                errs.add(_join(sub, "perturb_factor"), f"must be in (0, 1), got {_show(factor)}")
            out["explore_function"] = {"resample_probability": prob, "perturb_factor": factor}

    if name == "optuna":
        out["sampler"] = _read_choice(raw, "sampler", path, errs, OPTUNA_SAMPLERS, default="tpe")
        sampler_args = _read_mapping(raw, "sampler_args", path, errs)
        out["sampler_args"] = dict(sampler_args) if sampler_args is not None else {}
        out["pruner"] = _read_choice(raw, "pruner", path, errs, OPTUNA_PRUNERS, default="none")
        pruner_args = _read_mapping(raw, "pruner_args", path, errs)
        out["pruner_args"] = dict(pruner_args) if pruner_args is not None else {}
        out["num_reports"] = _read_int(
            raw, "num_reports", path, errs, default=1 if out["pruner"] == "none" else 4
        )
        _check_optuna_args(out, path, errs)

    if name == "custom":
        for key in ("early_stopping", "target"):
            if raw.get(key) is not None:
                errs.add(
                    _join(path, key), "not supported by the custom searcher (its driver decides)"
                )
    out["source_trial_id"] = _read_int(raw, "source_trial_id", path, errs)
    out["source_checkpoint_uuid"] = _read_str(raw, "source_checkpoint_uuid", path, errs)
    out["early_stopping"] = _normalize_early_stopping(raw, path, errs)
    out["target"] = _read_number(raw, "target", path, errs)
    return out


def _check_optuna_args(out: JSONDict, path: str, errs: _Errors) -> None:
    """Builds the Optuna sampler and pruner once so bad ``*_args`` fail at submission."""
    if out["sampler"] is None or out["pruner"] is None:
        return
    try:
        from master_server.searcher import optuna_search
    except ImportError:  # pragma: no cover - optuna is optional
        return
    for key, message in optuna_search.check_args(
        out["sampler"], out["sampler_args"], out["pruner"], out["pruner_args"]
    ):
        errs.add(_join(path, key), message)


def _normalize_env_vars(raw: Any, path: str, errs: _Errors) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw is None:
        return out
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if not isinstance(key, str) or not key or "=" in key:
                errs.add(path, f"names must be non-empty strings without '=', got {_show(key)}")
            elif value is None or isinstance(value, list | dict):
                errs.add(_join(path, key), f"must be a string or number, got {_show(value)}")
            elif isinstance(value, bool):
                out[key] = "true" if value else "false"
            else:
                out[key] = str(value)
        return out
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                errs.add(f"{path}[{i}]", f'must be a "KEY=VALUE" string, got {_show(item)}')
                continue
            key, _, value = item.partition("=")
            out[key] = value
        return out
    errs.add(path, f'must be a list of "KEY=VALUE" strings or a mapping, got {_show(raw)}')
    return out


def parse_config_text(text: str | bytes) -> JSONDict:
    """Parse YAML (or JSON) config text into a dict.

    Args:
        text: the config as submitted.

    Returns:
        The parsed mapping.

    Raises:
        InvalidArgumentError: the text is not YAML/JSON, or not a mapping at the top.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([f"config: not UTF-8 text ({exc})"]) from None
    parsed: Any
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            try:
                parsed = loads_json(text, "config")
            except InvalidArgumentError:
                parsed = load_yaml(text, "config")
        else:
            parsed = load_yaml(text, "config")
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError([f"config: invalid YAML: {detail}"]) from None
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        raise ConfigError([f"config: must be a mapping at the top level, got {_show(parsed)}"])
    check_value(parsed, "config")
    return parsed


def validate_experiment_config(
    raw: str | bytes | Mapping[str, Any], *, unmanaged: bool = False
) -> JSONDict:
    """Validate an experiment config and return it normalized, with defaults filled.

    Args:
        raw: YAML or JSON text, or a mapping (not modified).
        unmanaged: the experiment is run by hand (no entrypoint needed; the searcher defaults
            to ``single`` with no metric).

    Returns:
        A new dict with every top-level section present (see the module docstring).

    Raises:
        InvalidArgumentError: a :class:`ConfigError` listing every problem, each starting with
            the field path.
    """
    if isinstance(raw, str | bytes):
        cfg: Mapping[str, Any] = parse_config_text(raw)
    elif isinstance(raw, Mapping):
        cfg = raw
    else:
        raise ConfigError([f"config: must be a mapping or YAML text, got {_show(raw)}"])

    errs = _Errors()
    _check_jsonable(cfg, "", errs)
    _check_keys(cfg, _TOP_LEVEL_KEYS + _IGNORED_TOP_LEVEL_KEYS, "", errs, what="top-level key")

    out: JSONDict = {}
    out["name"] = _read_str(cfg, "name", "", errs, default="Experiment")
    out["description"] = _read_str(cfg, "description", "", errs, default="")

    labels = cfg.get("labels")
    out["labels"] = []
    if labels is not None:
        if not isinstance(labels, list):
            errs.add("labels", f"must be a list of strings, got {_show(labels)}")
        else:
            for i, label in enumerate(labels):
                if isinstance(label, str):
                    out["labels"].append(label)
                else:
                    errs.add(f"labels[{i}]", f"must be a string, got {_show(label)}")

    entry = cfg.get("entrypoint")
    out["entrypoint"] = None
    if entry is None:
        if not unmanaged:
            errs.add("entrypoint", "required (a command string or a list of strings)")
    elif isinstance(entry, str):
        if entry.strip():
            out["entrypoint"] = entry
        else:
            errs.add("entrypoint", "must not be empty")
    elif isinstance(entry, list) and entry and all(isinstance(x, str) for x in entry):
        out["entrypoint"] = list(entry)
    else:
        errs.add(
            "entrypoint", f"must be a string or a non-empty list of strings, got {_show(entry)}"
        )

    out["project"] = _read_str(cfg, "project", "", errs, non_empty=True)
    out["workspace"] = _read_str(cfg, "workspace", "", errs, non_empty=True)

    hp_raw = cfg.get("hyperparameters")
    hparams: JSONDict | None = {}
    if hp_raw is not None:
        if isinstance(hp_raw, Mapping):
            n_before = len(errs.items)
            hparams = _normalize_hparams(hp_raw, "hyperparameters", errs)
            if len(errs.items) != n_before:
                hparams = None  # do not pile grid errors on top of spec errors
        else:
            errs.add("hyperparameters", f"must be a mapping, got {_show(hp_raw)}")
            hparams = None
    out["hyperparameters"] = hparams if hparams is not None else {}

    searcher = cfg.get("searcher")
    if searcher is None:
        if unmanaged:
            out["searcher"] = _normalize_searcher({"name": "single", "metric": "x"}, errs, {})
            out["searcher"]["metric"] = None
        else:
            errs.add("searcher", "required")
            out["searcher"] = None
    elif not isinstance(searcher, Mapping):
        errs.add("searcher", f"must be a mapping, got {_show(searcher)}")
        out["searcher"] = None
    else:
        out["searcher"] = _normalize_searcher(searcher, errs, hparams)

    resources = _read_mapping(cfg, "resources", "", errs) or {}
    _check_keys(resources, _RESOURCES_KEYS + _RESOURCES_PASSTHROUGH, "resources", errs)
    res_out: JSONDict = {
        "slots_per_trial": _read_int(resources, "slots_per_trial", "resources", errs, default=1),
        "max_slots": _read_int(resources, "max_slots", "resources", errs),
    }
    for key in _RESOURCES_PASSTHROUGH:
        if key in resources:
            res_out[key] = copy.deepcopy(resources[key])
    out["resources"] = res_out

    out["max_restarts"] = _read_int(cfg, "max_restarts", "", errs, default=5, minimum=0)
    max_idle = _read_number(cfg, "max_idle", "", errs)
    if max_idle is not None and not (max_idle > 0 and math.isfinite(max_idle)):
        errs.add("max_idle", f"must be a positive number of seconds, got {_show(cfg['max_idle'])}")
        max_idle = None
    if max_idle is not None:
        out["max_idle"] = max_idle
    out["min_validation_period"] = _read_length(cfg, "min_validation_period", "", errs)
    out["min_checkpoint_period"] = _read_length(cfg, "min_checkpoint_period", "", errs)

    storage = _read_mapping(cfg, "checkpoint_storage", "", errs) or {}
    sp = "checkpoint_storage"
    _check_keys(storage, _CHECKPOINT_KEYS, sp, errs)
    host_path = _read_str(storage, "host_path", sp, errs, non_empty=True)
    storage_path = _read_str(storage, "storage_path", sp, errs, non_empty=True)
    path = _read_str(storage, "path", sp, errs, non_empty=True) or _read_str(
        storage, "container_path", sp, errs, non_empty=True
    )
    if path is None and host_path is not None:
        path = host_path.rstrip("/") + ("/" + storage_path.strip("/") if storage_path else "")
    kind = _read_choice(storage, "type", sp, errs, CHECKPOINT_STORAGE_TYPES, default="shared_fs")
    st_out: JSONDict = {
        "type": kind,
        "path": path,
        "host_path": host_path,
        "storage_path": storage_path,
    }
    if kind in checkpoint_storage.REMOTE_PACKAGES:
        try:
            st_out = checkpoint_storage.normalize_config(storage, sp)
        except checkpoint_storage.StorageConfigError as exc:
            field, _, message = str(exc).partition(": ")
            errs.add(field, message)
        for key in ("path", "host_path", "storage_path", "container_path"):
            if key in storage:
                errs.add(f"{sp}.{key}", f"is for shared_fs storage, not {kind}")
    elif kind is not None:
        for key in (*checkpoint_storage.BUCKET_FIELD.values(), "prefix", "endpoint_url"):
            if key in storage:
                errs.add(f"{sp}.{key}", f"is for object storage (s3, gcs, azure), not {kind}")
    st_out |= {
        "save_experiment_best": _read_int(
            storage, "save_experiment_best", sp, errs, default=0, minimum=0
        ),
        "save_trial_best": _read_int(storage, "save_trial_best", sp, errs, default=1, minimum=0),
        "save_trial_latest": _read_int(
            storage, "save_trial_latest", sp, errs, default=1, minimum=0
        ),
    }
    if "propagation" in storage:
        st_out["propagation"] = copy.deepcopy(storage["propagation"])
    out["checkpoint_storage"] = st_out

    env = _read_mapping(cfg, "environment", "", errs) or {}
    _check_keys(env, _ENVIRONMENT_KEYS + _ENVIRONMENT_PASSTHROUGH, "environment", errs)
    env_out: JSONDict = {
        "environment_variables": _normalize_env_vars(
            env.get("environment_variables"), "environment.environment_variables", errs
        )
    }
    for key in _ENVIRONMENT_PASSTHROUGH:
        if key in env:
            env_out[key] = copy.deepcopy(env[key])
    out["environment"] = env_out

    data = cfg.get("data")
    if data is None:
        out["data"] = {}
    elif isinstance(data, Mapping):
        out["data"] = copy.deepcopy(dict(data))
    else:
        errs.add("data", f"must be a mapping, got {_show(data)}")
        out["data"] = {}

    out["records_per_epoch"] = _read_int(cfg, "records_per_epoch", "", errs)

    repro = _read_mapping(cfg, "reproducibility", "", errs) or {}
    _check_keys(repro, ("experiment_seed",), "reproducibility", errs)
    seed = _read_int(repro, "experiment_seed", "reproducibility", errs, minimum=0)
    if seed is not None and seed >= 2**32:
        errs.add("reproducibility.experiment_seed", f"must be < 2**32, got {seed}")
        seed = None
    if seed is None:
        seed = time.time_ns() // 1000 % (2**31)
    out["reproducibility"] = {"experiment_seed": seed}

    if cfg.get("scheduling_unit") is not None:
        out["scheduling_unit"] = _read_int(cfg, "scheduling_unit", "", errs)
    for key in _IGNORED_TOP_LEVEL_KEYS:
        if key in cfg:
            out[key] = copy.deepcopy(cfg[key])

    if errs.items:
        raise ConfigError(list(dict.fromkeys(errs.items)))
    return out
