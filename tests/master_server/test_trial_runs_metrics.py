"""Metrics carry the run that reported them; a restart from a checkpoint supersedes what
earlier runs reported after it. Through a real master with a real Core API trial."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grpc
import pytest

from determined_sdk import Determined
from determined_sdk.proto import trial_pb2
from master_server.app import Master
from master_server.web.metrics import exact_series, series
from tests.support import Stubs, single_config, write_model_dir

pytestmark = pytest.mark.slow

TRIAL = """
    import core_api
    with core_api.init() as ctx:
        start = 0
        if ctx.info.latest_checkpoint:
            with ctx.checkpoint.restore_path(ctx.info.latest_checkpoint) as path:
                start = int((path / "step").read_text())
        for step in range(start + 1, 11):
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
            if step == 5:
                with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _):
                    (path / "step").write_text(str(step))
        ctx.train.flush()
        if ctx.info.trial.run_id == 1:
            raise SystemExit(3)  # crash after reporting steps 6..10
"""


def test_restart_supersedes_reports_after_the_checkpoint(
    stubs: Stubs, master: Master, tmp_path: pathlib.Path
) -> None:
    cfg: dict[str, Any] = single_config("python main.py")
    cfg["max_restarts"] = 1
    exp = stubs.create(cfg, write_model_dir(tmp_path / "m", {"main.py": TRIAL}))
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    assert (t.run_id, t.restarts) == (2, 1)

    def points(**kw: Any) -> list[tuple[int, int, bool]]:
        req = trial_pb2.StreamMetricsRequest(trial_ids=[t.id], group="training", **kw)
        return [
            (p.steps_completed, p.trial_run_id, p.superseded)
            for page in stubs.trials.StreamMetrics(req)
            for p in page.points
        ]

    # One series by default: steps 1..5 of run 1, 6..10 of run 2.
    assert points() == [(s, 1 if s <= 5 else 2, False) for s in range(1, 11)]
    # The superseded reports of run 1 on request.
    every = points(include_superseded=True)
    assert [x for x in every if x[2]] == [(s, 1, True) for s in range(6, 11)]
    assert len(every) == 15
    # The trial's summary counts the one series too (not run 1's reports after step 5).
    loss = json.loads(stubs.trial(t.id).summary_metrics_json)["avg_metrics"]["loss"]
    assert (loss["count"], loss["last"], loss["min"]) == (10, 0.1, 0.1)
    assert loss["mean"] == pytest.approx(sum(1.0 / s for s in range(1, 11)) / 10)
    # The chart's packed series too (what the REST API answers), equal to the exact path.
    store = master.parts["store"]
    for max_points in (0, 4):
        chart = series(store, [t.id], "training", [], max_points)
        assert chart == exact_series(store, [t.id], "training", [], max_points)
    assert chart[t.id]["series"]["loss"]["steps"] == [1, 2, 9, 10]  # ends, max, min
    every_point = series(store, [t.id], "training", ["loss"], 0)[t.id]["series"]["loss"]
    assert every_point["steps"] == list(range(1, 11))
    assert every_point["values"] == [1.0 / s for s in range(1, 11)]
    # The SDK's chart read (StreamMetricSeries): exactly what iter_metrics yields.
    with Determined(master.address) as det:
        trial = det.get_trial(t.id)
        pts = list(trial.iter_metrics("training", names=["loss"]))
        got = trial.metric_series("loss")
        assert list(got.steps) == [p.steps_completed for p in pts] == list(range(1, 11))
        assert list(got.timestamps) == [p.timestamp for p in pts]
        assert list(got.values) == [p.metrics["loss"] for p in pts]
        assert list(trial.metric_series("loss", max_points=4).steps) == [1, 2, 9, 10]


def test_stream_metrics_bad_input(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        list(
            stubs.trials.StreamMetrics(
                trial_pb2.StreamMetricsRequest(trial_ids=[404], include_superseded=True)
            )
        )
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert "404" in ei.value.details()


ASSOC = """
    import core_api
    losses = {1: 0.3, 2: 0.1, 3: 0.2}
    with core_api.init() as ctx:
        for step, loss in losses.items():
            with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _):
                (path / "w").write_text(str(step))
            # Reported right after its checkpoint: it still belongs to it.
            ctx.train.report_validation_metrics(step, {"loss": loss})
"""


def test_validation_after_its_checkpoint_sorts_checkpoints(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    from determined_sdk.proto import checkpoint_pb2

    cfg: dict[str, Any] = single_config("python main.py")
    cfg["checkpoint_storage"] = {"save_trial_best": 3, "save_trial_latest": 3}
    exp = stubs.create(cfg, write_model_dir(tmp_path / "m", {"main.py": ASSOC}))
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    req = checkpoint_pb2.ListCheckpointsRequest(experiment_id=exp.id, sort_by="metric:loss")
    got = [
        (c.steps_completed, c.validation_metrics["loss"])
        for c in stubs.checkpoints.ListCheckpoints(req).checkpoints
    ]
    assert got == [(2, 0.1), (3, 0.2), (1, 0.3)]


def test_ship_logs_retry_is_stored_once(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    from determined_sdk.proto import logs_pb2

    exp = stubs.create(
        single_config("python main.py"), write_model_dir(tmp_path / "m", {"main.py": "print(1)"})
    )
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    line = logs_pb2.LogLine(trial_id=1, timestamp=1.0, message="shipped twice", run_id=1)
    req = logs_pb2.ShipLogsRequest(lines=[line], batch_id="lost-reply")
    assert stubs.logs.ShipLogs(req).duplicate is False
    assert stubs.logs.ShipLogs(req).duplicate is True
    lines = [
        x.message
        for page in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=1))
        for x in page.lines
    ]
    assert lines.count("shipped twice") == 1
    bad = logs_pb2.ShipLogsRequest(lines=[logs_pb2.LogLine(trial_id=0)], batch_id="x")
    with pytest.raises(grpc.RpcError) as ei:
        stubs.logs.ShipLogs(bad)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trial_id" in ei.value.details()
