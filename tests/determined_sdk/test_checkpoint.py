"""Checkpoints through a real master: listing and sorting, metadata, download, delete."""

from __future__ import annotations

import filecmp
import pathlib
from collections.abc import Callable

import pytest

from determined_sdk import (
    Checkpoint,
    CheckpointSortBy,
    CheckpointState,
    Determined,
    DownloadMode,
    Experiment,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OrderBy,
)


def test_default_sort_is_searcher_metric_best_first(finished: Experiment) -> None:
    ckpts = finished.list_checkpoints()
    assert len(ckpts) == 6
    losses = [c.validation_metrics["loss"] for c in ckpts]
    assert losses == sorted(losses)  # smaller_is_better: ascending
    assert all(c.hydrated and c.state is CheckpointState.COMPLETED for c in ckpts)


def test_sort_by_metric_name_both_orders(finished: Experiment) -> None:
    asc = finished.list_checkpoints(sort_by="accuracy", order_by=OrderBy.ASC)
    desc = finished.list_checkpoints(sort_by="accuracy", order_by=OrderBy.DESCENDING)
    acc = [c.validation_metrics["accuracy"] for c in asc]
    assert acc == sorted(acc)
    assert [c.uuid for c in desc] == [c.uuid for c in reversed(asc)]
    top = finished.list_checkpoints(sort_by="accuracy", order_by=OrderBy.DESC, max_results=2)
    assert [c.uuid for c in top] == [c.uuid for c in desc[:2]]


def test_sort_by_enum_keys(finished: Experiment) -> None:
    by_steps = finished.list_checkpoints(CheckpointSortBy.BATCH_NUMBER, OrderBy.ASC)
    steps = [c.steps_completed for c in by_steps]
    assert steps == sorted(steps) and set(steps) == {20, 40, 60}
    by_uuid = finished.list_checkpoints(CheckpointSortBy.UUID, OrderBy.DESC)
    assert [c.uuid for c in by_uuid] == sorted((c.uuid for c in by_uuid), reverse=True)
    by_trial = finished.list_checkpoints(CheckpointSortBy.TRIAL_ID, OrderBy.ASC)
    assert [c.trial_id for c in by_trial] == sorted(c.trial_id for c in by_trial)
    by_time = finished.list_checkpoints(CheckpointSortBy.END_TIME, OrderBy.DESC)
    times = [c.report_time for c in by_time]
    assert times == sorted(times, reverse=True)
    searcher = finished.list_checkpoints(CheckpointSortBy.SEARCHER_METRIC, OrderBy.DESC)
    assert [c.validation_metrics["loss"] for c in searcher] == sorted(
        (c.validation_metrics["loss"] for c in searcher), reverse=True
    )


def test_trial_list_checkpoints(finished: Experiment) -> None:
    trial = finished.list_trials()[0]
    ckpts = trial.list_checkpoints(CheckpointSortBy.BATCH_NUMBER, OrderBy.DESC)
    assert [c.steps_completed for c in ckpts] == [60, 40, 20]
    assert all(c.trial_id == trial.id and c.experiment_id == finished.id for c in ckpts)
    assert ckpts[0].uuid == trial.latest_checkpoint_uuid
    c = ckpts[-1]
    assert c.metadata["step"] == 2 and c.metadata["steps_completed"] == 20
    assert set(c.resources) == {"model.bin", "sub/state.json", "empty.txt"}
    assert c.resources["model.bin"] == 3000
    assert c.training_metrics["loss"] > 0
    assert c.storage["type"] == "shared_fs"


def test_list_checkpoints_bad_args(finished: Experiment, det: Determined) -> None:
    with pytest.raises(InvalidArgumentError, match="max_results"):
        finished.list_checkpoints(max_results=-1)
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        finished.list_checkpoints(sort_by="")
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        finished.list_checkpoints(sort_by=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="order_by"):
        finished.list_checkpoints(order_by="asc")  # type: ignore[arg-type]
    assert finished.list_checkpoints(max_results=0) == []
    with pytest.raises(NotFoundError):
        Experiment(99999, det).list_checkpoints()
    with pytest.raises(NotFoundError):
        det.get_checkpoint("no-such-uuid")
    with pytest.raises(InvalidArgumentError, match="uuid"):
        Checkpoint("", det)


