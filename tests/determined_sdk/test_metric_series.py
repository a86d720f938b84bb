"""``Trial.metric_series`` / ``Determined.metric_series`` (RPC ``StreamMetricSeries``) through a
real master: every point equals what ``iter_metrics(group, names=[name])`` yields (superseded
points left out, a name missing from some points, several trials), ``max_points`` thins as the
REST API does, and bad input is an error naming the field."""

from __future__ import annotations

import math
import time
import uuid
from array import array
from collections.abc import Iterator

import pytest

from determined_sdk import (
    Determined,
    InvalidArgumentError,
    MetricSeries,
    NotFoundError,
    Trial,
    _default,
    client,
)
from determined_sdk.proto import trial_pb2
from master_server import servicers
from master_server.app import Master
from master_server.domain import MetricReport
from master_server.downsample import minmax_indices
from master_server.store.base import Store
from tests.determined_sdk.conftest import config

NAMES = ["loss", "acc", "never"]


def _report(store: Store, tid: int, run: int, reports: list[MetricReport]) -> None:
    assert store.add_metrics(tid, uuid.uuid4().hex, reports, run)


@pytest.fixture(scope="module")
def trials(sdk_master: Master, det: Determined) -> Iterator[list[int]]:
    """Three trials with stored points:

    * ``a``: 1,200 training reports in batches (the series gets segments and a tail), ``acc``
      only on even steps, NaN and infinities, two reports at one step; run 1 reported up to
      step 900, then run 2 restarted from the checkpoint at step 600 (run 1's points after
      it superseded) and reported 601..1200; then a late report below the last step;
    * ``b``: 50 reports of ``loss`` only, and a user group ``eval``;
    * ``c``: no points.
    """
    store: Store = sdk_master.parts["store"]
    exp = det.create_experiment(config("series"), None, activate=False)
    a, b, c = (
        store.create_trial(exp.id, request_id=f"series-{k}", hparams={"k": k}).id for k in "abc"
    )
    now = time.time()

    def point(s: int, run: int) -> MetricReport:
        m = {"loss": 1.0 / s + run}
        if s % 2 == 0:
            m["acc"] = s / 1000
        if s == 77:
            m["loss"] = math.nan
        if s == 78:
            m["acc"] = math.inf
        if s == 80:
            m["loss"] = -math.inf
        return MetricReport("training", s, m, now + s + 0.25)

    for lo in range(1, 901, 100):
        _report(store, a, 1, [point(s, 1) for s in range(lo, lo + 100)])
    _report(store, a, 1, [MetricReport("training", 300, {"loss": 0.5}, now + 1)])  # same step
    assert store.supersede_metrics(a, 2, 600) > 0
    for lo in range(601, 1201, 150):
        _report(store, a, 2, [point(s, 2) for s in range(lo, lo + 150)])
    _report(store, a, 2, [MetricReport("training", 10, {"loss": 7.0}, now)])  # late, low step
    _report(store, b, 1, [MetricReport("training", s, {"loss": s}, now + s) for s in range(50)])
    _report(store, b, 1, [MetricReport("eval", 5, {"f1": 0.5}, now)])
    yield [a, b, c]


def _expected(det: Determined, tid: int, group: str, name: str) -> MetricSeries:
    """The series as ``iter_metrics`` gives it: the reference."""
    pts = list(det.iter_trials_metrics(tid, group, names=[name]))
    assert all(p.trial_id == tid and list(p.metrics) == [name] for p in pts)
    return MetricSeries(
        tid,
        group,
        name,
        array("q", [p.steps_completed for p in pts]),
        array("d", [p.timestamp for p in pts]),
        array("d", [p.metrics[name] for p in pts]),
        len(pts),
    )


def test_every_point_equals_iter_metrics(det: Determined, trials: list[int]) -> None:
    a, b, c = trials
    got = det.metric_series([a, b, c], NAMES)
    assert list(got) == [a, b, c]
    for tid in trials:
        assert list(got[tid]) == NAMES
        for name in NAMES:
            assert got[tid][name] == _expected(det, tid, "training", name), (tid, name)
    loss = got[a]["loss"]
    # Superseded points are left out: run 1's 601..900 are gone, run 2's are there once.
    assert len(loss) == 1200 + 2 and loss.total_points == 1202 and not loss.downsampled
    assert list(loss.steps[:3]) == [1, 2, 3] and loss.steps[-1] == 1200
    at = {s: i for i, s in reversed(list(enumerate(loss.steps)))}  # first point of each step
    assert math.isnan(loss.values[at[77]]) and loss.values[at[80]] == -math.inf
    assert [loss.values[at[10]], loss.values[at[10] + 1]] == [0.1 + 1, 7.0]  # the late one last
    assert loss.values[at[700]] == 1 / 700 + 2  # run 2's
    assert len(got[a]["acc"]) == 600 and got[a]["acc"].steps[0] == 2
    assert len(got[b]["acc"]) == 0 and len(got[c]["loss"]) == 0
    assert got[c]["loss"].total_points == 0
    # Trial.metric_series: one name gives its series, several a dict.
    t = Trial(a, det)
    assert t.metric_series("loss") == loss
    assert t.metric_series(["acc", "loss"]) == {"acc": got[a]["acc"], "loss": loss}
    assert list(t.metric_series(("acc", "loss", "acc"))) == ["acc", "loss"]
    # A user group the trial reported, and a name only some trials have.
    assert det.metric_series(b, "f1", "eval")[b]["f1"] == _expected(det, b, "eval", "f1")
    assert det.metric_series([a, b], "f1", "eval")[a]["f1"].total_points == 0
    # The module-level twin.
    client.login(det._session.master)  # the default client, for the module function
    try:
        assert client.metric_series([b], ["loss"])[b]["loss"] == got[b]["loss"]
    finally:
        default = _default.replace(None)
        if default is not None:
            default.close()


