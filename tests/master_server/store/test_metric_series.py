"""The packed chart series (:meth:`Store.metric_series`) against the exact read path.

Whatever the order batches arrive in, however a restart supersedes points, whatever the values
(NaN, infinities, -0.0) and whichever names each report carries, the series computed from the
packed columns equal, bit for bit, what ``read_metrics`` + min/max downsampling gives.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from determined_sdk.errors import InvalidArgumentError, NotFoundError
from master_server.domain import ExperimentState, MetricReport
from master_server.store import SQLStore
from master_server.store import metric_series as ms
from master_server.store.models import MetricSeriesRow, MetricSeriesStateRow
from master_server.web.metrics import exact_series, series
from tests.master_server.store.test_store_conformance import new_exp, new_trial, rep

GROUPS = ("training", "validation")
NAMES = ("loss", "acc", "$odd", 'q"uote')
MAX_POINTS = (0, 4, 5, 9, 50, 400)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1.0, math.nan, math.inf, -math.inf]),
    st.integers(-(2**40), 2**40),
)
report = st.builds(
    lambda g, s, ts, m: MetricReport(g, s, m, ts),
    st.sampled_from(GROUPS),
    st.integers(0, 60),
    st.floats(0, 2e9, allow_nan=False),
    st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=3),
)
# A trial's life: batches of reports (steps mostly rising, sometimes not) and restarts
# (``("restart", after_steps)``) that supersede what earlier runs reported later.
event = st.one_of(
    st.lists(report, min_size=1, max_size=30).map(lambda b: ("batch", b)),
    st.integers(0, 60).map(lambda s: ("restart", s)),
)


def same(store: SQLStore, trial_id: int) -> None:
    """The packed series equal the exact path's, for every group, name filter and size."""
    for group in (*GROUPS, "nosuch"):
        for names in ((), ("loss",), ("acc", "$odd", 'q"uote', "absent")):
            for max_points in MAX_POINTS:
                got = series(store, [trial_id], group, names, max_points)
                want = exact_series(store, [trial_id], group, names, max_points)
                # json.dumps: NaN == NaN, and -0.0 vs 0.0 / int vs float differ.
                assert json.dumps(got) == json.dumps(want), (group, names, max_points)


@seed(11)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(event, min_size=1, max_size=12), extend_at=st.sampled_from([1, 7, 256]))
def test_packed_series_equal_the_exact_path(
    store: SQLStore,
    monkeypatch: pytest.MonkeyPatch,
    events: list[tuple[str, Any]],
    extend_at: int,
) -> None:
    # Small sizes, so that a few dozen points move through tails, segments, merges and seals.
    monkeypatch.setattr(ms, "EXTEND_AT", extend_at)
    monkeypatch.setattr(ms, "SEAL_POINTS", 20)
    monkeypatch.setattr(ms, "TAIL_SEGMENTS", 3)
    exp = new_exp(store, state=ExperimentState.COMPLETED)
    trial = new_trial(store, exp.id)
    run = 1
    for i, (kind, arg) in enumerate(events):
        if kind == "batch":
            store.add_metrics(trial.id, f"b{i}", arg, run_id=run)
        else:
            run += 1
            store.supersede_metrics(trial.id, run, arg)
        if i % 4 == 3:
            same(store, trial.id)  # reads in between rebuild what became incomplete
    same(store, trial.id)


def test_many_small_batches_merge_into_few_segments(store: SQLStore) -> None:
    exp = new_exp(store)
    t = new_trial(store, exp.id)
    n = 8300  # two sealed segments and a tail, in batches of 10
    for i in range(0, n, 10):
        store.add_metrics(
            t.id, f"b{i}", [rep("training", s, float(s), loss=s / 7) for s in range(i, i + 10)]
        )
    with store._read() as conn:
        segments = conn.scalar(select(func.count()).select_from(MetricSeriesRow))
    assert segments is not None and segments < 2 * ms.TAIL_SEGMENTS
    got = store.metric_series([t.id], "training")[t.id]["loss"]
    assert list(got.steps) == list(range(n)) and list(got.values) == [s / 7 for s in range(n)]
    same(store, t.id)


