"""Durable side effects through a real master: GC, deletions and file removals are recorded
before they start, finished after a restart, and refused whole when a precondition fails."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grpc
import pytest

from determined_sdk.proto import checkpoint_pb2, common_pb2, model_pb2
from master_server.engine.jobs import JobRunner
from master_server.store import open_store
from tests.master_server.test_checkpoint_gc import TRIAL
from tests.support import Stubs, single_config, wait_for, write_model_dir

pytestmark = pytest.mark.slow
DONE = "CHECKPOINT_STATE_COMPLETED"


def _run_experiment(stubs: Stubs, tmp_path: pathlib.Path) -> tuple[int, list[Any]]:
    """A finished experiment with 5 checkpoints (losses 5, 1, 4, 3, 2) on disk."""
    gate = tmp_path / "gate"
    gate.touch()
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL.replace("GATE", repr(str(gate)))})
    exp = stubs.create(single_config("python main.py"), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    return exp.id, _all_checkpoints(stubs, exp.id)


def _all_checkpoints(stubs: Stubs, exp_id: int) -> list[Any]:
    req = checkpoint_pb2.ListCheckpointsRequest(
        experiment_id=exp_id,
        sort_by="steps_completed",
        states=list(common_pb2.CheckpointState.values())[1:],
    )
    return list(stubs.checkpoints.ListCheckpoints(req).checkpoints)


def _state(c: Any) -> str:
    return common_pb2.CheckpointState.Name(c.state)


def _path(c: Any) -> pathlib.Path:
    return pathlib.Path(json.loads(c.storage_json)["path"]) / c.uuid


def test_gc_left_pending_by_a_stopped_master_finishes_after_restart(
    master_factory: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    # The first master records GC work but stops before running any of it (as if it had been
    # stopped right after the experiment ended).
    monkeypatch.setattr(JobRunner, "start", lambda self: None)
    m1 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m1.address)
    exp_id, ckpts = _run_experiment(stubs, tmp_path)
    assert [_state(c) for c in ckpts] == [DONE] * 5
    assert all(_path(c).is_dir() for c in ckpts)
    jobs = m1.parts["store"].list_jobs()
    assert [(j.kind, j.payload) for j in jobs] == [("gc_experiment", {"experiment_id": exp_id})]
    m1.stop()
    monkeypatch.undo()

    m2 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m2.address)
    kept = {ckpts[1].uuid, ckpts[4].uuid}  # best (loss 1) and latest
    wait_for(
        lambda: {c.uuid for c in _all_checkpoints(stubs, exp_id) if _state(c) == DONE} == kept,
        30,
        "GC to finish after the restart",
    )
    wait_for(lambda: m2.parts["store"].list_jobs() == [], 30, "no pending job left")
    for c in ckpts:
        assert _path(c).exists() == (c.uuid in kept), c.steps_completed


def test_deletes_refused_by_model_versions_remove_nothing(
    stubs: Stubs, master: Any, tmp_path: pathlib.Path
) -> None:
    exp_id, _ = _run_experiment(stubs, tmp_path)
    kept = wait_for(
        lambda: (
            (cs := [c for c in _all_checkpoints(stubs, exp_id) if _state(c) == DONE])
            and len(cs) == 2
            and cs
        ),
        30,
        "GC",
    )
    registered = kept[0]
    stubs.models.CreateModel(model_pb2.CreateModelRequest(name="digits"))
    stubs.models.RegisterModelVersion(
        model_pb2.RegisterModelVersionRequest(model_name="digits", checkpoint_uuid=registered.uuid)
    )
    runs = master.data_dir / "runs"
    before = sorted(p for p in runs.rglob("*"))
    assert before

    # checkpoint delete of a checkpoint backing a model version: refused, naming both.
    with pytest.raises(grpc.RpcError) as ei:
        stubs.checkpoints.DeleteCheckpoints(
            checkpoint_pb2.DeleteCheckpointsRequest(uuids=[kept[1].uuid, registered.uuid])
        )
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'digits'" in ei.value.details() and "version 1" in ei.value.details()
    # Nothing happened to either checkpoint (the other one was asked for in the same call).
    assert [
        _state(c) for c in _all_checkpoints(stubs, exp_id) if c.uuid in {k.uuid for k in kept}
    ] == [DONE, DONE]
    assert all(_path(c).is_dir() for c in kept)

    # experiment delete: refused before anything is removed; state unchanged.
    with pytest.raises(grpc.RpcError) as ei:
        stubs.action(exp_id, "delete")
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'digits'" in ei.value.details() and "version 1" in ei.value.details()
    assert stubs.exp_state(exp_id) == "COMPLETED"
    assert all(_path(c).is_dir() for c in kept)
    assert sorted(p for p in runs.rglob("*")) == before
    assert master.parts["store"].list_jobs() == []

    # Without the model version, both deletions go through.
    stubs.models.DeleteModelVersion(
        model_pb2.DeleteModelVersionRequest(model_name="digits", version=1)
    )
    out = stubs.checkpoints.DeleteCheckpoints(
        checkpoint_pb2.DeleteCheckpointsRequest(uuids=[registered.uuid])
    ).checkpoints
    assert [_state(c) for c in out] == ["CHECKPOINT_STATE_DELETED"]
    assert not _path(registered).exists()
    stubs.action(exp_id, "delete")
    assert not _path(kept[1]).exists()
    assert not any(runs.glob("trial-*"))


def test_interrupted_experiment_deletion_finishes_on_start(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "data"
    m1 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m1.address)
    exp_id, _ = _run_experiment(stubs, tmp_path)
    wait_for(lambda: m1.parts["store"].list_jobs() == [], 30, "GC done")
    kept = [c for c in _all_checkpoints(stubs, exp_id) if _state(c) == DONE]
    m1.stop()
    # A master that died right after recording the deletion (before removing anything).
    store = open_store(f"sqlite:///{data_dir / 'master.db'}")
    run_dir = data_dir / "runs" / "trial-1"
    store.begin_experiment_deletion(exp_id, [str(_path(c)) for c in kept] + [str(run_dir)])
    assert store.get_experiment(exp_id).state.value == "DELETING"
    store.close()
    assert run_dir.is_dir() and all(_path(c).is_dir() for c in kept)

    m2 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m2.address)

    def gone() -> bool:
        try:
            stubs.experiment(exp_id)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_for(gone, 30, "the deletion to finish")
    wait_for(lambda: m2.parts["store"].list_jobs() == [], 30, "no pending job left")
    assert not run_dir.exists() and not any(_path(c).exists() for c in kept)


def test_orphaned_checkpoint_directories_are_removed_after_the_grace_period(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "data"
    m1 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m1.address)
    exp_id, _ = _run_experiment(stubs, tmp_path)
    wait_for(lambda: m1.parts["store"].list_jobs() == [], 30, "GC done")
    kept = [c for c in _all_checkpoints(stubs, exp_id) if _state(c) == DONE]
    m1.stop()
    root = m1.checkpoint_dir
    # A trial that died before reporting its checkpoint, and a sharded one's staging dir.
    orphan, staging = root / "0b5e7c1e-orphan", root / ".staging-x-rank0"
    for d in (orphan, staging):
        d.mkdir()
        (d / "w.bin").write_bytes(b"x")
    m2 = master_factory(data_dir=data_dir, orphan_checkpoint_grace_s=0.0)
    wait_for(lambda: not orphan.exists() and not staging.exists(), 30, "orphans removed")
    assert all(_path(c).is_dir() for c in kept)  # recorded checkpoints stay
    m2.stop()
    # Within the grace period (default: an hour) an unrecorded directory is kept: its report
    # may still be buffered by a trial that wrote it while the master was down.
    young = root / "written-during-an-outage"
    young.mkdir()
    m3 = master_factory(data_dir=data_dir)
    wait_for(lambda: m3.parts["store"].list_jobs() == [], 30, "start-up jobs done")
    Stubs.connect(m3.address).experiment(exp_id)
    assert young.is_dir()
