"""Hyperparameter spaces: flattening, seeded sampling and grids over normalized specs.

The input is the normalized ``hyperparameters`` section of a config
(:func:`master_server.config.validate_experiment_config`): a mapping whose values are either
spec dicts (they have a ``"type"``: ``const``, ``int``, ``double``, ``log``, ``categorical``) or
nested groups (plain mappings, recursively). Outputs are plain nested dicts of values, the shape
a trial sees in its ``hparams``.

Semantics (Determined's):

* random: ``int`` uniform over ``[minval, maxval]`` inclusive, ``double`` uniform, ``log``
  ``base ** uniform(minval, maxval)`` (``minval``/``maxval`` are exponents), ``categorical`` a
  uniform choice, ``const`` its value.
* grid: ``count`` evenly spaced points over each numeric range, both ends included (a count of 1
  gives the midpoint); ``int`` points are rounded and deduplicated and never more than the range
  holds; ``log`` points are evenly spaced exponents; every categorical value; one const value.
  The grid is the Cartesian product, the first hyperparameter varying slowest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from determined_sdk.errors import InvalidArgumentError

JSONDict = dict[str, Any]
Path = tuple[str, ...]

_MASK64 = (1 << 64) - 1


def is_spec(value: Any) -> bool:
    """Whether ``value`` is a hyperparameter spec (a mapping with a ``"type"``)."""
    return isinstance(value, Mapping) and "type" in value


def iter_specs(hparams: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, JSONDict]]:
    """Yield ``(path, spec)`` for every leaf spec, depth first in key order."""
    for key, value in hparams.items():
        path = (*prefix, key)
        if is_spec(value):
            yield path, value
        else:
            yield from iter_specs(value, path)


def flatten(hparams: Mapping[str, Any]) -> dict[Path, JSONDict]:
    """The leaf specs keyed by their path tuple, in key order."""
    return dict(iter_specs(hparams))


def path_name(path: Path) -> str:
    """A dotted name for a path, e.g. ``("optimizer", "lr") -> "optimizer.lr"``."""
    return ".".join(path)


def unflatten(flat: Mapping[Path, Any]) -> JSONDict:
    """Nested plain dicts from ``{path tuple: value}``."""
    out: JSONDict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def seeded_rng(seed: int, index: int, salt: int = 0) -> random.Random:
    """A :class:`random.Random` derived from ``(seed, index, salt)``: the same triple always
    gives the same stream, so searchers need not persist generator state."""
    mixed = seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB
    return random.Random(mixed & _MASK64)


def sample_value(spec: Mapping[str, Any], rng: random.Random) -> Any:
    """One random value of a spec."""
    kind = spec["type"]
    if kind == "const":
        return spec["val"]
    if kind == "int":
        return rng.randint(spec["minval"], spec["maxval"])
    if kind == "double":
        return rng.uniform(spec["minval"], spec["maxval"])
    if kind == "log":
        return float(spec["base"] ** rng.uniform(spec["minval"], spec["maxval"]))
    if kind == "categorical":
        return rng.choice(spec["vals"])
    raise InvalidArgumentError(f"unknown hyperparameter type {kind!r}")


def sample(hparams: Mapping[str, Any], rng: random.Random) -> JSONDict:
    """One random point of the space, as nested plain dicts."""
    return _sample_nested(hparams, rng)


def _sample_nested(hparams: Mapping[str, Any], rng: random.Random) -> JSONDict:
    out: JSONDict = {}
    for key, value in hparams.items():
        out[key] = sample_value(value, rng) if is_spec(value) else _sample_nested(value, rng)
    return out


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def grid_axis(spec: Mapping[str, Any], name: str = "") -> list[Any]:
    """The grid values of one spec.

    Args:
        spec: a normalized spec.
        name: its dotted path, used in the error message.

    Raises:
        InvalidArgumentError: a numeric range has no ``count``.
    """
    kind = spec["type"]
    if kind == "const":
        return [spec["val"]]
    if kind == "categorical":
        return list(spec["vals"])
    count = spec.get("count")
    if count is None:
        raise InvalidArgumentError(
            f"hyperparameters.{name}.count: required by the grid searcher for a {kind} range"
        )
    lo, hi = spec["minval"], spec["maxval"]
    if kind == "int":
        count = min(count, hi - lo + 1)
        if count == 1:
            return [_round_half_up((lo + hi) / 2)]
        step = (hi - lo) / (count - 1)
        return list(dict.fromkeys(lo + _round_half_up(step * i) for i in range(count)))
    if count == 1:
        points = [(lo + hi) / 2]
    else:
        points = [lo + (hi - lo) * i / (count - 1) for i in range(count - 1)] + [hi]
    if kind == "double":
        return [float(p) for p in points]
    base = spec["base"]
    return [float(base**p) for p in points]


def grid_axes(hparams: Mapping[str, Any]) -> list[tuple[Path, list[Any]]]:
    """``(path, values)`` for every leaf, in key order (see :func:`grid_axis`)."""
    return [(path, grid_axis(spec, path_name(path))) for path, spec in iter_specs(hparams)]


def grid_size(axes: Sequence[tuple[Path, Sequence[Any]]]) -> int:
    """The number of grid points (the product of the axis sizes; 1 for an empty space)."""
    return math.prod(len(values) for _, values in axes)


def grid_point(axes: Sequence[tuple[Path, Sequence[Any]]], index: int) -> JSONDict:
    """The ``index``-th grid point (0-based, the last axis varying fastest), as nested dicts."""
    flat: dict[Path, Any] = {}
    for path, values in reversed(axes):
        index, pos = divmod(index, len(values))
        flat[path] = values[pos]
    return unflatten({path: flat[path] for path, _ in axes})


def grid(hparams: Mapping[str, Any]) -> list[JSONDict]:
    """Every grid point, as nested dicts, in :func:`grid_point` order."""
    axes = grid_axes(hparams)
    return [grid_point(axes, i) for i in range(grid_size(axes))]
