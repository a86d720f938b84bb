"""pandas DataFrames of trials and metrics, through a real master."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from determined_sdk import Determined, Experiment, FailedPreconditionError, NotFoundError, Trial


def test_trials_dataframe(finished: Experiment) -> None:
    df = finished.trials_dataframe()
    trials = finished.list_trials()
    assert list(df["trial_id"]) == [t.id for t in trials]
    assert set(df["state"]) == {"COMPLETED"}
    assert sorted(df["hparams.lr"]) == [0.1, 0.5]
    assert list(df["hparams.steps"]) == [6, 6]
    t = trials[0]
    row = df.iloc[0]
    val = t.summary_metrics["validation_metrics"]["loss"]
    assert row["validation.loss.min"] == pytest.approx(val["min"])
    assert row["validation.loss.count"] == 6
    assert row["training.loss.last"] == pytest.approx(
        t.summary_metrics["avg_metrics"]["loss"]["last"]
    )
    assert row["searcher_metric"] == pytest.approx(t.searcher_metric)
    assert row["end_time"] >= row["start_time"]


def test_metrics_dataframe(finished: Experiment, det: Determined) -> None:
    t = finished.list_trials()[0]
    df = t.metrics_dataframe()
    reports = list(t.iter_metrics())
    assert len(df) == len(reports) == 12
    assert list(df.columns) == [
        "trial_id",
        "group",
        "steps_completed",
        "timestamp",
        "accuracy",
        "loss",
    ]
    assert list(df["steps_completed"]) == [r.steps_completed for r in reports]
    train = df[df["group"] == "training"]
    assert train["accuracy"].isna().all()  # training reports have no accuracy
    assert list(train["loss"]) == [r.metrics["loss"] for r in reports if r.group == "training"]
    val = t.metrics_dataframe("validation", names=["accuracy"])
    assert list(val.columns)[-1] == "accuracy" and len(val) == 6
    assert str(val["timestamp"].dtype).startswith("datetime64")
    with pytest.raises(NotFoundError, match="424242"):
        Trial(424242, det).metrics_dataframe()


def test_a_clear_error_without_pandas(
    finished: Experiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(FailedPreconditionError, match=r"determined-sdk\[pandas\]"):
        finished.trials_dataframe()
    with pytest.raises(FailedPreconditionError, match=r"determined-sdk\[pandas\]"):
        finished.list_trials()[0].metrics_dataframe()
    assert pd.__name__ == "pandas"
