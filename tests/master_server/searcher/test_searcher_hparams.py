"""Hyperparameter sampling, grids and nesting (master_server.searcher.hparams)."""

from __future__ import annotations

import math

import pytest

from determined_sdk.errors import InvalidArgumentError
from master_server.config import normalize_hyperparameters
from master_server.searcher import hparams as hp


def axis(spec: dict) -> list:
    return hp.grid_axis(normalize_hyperparameters({"a": spec})["a"], "a")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "int", "minval": 1, "maxval": 10, "count": 4}, [1, 4, 7, 10]),
        ({"type": "int", "minval": 0, "maxval": 10, "count": 3}, [0, 5, 10]),
        ({"type": "int", "minval": 0, "maxval": 2, "count": 10}, [0, 1, 2]),
        ({"type": "int", "minval": 3, "maxval": 3, "count": 2}, [3]),
        ({"type": "int", "minval": 0, "maxval": 4, "count": 1}, [2]),
        ({"type": "int", "minval": 0, "maxval": 3, "count": 3}, [0, 2, 3]),
        ({"type": "double", "minval": 0, "maxval": 1, "count": 3}, [0.0, 0.5, 1.0]),
        ({"type": "double", "minval": -1, "maxval": 1, "count": 1}, [0.0]),
        ({"type": "categorical", "vals": ["a", 2, [3]]}, ["a", 2, [3]]),
        ({"type": "const", "val": {"k": 1}}, [{"k": 1}]),
    ],
)
def test_grid_axis_values(spec: dict, expected: list) -> None:
    assert axis(spec) == expected


def test_log_grid_spaces_exponents_and_includes_both_ends() -> None:
    values = axis({"type": "log", "minval": -3, "maxval": -1, "count": 3})
    assert values == pytest.approx([0.001, 0.01, 0.1])
    base2 = axis({"type": "log", "minval": 1, "maxval": 4, "base": 2, "count": 4})
    assert base2 == pytest.approx([2.0, 4.0, 8.0, 16.0])


def test_int_grid_points_are_deduplicated_ints() -> None:
    values = axis({"type": "int", "minval": 0, "maxval": 5, "count": 5})
    assert all(isinstance(v, int) for v in values)
    assert values == sorted(set(values))
    assert values[0] == 0 and values[-1] == 5


def test_grid_over_nested_and_categorical() -> None:
    space = normalize_hyperparameters(
        {
            "lr": {"type": "log", "minval": -3, "maxval": -1, "count": 3},
            "layers": 2,
            "optimizer": {
                "name": {"type": "categorical", "vals": ["adam", "sgd"]},
                "momentum": {"type": "double", "minval": 0.0, "maxval": 0.5, "count": 2},
                "nesterov": True,
            },
        }
    )
    points = hp.grid(space)
    assert len(points) == 3 * 2 * 2
    assert hp.grid_size(hp.grid_axes(space)) == 12
    # Nested output, every point distinct, consts everywhere.
    assert all(p["layers"] == 2 and p["optimizer"]["nesterov"] is True for p in points)
    keys = {(p["lr"], p["optimizer"]["name"], p["optimizer"]["momentum"]) for p in points}
    assert len(keys) == 12
    assert {p["optimizer"]["name"] for p in points} == {"adam", "sgd"}
    assert {p["optimizer"]["momentum"] for p in points} == {0.0, 0.5}
    # The first hyperparameter varies slowest.
    assert points[0]["lr"] == pytest.approx(0.001) and points[-1]["lr"] == pytest.approx(0.1)
    assert points[0]["optimizer"] == {"name": "adam", "momentum": 0.0, "nesterov": True}
    assert points[1]["optimizer"]["momentum"] == 0.5


def test_grid_without_count_names_the_field() -> None:
    space = normalize_hyperparameters({"opt": {"lr": {"type": "double", "minval": 0, "maxval": 1}}})
    with pytest.raises(InvalidArgumentError, match=r"hyperparameters\.opt\.lr\.count"):
        hp.grid(space)


def test_empty_space_is_one_point() -> None:
    assert hp.grid({}) == [{}]


SPACE = normalize_hyperparameters(
    {
        "i": {"type": "int", "minval": -3, "maxval": 3},
        "d": {"type": "double", "minval": 0.5, "maxval": 0.75},
        "l": {"type": "log", "minval": -4, "maxval": -2},
        "l2": {"type": "log", "minval": 1, "maxval": 3, "base": 2},
        "c": {"type": "categorical", "vals": ["a", "b", "c"]},
        "nested": {"k": 7, "deeper": {"j": {"type": "int", "minval": 0, "maxval": 1}}},
    }
)


def test_samples_stay_in_range_and_are_typed() -> None:
    for n in range(300):
        s = hp.sample(SPACE, hp.seeded_rng(5, n))
        assert isinstance(s["i"], int) and -3 <= s["i"] <= 3
        assert 0.5 <= s["d"] <= 0.75
        assert 1e-4 <= s["l"] <= 1e-2
        assert 2.0 <= s["l2"] <= 8.0
        assert s["c"] in ("a", "b", "c")
        assert s["nested"]["k"] == 7
        assert s["nested"]["deeper"]["j"] in (0, 1)


def test_sampling_is_reproducible_by_seed() -> None:
    a = [hp.sample(SPACE, hp.seeded_rng(11, n)) for n in range(20)]
    b = [hp.sample(SPACE, hp.seeded_rng(11, n)) for n in range(20)]
    c = [hp.sample(SPACE, hp.seeded_rng(12, n)) for n in range(20)]
    assert a == b
    assert a != c
    assert len({s["d"] for s in a}) == 20  # distinct draws per index


def test_log_samples_cover_the_exponent_range_uniformly() -> None:
    exps = [math.log10(hp.sample(SPACE, hp.seeded_rng(1, n))["l"]) for n in range(2000)]
    below = sum(1 for e in exps if e < -3)
    assert 850 < below < 1150  # half the exponent range, half the draws


def test_unflatten_and_flatten_round_trip() -> None:
    flat = hp.flatten(SPACE)
    assert ("nested", "deeper", "j") in flat
    assert hp.path_name(("nested", "deeper", "j")) == "nested.deeper.j"
    values = {path: 1 for path in flat}
    nested = hp.unflatten(values)
    assert nested["nested"]["deeper"]["j"] == 1 and nested["i"] == 1
