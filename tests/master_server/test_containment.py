"""Checkpoint containment through a real master: storage roots, no escapes in or out."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable

import grpc
import pytest
import yaml

from determined_sdk.proto import checkpoint_pb2, experiment_pb2
from master_server.app import Master
from tests.support import Stubs, single_config


def _unmanaged(stubs: Stubs) -> int:
    resp = stubs.experiments.CreateUnmanagedTrial(
        experiment_pb2.CreateUnmanagedTrialRequest(config="name: contained", hparams_json="{}")
    )
    return resp.trial.id


def _report(stubs: Stubs, trial_id: int, uuid: str, resources: dict[str, int]) -> None:
    stubs.checkpoints.ReportCheckpoint(
        checkpoint_pb2.ReportCheckpointRequest(
            trial_id=trial_id,
            uuid=uuid,
            steps_completed=1,
            resources=resources,
            metadata_json=json.dumps({"steps_completed": 1}),
        )
    )


def _code(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_storage_paths_outside_the_roots_are_refused(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    extra = tmp_path / "shared-ckpts"
    extra.mkdir()
    m = master_factory(checkpoint_roots=[extra])
    stubs = Stubs.connect(m.address)
    try:
        for key, path in (
            ("host_path", "/etc"),
            ("path", str(tmp_path)),
            ("path", str(m.checkpoint_dir / ".." / "..")),
        ):
            cfg = single_config("true", checkpoint_storage={key: path})
            with pytest.raises(grpc.RpcError) as info:
                stubs.create(cfg, activate=False)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"checkpoint_storage.{key}" in info.value.details()
            assert "--checkpoint-root" in info.value.details()
        # A symlink inside a root that points out of it is out.
        link = extra / "escape"
        link.symlink_to(tmp_path)
        with pytest.raises(grpc.RpcError):
            stubs.create(single_config("true", checkpoint_storage={"path": str(link)}))
        ok = stubs.create(single_config("true", checkpoint_storage={"path": str(extra / "x")}))
        got = yaml.safe_load(stubs.experiment(ok.id).config_json)
        assert got["checkpoint_storage"]["path"] == str(extra.resolve() / "x")
    finally:
        stubs.channel.close()


def test_report_download_and_delete_stay_inside(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    tid = _unmanaged(stubs)
    root = master.checkpoint_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")

    # Names that leave the checkpoint are refused before anything is recorded.
    for uuid in ("..", "../x", "a/b", ""):
        assert _code(lambda u=uuid: _report(stubs, tid, u, {})) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        _code(lambda: _report(stubs, tid, "u1", {"../../etc/passwd": 1}))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # A checkpoint directory that is a symlink out, or a file in it that is one: refused.
    (root / "linked").symlink_to(outside)
    assert (
        _code(lambda: _report(stubs, tid, "linked", {"secret.txt": 10}))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    (root / "sneaky").mkdir()
    (root / "sneaky" / "model.bin").write_bytes(b"w")
    (root / "sneaky" / "leak").symlink_to(outside / "secret.txt")
    assert (
        _code(lambda: _report(stubs, tid, "sneaky", {"model.bin": 1, "leak": 10}))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # Reported honestly, then a symlink out appears: the download refuses, sends nothing.
    _report(stubs, tid, "sneaky", {"model.bin": 1})
    chunks: list[checkpoint_pb2.CheckpointChunk] = []
    with pytest.raises(grpc.RpcError) as info:
        for c in stubs.checkpoints.DownloadCheckpoint(
            checkpoint_pb2.DownloadCheckpointRequest(uuid="sneaky")
        ):
            chunks.append(c)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "symlink" in info.value.details()
    assert not any(b"top secret" in c.data for c in chunks)
    # A FIFO would hang a reader: refused too.
    (root / "sneaky" / "leak").unlink()
    os.mkfifo(root / "sneaky" / "pipe")
    with pytest.raises(grpc.RpcError) as info:
        list(
            stubs.checkpoints.DownloadCheckpoint(
                checkpoint_pb2.DownloadCheckpointRequest(uuid="sneaky"), timeout=30
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (root / "sneaky" / "pipe").unlink()
    # Deleting removes the checkpoint's own files; a symlink in it to outside is not followed.
    (root / "sneaky" / "leak").symlink_to(outside)
    stubs.checkpoints.DeleteCheckpoints(checkpoint_pb2.DeleteCheckpointsRequest(uuids=["sneaky"]))
    assert not (root / "sneaky").exists()
    assert (outside / "secret.txt").read_text() == "top secret"


def test_unmanaged_storage_outside_the_roots_is_never_read(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    """An unmanaged run keeps checkpoints where it runs; the master records, never reads there."""
    mine = tmp_path / "client-side"
    (mine / "c1").mkdir(parents=True)
    (mine / "c1" / "w.bin").write_bytes(b"weights")
    cfg = f"name: u\ncheckpoint_storage: {{path: {mine}}}\n"
    tid = stubs.experiments.CreateUnmanagedTrial(
        experiment_pb2.CreateUnmanagedTrialRequest(config=cfg, hparams_json="{}")
    ).trial.id
    _report(stubs, tid, "c1", {"w.bin": 7})
    with pytest.raises(grpc.RpcError) as info:
        list(
            stubs.checkpoints.DownloadCheckpoint(
                checkpoint_pb2.DownloadCheckpointRequest(uuid="c1")
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "outside this master's checkpoint roots" in info.value.details()
    stubs.checkpoints.DeleteCheckpoints(checkpoint_pb2.DeleteCheckpointsRequest(uuids=["c1"]))
    assert (mine / "c1" / "w.bin").read_bytes() == b"weights"  # the record goes, the files stay


def test_a_download_cancelled_by_the_caller_ends_quietly(
    master: Master, stubs: Stubs, caplog: pytest.LogCaptureFixture
) -> None:
    tid = _unmanaged(stubs)
    (master.checkpoint_dir / "big").mkdir()
    (master.checkpoint_dir / "big" / "w.bin").write_bytes(os.urandom(8 * 2**20))
    _report(stubs, tid, "big", {"w.bin": 8 * 2**20})
    call = stubs.checkpoints.DownloadCheckpoint(
        checkpoint_pb2.DownloadCheckpointRequest(uuid="big")
    )
    assert next(call).data  # the stream is going; the caller gives up on it
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    # The master ends its side at once, without an error of its own (a thread-pool handler
    # went on writing to the cancelled call: gRPC logged an ExecuteBatchError), and goes on
    # answering. Another full download shows the server has passed the cancellation.
    got = b"".join(
        c.data
        for c in stubs.checkpoints.DownloadCheckpoint(
            checkpoint_pb2.DownloadCheckpointRequest(uuid="big")
        )
    )
    assert len(got) == 8 * 2**20
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]
