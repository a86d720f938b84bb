"""get_tensorboard_path() on a real trial, and its files shown by the TensorBoard export."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

import core_api
from determined_sdk import Determined
from determined_sdk.tensorboard import export_experiments
from master_server.app import Master
from tests.core_api.live_trial import LiveTrial
from tests.support import wait_for


def _scalars(d: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(d))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_path_is_kept_with_the_trial_and_exported(
    cluster_trial: Callable[..., LiveTrial], master: Master, tmp_path: pathlib.Path
) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        tb = ctx.train.get_tensorboard_path()
        assert tb == master.checkpoint_dir.resolve() / "tensorboard" / f"trial-{t.trial_id}"
        assert tb.is_dir() and ctx.train.get_tensorboard_path() == tb
        w = EventFileWriter(str(tb))
        w.add_event(
            Event(step=3, summary=Summary(value=[Summary.Value(tag="own", simple_value=7)]))
        )
        w.close()
        for step in (1, 2, 3):
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
        ctx.train.report_validation_metrics(3, {"loss": 0.25, "acc": 0.5})
    t.release()
    t.wait_settled()

    with Determined(master.address) as det:
        (d,) = export_experiments(det, [t.experiment_id], tmp_path / "tb")
        assert d == tmp_path / "tb" / f"experiment-{t.experiment_id}" / f"trial-{t.trial_id}"
        got = _scalars(d)
        # TensorBoard keeps scalars as float32.
        assert [s for s, _ in got["training/loss"]] == [1, 2, 3]
        assert [v for _, v in got["training/loss"]] == pytest.approx([1.0, 0.5, 1.0 / 3])
        assert got["validation/acc"] == [(3, 0.5)]
        assert _scalars(d / "tensorboard") == {"own": [(3, 7.0)]}  # the trial's own file
        # Exporting again replaces what the first export wrote (no doubled points).
        export_experiments(det, [t.experiment_id], tmp_path / "tb")
        assert _scalars(d)["training/loss"] == got["training/loss"]


def test_tensorboard_files_are_deleted_with_their_experiment(
    cluster_trial: Callable[..., LiveTrial], master: Master
) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        tb = ctx.train.get_tensorboard_path()
        w = EventFileWriter(str(tb))
        w.add_event(Event(step=1, summary=Summary(value=[Summary.Value(tag="x", simple_value=1)])))
        w.close()
        ctx.train.report_training_metrics(1, {"loss": 1.0})
    t.release()
    t.wait_settled()
    other = tb.parent / "trial-999999"  # another trial's files in the same storage
    other.mkdir()
    (other / "events.out.tfevents.0").write_bytes(b"kept")

    with Determined(master.address) as det:
        exp = det.get_experiment(t.experiment_id)

        def finished() -> bool:
            exp.reload()
            return exp.state.value in ("COMPLETED", "ERROR")

        wait_for(finished, 60, f"experiment {exp.id} to finish")
        assert any(tb.iterdir())  # finished, and its files are still there until deleted
        exp.delete()
    wait_for(lambda: not tb.exists(), 60, f"{tb} to be deleted with its experiment")
    assert (other / "events.out.tfevents.0").read_bytes() == b"kept"
