"""The read side of the metrics wire format: value columns of names-filtered pages, and the
points the SDK builds from a page."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import pickle
import re

import pytest

from determined_sdk import TrialMetrics
from determined_sdk._trial import _new_trial_metrics
from determined_sdk.errors import InvalidArgumentError
from determined_sdk.metrics_wire import (
    TIMESTAMPS_JSON_SCALE,
    decode_metrics_json,
    iter_columns,
    pack_value_columns,
    page_columns,
)
from determined_sdk.proto import metrics_pb2


def _page(n: int, **kw: object) -> metrics_pb2.MetricColumns:
    fields: dict[str, object] = {
        "trial_ids": [7],
        "trial_counts": [n],
        "group_names": ["training"],
        "group_ids": [0] * n,
        "steps_completed": list(range(n)),
        "timestamps": [1.5 * i for i in range(n)],
    }
    return metrics_pb2.MetricColumns(**{**fields, **kw})  # type: ignore[arg-type]


def test_value_columns_round_trip_with_absent_values() -> None:
    names = ["loss", "acc"]
    values = [[1.0, None, math.inf], [0.5, 0.25, None]]
    flat, absent = pack_value_columns(names, values)
    assert flat == [1.0, 0.0, math.inf, 0.5, 0.25, 0.0] and absent == [1, 5]
    page = _page(3, value_names=names, values=flat, absent=absent)
    points = list(iter_columns(page))
    assert [p[3] for p in points] == [
        {"loss": 1.0, "acc": 0.5},
        {"acc": 0.25},
        {"loss": math.inf},
    ]
    assert [(p[0], p[1], p[2], p[4], p[5]) for p in points][1] == (7, "training", 1, 1.5, 0)


def test_json_page_and_bad_value_columns() -> None:
    page = _page(2, metrics_json=json.dumps([{"a": 1.0}, {"b": "NaN"}]))
    (_, _, _, metrics, _, _) = page_columns(page)
    assert metrics[0] == {"a": 1.0} and math.isnan(metrics[1]["b"])
    with pytest.raises(InvalidArgumentError, match="values: 3 entries for 1 names x 2 points"):
        page_columns(_page(2, value_names=["a"], values=[1.0, 2.0, 3.0]))
    with pytest.raises(InvalidArgumentError, match="absent: 9 is not an index of values"):
        page_columns(_page(2, value_names=["a"], values=[1.0, 2.0], absent=[9]))
    with pytest.raises(InvalidArgumentError, match="timestamps: 1 entries for 2 points"):
        page_columns(_page(2, value_names=["a"], values=[1.0, 2.0], timestamps=[0.0]))


def test_columns_sent_as_json_text_read_as_their_fields() -> None:
    metrics_json = json.dumps([{"a": 1.0}, {"b": 2.0}, {"c": 3.0}])
    when = [1.7e9 + 0.1, 1.7e9 + 1 / 3, 2.0**35]
    fields = _page(
        3,
        trial_ids=[7, 8],
        trial_counts=[2, 1],
        group_names=["training", "val,idation"],
        group_ids=[0, 1, 0],
        steps_completed=[0, 0, 5],
        timestamps=when,
        trial_run_ids=[1, 2, 2],
        metrics_json=metrics_json,
    )
    text = _page(
        3,
        trial_ids=[7, 8],
        trial_counts=[2, 1],
        group_names=[],
        group_ids=[],
        steps_completed=[],
        timestamps=[],
        steps_completed_json="[0,0,5]",
        timestamps_json=json.dumps([int(t * TIMESTAMPS_JSON_SCALE) for t in when]),
        groups_json='["training","val,idation","training"]',
        trial_run_ids_json="[1,2,2]",
        metrics_json=metrics_json,
    )
    want = [tuple(c) for c in page_columns(fields)]
    assert [tuple(c) for c in page_columns(text)] == want
    assert want[4] == tuple(when) and want[1] == ("training", "val,idation", "training")
    for field, bad, why in (
        ("steps_completed_json", "[0,0", "not a JSON array"),
        ("timestamps_json", "[1,2]", "2 entries for 3 points"),
        ("groups_json", '{"a": 1}', "not a JSON array for 3 points"),
        ("trial_run_ids_json", "[1,2,3,4]", "4 entries for 3 points"),
    ):
        broken = metrics_pb2.MetricColumns()
        broken.CopyFrom(text)
        setattr(broken, field, bad)
        with pytest.raises(InvalidArgumentError, match=f"{field}: {why}"):
            page_columns(broken)


def test_decode_metrics_json_reads_what_the_fast_decoder_refuses() -> None:
    # Non-finite values travel as strings; a bare NaN literal and an integer past 64 bits are
    # not what the master stores, but a page that holds them still decodes.
    got = decode_metrics_json(
        '[{"a": 1.5, "b": "NaN", "c": "-Infinity"}, {"a": NaN}, {"big": 123456789012345678901}]'
    )
    assert got[0]["a"] == 1.5 and math.isnan(got[0]["b"]) and got[0]["c"] == -math.inf
    assert math.isnan(got[1]["a"]) and got[2]["big"] == pytest.approx(1.2345678901234568e20)
    assert decode_metrics_json("") == [] and decode_metrics_json("[]") == []
    for bad, why in (('[{"a": 1', "not a JSON array ("), ('{"a": 1}', "not a JSON array")):
        with pytest.raises(InvalidArgumentError, match="metrics_json: " + re.escape(why)):
            decode_metrics_json(bad)


def test_trial_metrics_is_an_immutable_value() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    m = TrialMetrics(1, 2, 30, when, {"loss": 0.5}, "validation")
    built = _new_trial_metrics(1, "validation", 30, {"loss": 0.5}, when.timestamp(), 2)
    assert m == built and m.end_time == built.end_time == when
    assert built.timestamp == when.timestamp() and built.batch_metrics is None
    assert m != _new_trial_metrics(1, "validation", 31, {"loss": 0.5}, when.timestamp(), 2)
    assert "steps_completed=30" in repr(built) and "group='validation'" in repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.steps_completed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(m)
    again = pickle.loads(pickle.dumps(built))
    assert again == built and again.end_time == when and copy.copy(built) == built
