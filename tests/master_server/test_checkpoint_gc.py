"""Checkpoint GC when an experiment finishes: keep latest + best per trial and model versions."""

from __future__ import annotations

import json
import pathlib

import pytest

from determined_sdk.proto import checkpoint_pb2, common_pb2, model_pb2
from tests.support import Stubs, single_config, wait_for, write_model_dir

pytestmark = pytest.mark.slow

TRIAL = """
    import json, os, pathlib, time, uuid
    import grpc
    from determined_sdk._transport import channel_from_env
    from determined_sdk.metrics_wire import pack_reports
    from determined_sdk.proto import checkpoint_pb2, checkpoint_pb2_grpc, trial_pb2_grpc
    info = json.load(open(os.environ["DET_CLUSTER_INFO"]))
    ch = channel_from_env()
    ckpts = checkpoint_pb2_grpc.CheckpointServiceStub(ch)
    trials = trial_pb2_grpc.TrialServiceStub(ch)
    tid = info["trial_id"]
    for step, loss in enumerate([5.0, 1.0, 4.0, 3.0, 2.0], start=1):
        batch = [("validation", step, {"loss": loss}, 0.0)]
        trials.ReportMetrics(pack_reports(tid, str(step), batch))
        u = str(uuid.uuid4())
        d = pathlib.Path(info["checkpoint_storage"]["path"]) / u
        d.mkdir(parents=True)
        (d / "w.bin").write_bytes(b"x" * step)
        ckpts.ReportCheckpoint(checkpoint_pb2.ReportCheckpointRequest(trial_id=tid, uuid=u,
            steps_completed=step, resources={"w.bin": step}))
    while not pathlib.Path(GATE).exists():
        time.sleep(0.02)
"""


def test_gc_keeps_latest_best_and_registered(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "gate"
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL.replace("GATE", repr(str(gate)))})
    exp = stubs.create(single_config("python main.py"), md)

    def listed() -> list[checkpoint_pb2.Checkpoint]:
        req = checkpoint_pb2.ListCheckpointsRequest(experiment_id=exp.id, sort_by="steps_completed")
        return list(stubs.checkpoints.ListCheckpoints(req).checkpoints)

    ckpts = wait_for(lambda: (c := listed()) and len(c) == 5 and c, 60, "5 checkpoints")
    assert [c.validation_metrics["loss"] for c in ckpts] == [5.0, 1.0, 4.0, 3.0, 2.0]
    stubs.models.CreateModel(model_pb2.CreateModelRequest(name="m"))
    stubs.models.RegisterModelVersion(
        model_pb2.RegisterModelVersionRequest(model_name="m", checkpoint_uuid=ckpts[2].uuid)
    )
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    kept = {ckpts[1].uuid, ckpts[2].uuid, ckpts[4].uuid}  # best, registered, latest

    def states() -> dict[str, str]:
        req = checkpoint_pb2.ListCheckpointsRequest(
            experiment_id=exp.id, states=list(common_pb2.CheckpointState.values())[1:]
        )
        return {
            c.uuid: common_pb2.CheckpointState.Name(c.state)
            for c in stubs.checkpoints.ListCheckpoints(req).checkpoints
        }

    wait_for(
        lambda: {u for u, s in states().items() if s == "CHECKPOINT_STATE_COMPLETED"} == kept,
        30,
        "GC to delete the other checkpoints",
    )
    # Records are marked DELETED first, then the files go (never COMPLETED without files).
    paths = {c.uuid: pathlib.Path(json.loads(c.storage_json)["path"]) / c.uuid for c in ckpts}
    wait_for(
        lambda: all(p.exists() == (u in kept) for u, p in paths.items()),
        30,
        "the files of deleted checkpoints to be removed",
    )
