"""Checkpoints in S3 end to end: a real master, real trial processes and moto's S3 server on
loopback. A trial saves to S3, a paused trial resumes from it, the SDK downloads it directly
and through the master, checkpoint GC and experiment deletion remove the objects (once every
precondition holds), and bad configs are refused by field."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import socket
import sys
from typing import Any

import grpc
import pytest
import yaml

import core_api
from determined_sdk import Determined, DownloadMode
from determined_sdk import checkpoint_storage as cs
from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from determined_sdk.proto import checkpoint_pb2, common_pb2, logs_pb2
from master_server.app import Master
from tests.s3_server import MotoServer
from tests.support import REPO, Stubs, trial_state, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples" / "core_api"


@pytest.fixture(autouse=True)
def trial_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial processes import core_api (and the supervisor) from this checkout."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )


def s3_storage(server: MotoServer, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": bucket,
        "prefix": "runs/ckpts",
        "endpoint_url": server.endpoint_url,
        **extra,
    }


def objects(config: dict[str, Any], uuid: str) -> dict[str, int]:
    return cs.from_config(config).list_files(uuid)


def all_checkpoints(stubs: Stubs, trial_id: int) -> list[checkpoint_pb2.Checkpoint]:
    resp = stubs.checkpoints.ListCheckpoints(
        checkpoint_pb2.ListCheckpointsRequest(
            trial_id=trial_id,
            sort_by="steps_completed",
            states=list(common_pb2.CheckpointState.values())[1:],
        )
    )
    return list(resp.checkpoints)


def trial_logs(stubs: Stubs, trial_id: int) -> str:
    lines = []
    for page in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=trial_id)):
        lines.extend(line.message for line in page.lines)
    return "\n".join(lines)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_trial_saves_to_s3_resumes_downloads_gc_and_delete(
    master: Master,
    stubs: Stubs,
    s3_server: MotoServer,
    s3_bucket: str,
    tmp_path: pathlib.Path,
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(
        EXAMPLES, model_dir, ignore=shutil.ignore_patterns("__pycache__", "checkpoints")
    )
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLES / "4_preemption.yaml").read_text())
    batches = 300
    cfg["hyperparameters"].update(batches=batches, step_delay=0.01)
    cfg["searcher"]["max_length"] = {"batches": batches}
    # GC keeps only the latest checkpoint: the one the pause wrote goes at the end.
    storage = s3_storage(s3_server, s3_bucket, save_trial_latest=1, save_trial_best=0)
    cfg["checkpoint_storage"] = storage
    record = cs.normalize_config(storage)
    exp = stubs.create(cfg, model_dir)

    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 50), None),
        120,
        "the trial to report 50 steps",
    )
    stubs.action(exp.id, "pause")
    assert stubs.wait_exp(exp.id, "PAUSED", timeout=60) == "PAUSED"
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 60, "the trial to pause")
    (paused,) = all_checkpoints(stubs, trial.id)
    assert json.loads(paused.storage_json) == record  # no secret, no local path
    assert objects(storage, paused.uuid) == dict(paused.resources)
    assert "metadata.json" in paused.resources
    assert not (master.checkpoint_dir / paused.uuid).exists()

    stubs.action(exp.id, "activate")
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=240) == "COMPLETED"
    text = trial_logs(stubs, trial.id)
    assert f"resumed from checkpoint {paused.uuid} at step {paused.steps_completed}" in text
    final = all_checkpoints(stubs, trial.id)[-1]
    assert final.steps_completed == batches

    # GC deletes the paused checkpoint's objects (it is neither latest nor best).
    wait_for(lambda: not objects(storage, paused.uuid), 60, "GC to remove the paused checkpoint")
    states = {c.uuid: c.state for c in all_checkpoints(stubs, trial.id)}
    assert states[paused.uuid] == common_pb2.CHECKPOINT_STATE_DELETED
    assert objects(storage, final.uuid) == dict(final.resources)

    with Determined(master.address) as det:
        ck = det.get_checkpoint(final.uuid)
        assert ck.storage == record
        expected = {
            rel: f.read()
            for rel in final.resources
            for f in [cs.from_config(storage).open(final.uuid, rel)]
        }
        for mode in (DownloadMode.DIRECT, DownloadMode.MASTER, DownloadMode.AUTO):
            out = ck.download(tmp_path / f"dl-{mode.value}", mode=mode)
            assert tree(out) == expected, mode

        # A registered model version keeps every object of the experiment.
        model = det.create_model(f"m-{exp.id}")
        version = model.register_version(final.uuid)
        with pytest.raises(FailedPreconditionError, match="model"):
            det.get_experiment(exp.id).delete()
        assert objects(storage, final.uuid) == dict(final.resources)
        version.delete()
        det.get_experiment(exp.id).delete()
    assert objects(storage, final.uuid) == {}


def test_master_streams_s3_checkpoint_over_grpc(
    master: Master, stubs: Stubs, s3_server: MotoServer, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    """The gRPC stream (what a TLS master serves) carries S3 files as plain CheckpointChunks."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(20 << 20))  # several chunks
    (src / "d" / "empty").write_bytes(b"")
    storage = s3_storage(s3_server, s3_bucket)
    with core_api.init(
        master=master.address, checkpoint_storage=storage, capture_output=False
    ) as ctx:
        uuid = ctx.checkpoint.upload(src, {"steps_completed": 7, "tag": "x"})
        assert ctx.checkpoint.get_metadata(uuid) == {"steps_completed": 7, "tag": "x"}
        with ctx.checkpoint.restore_path(uuid) as path:  # a local copy, for the block only
            assert digest((path / "big.bin").read_bytes()) == digest((src / "big.bin").read_bytes())
            restored = path
        assert not restored.exists()
    files: dict[str, bytearray] = {}
    for chunk in stubs.checkpoints.DownloadCheckpoint(
        checkpoint_pb2.DownloadCheckpointRequest(uuid=uuid)
    ):
        buf = files.setdefault(chunk.path, bytearray())
        assert chunk.offset == len(buf)
        buf += chunk.data
    # Compared by digest: a failing comparison of 20 MiB would print for minutes.
    assert digest(bytes(files["big.bin"])) == digest((src / "big.bin").read_bytes())
    assert files["d/empty"] == b""
    assert json.loads(files["metadata.json"]) == {"steps_completed": 7, "tag": "x"}