def test_points_below_the_last_step_make_the_series_rebuild(store: SQLStore) -> None:
    exp = new_exp(store)
    t = new_trial(store, exp.id)
    n = ms.EXTEND_AT + 10  # enough for a segment
    store.add_metrics(t.id, "a", [rep("validation", s, loss=float(s)) for s in range(10, n)])
    with store._read() as conn:
        assert conn.scalar(select(func.count()).select_from(MetricSeriesRow)) == 1
    store.add_metrics(t.id, "b", [rep("validation", 5, loss=-1.0)])  # in the middle
    with store._read() as conn:
        assert conn.scalar(select(MetricSeriesStateRow.complete)) is False
    assert list(store.metric_series([t.id], "validation")[t.id]["loss"].steps) == [
        5,
        *range(10, n),
    ]
    with store._read() as conn:  # the read rebuilt it: the next one reads the segments
        assert conn.scalar(select(MetricSeriesStateRow.complete)) is True
    same(store, t.id)


def test_points_stored_before_the_series_existed_are_built_on_first_read(
    store: SQLStore,
) -> None:
    exp = new_exp(store)
    t = new_trial(store, exp.id)
    store.add_metrics(t.id, "a", [rep("validation", s, loss=float(s)) for s in range(50)])
    with store._write() as conn:  # what a database migrated to 0008 holds
        conn.execute(delete(MetricSeriesRow))
        conn.execute(delete(MetricSeriesStateRow))
    store.add_metrics(t.id, "b", [rep("validation", s, loss=float(s)) for s in range(50, 60)])
    got = store.metric_series([t.id], "validation", ["loss"])[t.id]["loss"]
    assert list(got.steps) == list(range(60))
    same(store, t.id)


def test_deleting_the_experiment_deletes_its_series(store: SQLStore) -> None:
    exp = new_exp(store, state=ExperimentState.COMPLETED)
    t = new_trial(store, exp.id)
    store.add_metrics(t.id, "a", [rep("validation", 1, loss=1.0)])
    store.delete_experiment(exp.id)
    with store._read() as conn:
        assert conn.scalar(select(func.count()).select_from(MetricSeriesRow)) == 0
        assert conn.scalar(select(func.count()).select_from(MetricSeriesStateRow)) == 0


def test_metric_series_errors(store: SQLStore) -> None:
    exp = new_exp(store)
    t = new_trial(store, exp.id)
    with pytest.raises(NotFoundError, match="trial 999 not found"):
        store.metric_series([t.id, 999], "validation")
    with pytest.raises(InvalidArgumentError, match=r"^group: "):
        store.metric_series([t.id], "")
    with pytest.raises(InvalidArgumentError, match=r"^names\[1\]: "):
        store.metric_series([t.id], "validation", ["loss", ""])
    assert store.metric_series([t.id], "validation") == {t.id: {}}


def test_reads_during_ingestion_see_each_point_once(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ms, "EXTEND_AT", 40)  # tails move into segments every few batches
    exp = new_exp(store)
    t = new_trial(store, exp.id)
    batches = 60

    def write() -> None:
        for b in range(batches):
            reports = [rep("validation", s, loss=s / 3) for s in range(b * 15, b * 15 + 15)]
            store.add_metrics(t.id, f"b{b}", reports)

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while writer.is_alive() or reads == 0:
        got = store.metric_series([t.id], "validation", ["loss"])[t.id].get("loss")
        if got is not None:  # a prefix of the points, each once, in order
            assert list(got.steps) == list(range(len(got))), list(got.steps)
            assert list(got.values) == [s / 3 for s in range(len(got))]
        reads += 1
    writer.join()
    assert len(store.metric_series([t.id], "validation")[t.id]["loss"]) == batches * 15