def test_deprecated_trial_checkpoint_calls_warn(finished: Experiment) -> None:
    trial = finished.list_trials()[1]
    with pytest.warns(DeprecationWarning, match="list_checkpoints"):
        got = trial.get_checkpoints()
    assert len(got) == 3
    with pytest.warns(DeprecationWarning, match="list_checkpoints"):
        best = trial.top_checkpoint()
    assert best.uuid == trial.list_checkpoints(max_results=1)[0].uuid
    with pytest.warns(DeprecationWarning):
        latest = trial.select_checkpoint(latest=True)
    assert latest is not None and latest.uuid == trial.latest_checkpoint_uuid
    with pytest.warns(DeprecationWarning):
        by_uuid = trial.select_checkpoint(uuid=best.uuid)
    assert by_uuid is not None and by_uuid.steps_completed == best.steps_completed
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgumentError):
        trial.select_checkpoint(latest=True, best=True)


def _same_tree(a: pathlib.Path, b: pathlib.Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def test_download_direct_and_through_master(
    finished: Experiment, det: Determined, tmp_path: pathlib.Path
) -> None:
    ckpt = finished.list_checkpoints(max_results=1)[0]
    source = pathlib.Path(ckpt.storage["path"], ckpt.uuid)
    direct = ckpt.download(tmp_path / "direct", mode=DownloadMode.DIRECT)
    via_master = Checkpoint(ckpt.uuid, det).download(tmp_path / "master", mode="master")
    auto = det.get_checkpoint(ckpt.uuid).download(tmp_path / "auto")
    for got in (direct, via_master, auto):
        assert _same_tree(source, got)
    assert (via_master / "empty.txt").read_bytes() == b""
    with pytest.raises(InvalidArgumentError, match="mode"):
        ckpt.download(tmp_path / "x", mode="ftp")


def test_metadata_and_delete(
    det: Determined, make_experiment: Callable[..., Experiment], tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(name="ckpt-delete", hyperparameters={"steps": 2, "ckpt_every": 1})
    assert exp.wait(interval=0.1, timeout=120).value == "COMPLETED"
    first, second = exp.list_checkpoints(CheckpointSortBy.BATCH_NUMBER, OrderBy.ASC)
    first.add_metadata({"note": "good", "nested": {"a": 1}})
    assert first.metadata["note"] == "good"
    other = det.get_checkpoint(first.uuid)
    assert other.metadata["nested"] == {"a": 1}
    first.remove_metadata(["note"])
    assert "note" not in first.metadata and "nested" in first.metadata
    assert other.metadata["note"] == "good"  # cached until reload
    other.reload()
    assert "note" not in other.metadata
    with pytest.raises(InvalidArgumentError, match="metadata"):
        first.add_metadata(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="metadata"):
        first.add_metadata({"bad": object()})

    files = pathlib.Path(first.storage["path"], first.uuid)
    assert files.is_dir()
    first.delete()
    assert first.state is CheckpointState.DELETED
    assert not files.exists()
    # Deleted checkpoints stay listed, as DELETED (Determined lists them).
    listed = {c.uuid: c.state for c in exp.list_checkpoints()}
    assert listed == {first.uuid: CheckpointState.DELETED, second.uuid: CheckpointState.COMPLETED}
    with pytest.raises(FailedPreconditionError, match="deleted"):
        first.download(tmp_path / "gone")
    with pytest.raises(NotFoundError):
        Checkpoint("no-such-uuid", det).delete()

    # Deleting the experiment removes the files of its remaining checkpoints too.
    kept = pathlib.Path(second.storage["path"], second.uuid)
    assert kept.is_dir()
    exp.delete()
    assert not kept.exists()
    with pytest.raises(NotFoundError):
        second.reload()
