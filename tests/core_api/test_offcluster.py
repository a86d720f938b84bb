"""Off-cluster mode: no master, no cluster info; the same script runs and nothing is lost."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import subprocess
import sys

import pytest

import core_api
from core_api import ContextClosedError, NotFoundError


def test_import_does_not_import_torch() -> None:
    code = "import core_api, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_off_cluster_mode_basics(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="core_api")
    with core_api.init(checkpoint_storage=tmp_path / "ckpts") as ctx:
        assert ctx.mode == "off-cluster"
        assert ctx.info is None
        assert core_api.get_cluster_info() is None
        assert ctx.distributed.rank == 0 and ctx.distributed.size == 1
        ctx.train.report_training_metrics(1, {"loss": 0.5})
        ctx.train.report_validation_metrics(1, {"acc": 0.9})
        ctx.train.report_metrics("custom", 1, {"x": 1})
        ctx.train.report_progress(0.5)
        assert ctx.train.get_experiment_best_validation() is None
        assert ctx.preempt.should_preempt() is False
        # No length given: the searcher says so instead of training a silent single step.
        with pytest.raises(ValueError, match="no searcher length"):
            _complete_all(ctx)
    text = caplog.text
    assert "training metrics at step 1" in text and "'loss': 0.5" in text
    assert "validation metrics at step 1" in text


def _complete_all(ctx: core_api.Context) -> list[int]:
    lengths = []
    for op in ctx.searcher.operations():
        lengths.append(op.length)
        op.report_progress(op.length / 2)
        op.report_completed(0.1)
    return lengths


def test_max_length_sets_the_single_op(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path, max_length=25) as ctx:
        assert _complete_all(ctx) == [25]


def test_max_length_in_epochs(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path, max_length={"epochs": 2}) as ctx:
        seen = []
        for op in ctx.searcher.operations():
            seen.append((op.length, op.unit))
            op.report_completed(0.0)
        assert seen == [(2, "epochs")]


def test_op_must_be_completed(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path, max_length=1) as ctx:
        ops = ctx.searcher.operations()
        next(ops)
        with pytest.raises(RuntimeError, match="report_completed"):
            next(ops)


def test_checkpoint_default_dir_is_cwd_checkpoints(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with core_api.init() as ctx:
        with ctx.checkpoint.store_path({"steps_completed": 3, "note": "hi"}) as (path, sid):
            (path / "model.bin").write_bytes(b"abc")
        assert path == tmp_path / "checkpoints" / sid
    meta = json.loads((tmp_path / "checkpoints" / sid / "metadata.json").read_text())
    assert meta == {"steps_completed": 3, "note": "hi"}


def test_checkpoint_round_trip(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    with core_api.init(checkpoint_storage=tmp_path / "store") as ctx:
        sid = ctx.checkpoint.upload(src, {"steps_completed": 10})
        assert ctx.checkpoint.get_metadata(sid) == {"steps_completed": 10}
        out = tmp_path / "out"
        ctx.checkpoint.download(sid, out)
        assert (out / "a.txt").read_text() == "A" and (out / "sub" / "b.txt").read_text() == "B"
        sel = tmp_path / "sel"
        ctx.checkpoint.download(sid, sel, selector=lambda p: p.startswith("sub/"))
        assert sorted(p.name for p in sel.rglob("*") if p.is_file()) == ["b.txt"]
        with ctx.checkpoint.restore_path(sid) as p:
            assert (p / "a.txt").read_text() == "A"
        with ctx.checkpoint.restore_path(sid, selector=lambda p: p == "a.txt") as p:
            assert sorted(x.name for x in p.iterdir()) == ["a.txt"]
        ctx.checkpoint.delete(sid)
        with pytest.raises(NotFoundError, match=f"checkpoint '{sid}' not found"):
            ctx.checkpoint.get_metadata(sid)


def test_store_path_body_error_removes_partial_checkpoint(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        with (
            pytest.raises(ZeroDivisionError),
            ctx.checkpoint.store_path({"steps_completed": 1}) as (path, _sid),
        ):
            (path / "x").write_text("partial")
            _ = 1 / 0
        assert not path.exists()


def test_bad_checkpoint_input(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        with (
            pytest.raises(ValueError, match="steps_completed"),
            ctx.checkpoint.store_path({"epoch": 1}),
        ):
            pass
        with pytest.raises(ValueError, match="steps_completed"):
            ctx.checkpoint.upload(tmp_path, {})
        with pytest.raises(TypeError, match="JSON"):
            ctx.checkpoint.upload(tmp_path, {"steps_completed": 1, "obj": object()})
        for bad in ("xyz", "../etc"):
            with pytest.raises(NotFoundError, match=f"checkpoint '{bad}' not found"):
                ctx.checkpoint.download(bad, tmp_path / "o")
            with pytest.raises(NotFoundError), ctx.checkpoint.restore_path(bad):
                pass
            with pytest.raises(NotFoundError):
                ctx.checkpoint.delete(bad)
    assert not list(tmp_path.iterdir()), "no checkpoint directory left behind"


def test_metric_values(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np
    import torch

    caplog.set_level(logging.INFO, logger="core_api")
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        ctx.train.report_training_metrics(
            2,
            {
                "f": 1.5,
                "i": 3,
                "b": True,
                "np": np.float32(0.25),
                "npi": np.int64(4),
                "t": torch.tensor(0.75),
                "nan": math.nan,
                "inf": -math.inf,
            },
        )
        with pytest.raises(TypeError, match="metric 'acc' must be a number, got str"):
            ctx.train.report_training_metrics(3, {"loss": 1.0, "acc": "high"})
        with pytest.raises(TypeError, match="metric 'v' must be a number"):
            ctx.train.report_validation_metrics(3, {"v": torch.ones(3)})
        with pytest.raises(TypeError, match="metric 'n' must be a number, got NoneType"):
            ctx.train.report_validation_metrics(3, {"n": None})
        with pytest.raises(TypeError, match="metric names must be str"):
            ctx.train.report_validation_metrics(3, {1: 1.0})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="steps_completed must be an int"):
            ctx.train.report_training_metrics(1.5, {"x": 1})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="steps_completed must be >= 0"):
            ctx.train.report_training_metrics(-1, {"x": 1})
        with pytest.raises(TypeError, match="dict"):
            ctx.train.report_training_metrics(1, [("x", 1)])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            ctx.train.report_metrics("", 1, {"x": 1})
        with pytest.raises(ValueError, match="progress"):
            ctx.train.report_progress(1.5)
    assert "'t': 0.75" in caplog.text and "'np': 0.25" in caplog.text


def test_calls_after_close_raise(tmp_path: pathlib.Path) -> None:
    ctx = core_api.init(checkpoint_storage=tmp_path)
    ctx.close()
    ctx.close()  # idempotent
    with pytest.raises(ContextClosedError, match="closed"):
        ctx.train.report_training_metrics(1, {"x": 1.0})
    assert isinstance(ContextClosedError("x"), RuntimeError)
    with pytest.raises(ContextClosedError):
        ctx.train.report_progress(0.1)
    with pytest.raises(ContextClosedError), ctx.checkpoint.store_path({"steps_completed": 1}):
        pass
    with pytest.raises(ContextClosedError):
        ctx.preempt.should_preempt()
    with pytest.raises(ContextClosedError):
        next(iter(ctx.searcher.operations()))


def test_init_rejects_bad_max_length(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="max_length"):
        core_api.init(checkpoint_storage=tmp_path, max_length=-1)


def test_unknown_storage_type_is_clear() -> None:
    with pytest.raises(ValueError, match=r"checkpoint_storage\.type: must be one of .*'hdfs'"):
        core_api.init(checkpoint_storage={"type": "hdfs", "path": "/x"})
    with pytest.raises(ValueError, match=r"checkpoint_storage\.bucket: required for s3"):
        core_api.init(checkpoint_storage={"type": "s3"})
