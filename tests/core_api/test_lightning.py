"""core_api.lightning: the logger, the callback and fit() (off-cluster, and on-cluster as the
training code of a real trial on a real master (``cluster_trial``): metrics, checkpoints,
searcher promotion, preemption)."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import core_api  # noqa: E402
import core_api.lightning as cl  # noqa: E402
from determined_sdk.metrics_wire import unpack_reports  # noqa: E402
from determined_sdk.proto import checkpoint_pb2  # noqa: E402
from tests.core_api.live_trial import LiveTrial  # noqa: E402
from tests.core_api.wire import Wire  # noqa: E402
from tests.support import Stubs, wait_for  # noqa: E402

Make = Callable[..., LiveTrial]

TRAINER = {"accelerator": "cpu", "log_every_n_steps": 5, "val_check_interval": 10}


class Tiny(pl.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders() -> dict[str, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    ds = TensorDataset(x, y)
    return {
        "train_dataloaders": DataLoader(ds, batch_size=8, shuffle=True, generator=g),
        "val_dataloaders": DataLoader(ds, batch_size=64),
    }


def test_import_core_api_does_not_import_lightning() -> None:
    import subprocess
    import sys

    code = "import core_api, sys; assert 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fit_off_cluster(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="core_api")
    with core_api.init(checkpoint_storage=tmp_path, max_length=25) as ctx:
        trainer = cl.fit(
            ctx, Tiny(), searcher_metric="val_loss", trainer_kwargs=TRAINER, **loaders()
        )
    assert trainer is not None and trainer.global_step == 25
    saved = {
        json.loads((p / "metadata.json").read_text())["steps_completed"] for p in tmp_path.iterdir()
    }
    assert saved == {10, 20, 25}
    assert all((p / cl.CHECKPOINT_FILE).is_file() for p in tmp_path.iterdir())
    assert "searcher operation of length 25 completed" in caplog.text
    assert "validation metrics at step 25" in caplog.text


def stored_checkpoints(stubs: Stubs, t: LiveTrial) -> list[checkpoint_pb2.Checkpoint]:
    """The trial's checkpoints as the master recorded them (by steps)."""
    resp = stubs.checkpoints.ListCheckpoints(
        checkpoint_pb2.ListCheckpointsRequest(trial_id=t.trial_id)
    )
    return list(resp.checkpoints)


def sent_steps(wire: Wire, group: str) -> list[int]:
    """The steps of the ``group`` reports in the order the client sent them."""
    return [
        steps
        for req in wire.requests("ReportMetrics")
        for g, steps, _, _ in unpack_reports(req)
        if g == group
    ]


def test_fit_follows_promotions_and_reports(cluster_trial: Make, stubs: Stubs, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[20])

    class Promote(pl.Callback):  # type: ignore[misc]
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.global_step == 20:
                t.validate_after(40)  # ASHA promotes the trial
            else:
                t.post({"type": "stop", "request_id": "r1"})  # the searcher is done with it

    with core_api.init() as ctx:
        trainer = cl.fit(
            ctx,
            Tiny(),
            searcher_metric="val_loss",
            trainer_kwargs={**TRAINER, "callbacks": [Promote()]},
            **loaders(),
        )
    assert trainer is not None and trainer.global_step == 40
    assert [e["length"] for e in t.events() if e["type"] == "validation"] == [20, 40]
    ckpts = stored_checkpoints(stubs, t)
    assert [c.steps_completed for c in ckpts] == [10, 20, 30, 40]
    assert all(cl.CHECKPOINT_FILE in c.resources for c in ckpts)
    training = [s for _, s, _, _ in t.metrics("training")]
    # sent in step order, and the master stored each report once
    assert sent_steps(wire, "training") == training
    assert training == sorted(training) and training[-1] <= 40 and training[0] >= 1
    validation = [s for _, s, _, _ in t.metrics("validation")]
    assert validation == [10, 20, 30, 40]
    # the second fit resumed from the step-20 checkpoint instead of starting over
    assert training.count(5) == 1
    t.release()
    assert t.wait_settled() == "COMPLETED"


def test_preemption_checkpoints_and_stops(cluster_trial: Make, stubs: Stubs, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[200])
    with core_api.init() as ctx:
        (watch,) = wire.wait_sent("WatchPreemption")
        stubs.action(t.experiment_id, "pause")
        wait_for(lambda: watch.code is not None, 30, "the long poll to answer the pause")
        trainer = cl.fit(
            ctx, Tiny(), searcher_metric="val_loss", trainer_kwargs=TRAINER, **loaders()
        )
    assert watch.code == grpc.StatusCode.OK and watch.response.preempt
    assert trainer is not None and trainer.global_step < 200
    # no op was completed, and the preemption was acknowledged once
    assert [e for e in t.events() if e["type"] == "validation"] == []
    assert wire.calls("CompleteSearcherOperation") == []
    assert len(wire.calls("AckPreemption")) == 1
    (ckpt,) = [c for c in stored_checkpoints(stubs, t) if c.steps_completed == trainer.global_step]
    assert cl.CHECKPOINT_FILE in ckpt.resources
    assert t.trial().latest_checkpoint_uuid == ckpt.uuid
    t.release()
    assert t.wait_settled() == "PAUSED"  # the master stopped it for a pause


def test_missing_searcher_metric_is_named(tmp_path: pathlib.Path) -> None:
    with (
        core_api.init(checkpoint_storage=tmp_path, max_length=5) as ctx,
        pytest.raises(KeyError, match="'nope' was never logged"),
    ):
        cl.fit(ctx, Tiny(), searcher_metric="nope", trainer_kwargs=TRAINER, **loaders())