def test_bulk_port_refuses_unknown_tickets(master: Master) -> None:
    port = master.parts["bulk"].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"0" * 64 + b"\n")
        assert sock.recv(100) == b""  # closed with nothing sent


def test_bad_storage_configs_are_refused_by_field(
    stubs: Stubs, s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {
        "name": "bad-storage",
        "entrypoint": "python x.py",
        "searcher": {"name": "single", "metric": "loss", "max_length": {"batches": 1}},
    }

    def refused(storage: dict[str, Any]) -> str:
        with pytest.raises(grpc.RpcError) as info:
            stubs.create({**base, "checkpoint_storage": storage})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return str(info.value.details())

    assert "checkpoint_storage.bucket: required for s3 storage" in refused({"type": "s3"})
    assert "checkpoint_storage.type: must be one of" in refused({"type": "hdfs", "path": "/x"})
    assert "checkpoint_storage.secret_key: credentials are never stored" in refused(
        {"type": "s3", "bucket": "b", "secret_key": "shh"}
    )
    # The master needs s3fs to delete and stream: without it the experiment is refused.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    details = refused(s3_storage(s3_server, "b"))
    assert "checkpoint_storage.type: 's3' storage needs the s3fs package" in details


def test_unmanaged_s3_checkpoint_delete_and_missing(
    master: Master, stubs: Stubs, s3_server: MotoServer, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    storage = s3_storage(s3_server, s3_bucket)
    with core_api.init(
        master=master.address, checkpoint_storage=storage, capture_output=False
    ) as ctx:
        with ctx.checkpoint.store_path({"steps_completed": 1}) as (path, uuid):
            (path / "w.bin").write_bytes(b"w" * 100)
            assert not objects(storage, uuid)  # uploaded only when the block exits
        assert sorted(objects(storage, uuid)) == ["metadata.json", "w.bin"]
        with pytest.raises(RuntimeError), ctx.checkpoint.store_path({"steps_completed": 2}):
            raise RuntimeError("a failed save uploads nothing")
        ctx.checkpoint.delete(uuid)
        assert objects(storage, uuid) == {}
        with pytest.raises(NotFoundError):
            ctx.checkpoint.download(uuid, tmp_path / "never")
    with Determined(master.address) as det:
        ck = det.get_checkpoint(uuid)
        with pytest.raises(FailedPreconditionError, match="deleted"):
            ck.download(tmp_path / "x")
    with pytest.raises(InvalidArgumentError):
        cs.from_config({"type": "s3", "bucket": ""})