def test_long_series_span_several_replies(
    det: Determined, trials: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = trials
    whole = det.metric_series([a, b], ["loss", "acc"])
    monkeypatch.setattr(servicers, "SERIES_REPLY_POINTS", 97)
    req = trial_pb2.StreamMetricSeriesRequest(trial_ids=[a, b], group="training", names=["loss"])
    replies = list(det._session.stream_metric_series(req))
    assert len(replies) == math.ceil((1202 + 50) / 97)
    assert all(sum(len(s.values) for s in r.series) == 97 * 8 for r in replies[:-1])
    assert det.metric_series([a, b], ["loss", "acc"]) == whole
    # Trials read a few at a time: a reply never mixes two reads.
    monkeypatch.setattr(servicers, "SERIES_REPLY_POINTS", 100_000)
    monkeypatch.setattr(servicers, "SERIES_READ_TRIALS", 1)
    replies = list(det._session.stream_metric_series(req))
    assert [[(x.trial_id, len(x.values) // 8) for x in r.series] for r in replies] == [
        [(a, 1202)],
        [(b, 50)],
    ]
    assert det.metric_series([b, a], ["loss", "acc"]) == {b: whole[b], a: whole[a]}


def test_max_points_thins_as_the_chart_does(det: Determined, trials: list[int]) -> None:
    a, b, _ = trials
    for max_points in (4, 10, 101, 1202, 5000):
        got = det.metric_series([a, b], ["loss", "acc"], max_points=max_points)
        for tid in (a, b):
            for name in ("loss", "acc"):
                full = _expected(det, tid, "training", name)
                keep = minmax_indices(list(full.values), max_points)
                s = got[tid][name]
                assert s.total_points == len(full)
                assert list(s.steps) == [full.steps[i] for i in keep]
                assert list(s.timestamps) == [full.timestamps[i] for i in keep]
                assert s.values.tobytes() == b"".join(
                    full.values[i : i + 1].tobytes() for i in keep
                )
                assert len(s) <= max_points
                assert s.downsampled == (len(full) > max_points)
    # The ends are kept, and per bucket (one here) its smallest and largest value.
    s = det.metric_series(b, "loss", max_points=4)[b]["loss"]
    assert list(s.values) == [0.0, 1.0, 48.0, 49.0]


def test_bad_input_names_the_field(det: Determined, trials: list[int]) -> None:
    a = trials[0]
    t = Trial(a, det)
    with pytest.raises(NotFoundError, match="trial 987654"):
        det.metric_series([a, 987654], "loss")
    with pytest.raises(NotFoundError, match="trial 987654"):
        Trial(987654, det).metric_series("loss")
    for bad_ids in ([], [0], [-3], ["1"], [True]):
        with pytest.raises(InvalidArgumentError, match="trial_ids"):
            det.metric_series(bad_ids, "loss")  # type: ignore[arg-type]
    for bad_names in ([], (), [""], [3], ["a\x00b"]):
        with pytest.raises(InvalidArgumentError, match="names"):
            t.metric_series(bad_names)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="names: at most 100"):
        t.metric_series([f"m{i}" for i in range(101)])
    for bad_max in (0, 3, -1, True, 2.5, "10", 100_001):
        with pytest.raises(InvalidArgumentError, match="max_points"):
            t.metric_series("loss", max_points=bad_max)  # type: ignore[arg-type]
    for bad_group in ("", None, 3):
        with pytest.raises(InvalidArgumentError, match="group"):
            t.metric_series("loss", bad_group)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="group: no metrics of group 'trainig'") as ei:
        t.metric_series("loss", "trainig")
    assert "'training', 'validation'" in str(ei.value)
    with pytest.raises(InvalidArgumentError, match="group: no metrics of group 'eval'"):
        t.metric_series("f1", "eval")  # b has it, a does not
    # The built-in groups are never unknown: a trial without points has empty series.
    assert len(t.metric_series("loss", "validation")) == 0


def test_bad_input_on_the_wire(det: Determined, trials: list[int]) -> None:
    """The master checks what the SDK checks (other clients send the raw request)."""
    a = trials[0]

    def error(**kw: object) -> str:
        req = trial_pb2.StreamMetricSeriesRequest(**kw)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError) as ei:
            list(det._session.stream_metric_series(req))
        return str(ei.value)

    assert error(group="training", names=["loss"]) == "trial_ids: give at least one trial id"
    assert error(trial_ids=[a, -1], group="training", names=["loss"]).startswith("trial_ids[1]")
    assert error(trial_ids=[a], group="training") == "names: give at least one metric name"
    assert error(trial_ids=[a], group="", names=["loss"]).startswith("group:")
    got = error(trial_ids=[a], group="training", names=["loss"], max_points=2)
    assert got.startswith("max_points:")
    req = trial_pb2.StreamMetricSeriesRequest(trial_ids=[424242], group="training", names=["x"])
    with pytest.raises(NotFoundError, match="424242"):
        list(det._session.stream_metric_series(req))
