"""core_api.lightning: the logger, the callback and fit() (off-cluster and against the fake
master: metrics, checkpoints, searcher promotion, preemption)."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import core_api  # noqa: E402
import core_api.lightning as cl  # noqa: E402
from tests.core_api.fake_master import FakeMaster  # noqa: E402

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


def test_fit_follows_promotions_and_reports(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    fake.set(lambda st: st.ops.append(20))

    class Promote(pl.Callback):  # type: ignore[misc]
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.global_step == 20:
                fake.set(lambda st: st.ops.append(40))  # ASHA promotes the trial
            else:
                fake.set(lambda st: setattr(st, "searcher_done", True))

    with core_api.init() as ctx:
        ctx.searcher._poll_timeout = 0.2
        trainer = cl.fit(
            ctx,
            Tiny(),
            searcher_metric="val_loss",
            trainer_kwargs={**TRAINER, "callbacks": [Promote()]},
            **loaders(),
        )
    assert trainer is not None and trainer.global_step == 40
    assert [length for length, _ in fake.state.completed] == [20, 40]
    steps = sorted({c.steps_completed for c in fake.state.checkpoints.values()})
    assert steps == [10, 20, 30, 40]
    training = [s for g, s, _, _ in fake.reports() if g == "training"]
    assert training == sorted(training) and training[-1] <= 40 and training[0] >= 1
    validation = [s for g, s, m, _ in fake.reports() if g == "validation"]
    assert validation == [10, 20, 30, 40]
    # the second fit resumed from the step-20 checkpoint instead of starting over
    assert training.count(5) == 1


def test_preemption_checkpoints_and_stops(fake: FakeMaster, on_cluster: Callable[..., Any]) -> None:
    on_cluster()
    fake.set(lambda st: st.ops.append(200))
    with core_api.init() as ctx:
        fake.set(lambda st: setattr(st, "preempt", True))
        fake.wait(lambda st: any(n == "WatchPreemption" for n, _ in st.calls))
        trainer = cl.fit(
            ctx, Tiny(), searcher_metric="val_loss", trainer_kwargs=TRAINER, **loaders()
        )
    assert trainer is not None and trainer.global_step < 200
    assert fake.state.completed == [] and fake.state.acks == 1
    (ckpt,) = [
        c for c in fake.state.checkpoints.values() if c.steps_completed == trainer.global_step
    ]
    assert cl.CHECKPOINT_FILE in ckpt.resources


def test_missing_searcher_metric_is_named(tmp_path: pathlib.Path) -> None:
    with (
        core_api.init(checkpoint_storage=tmp_path, max_length=5) as ctx,
        pytest.raises(KeyError, match="'nope' was never logged"),
    ):
        cl.fit(ctx, Tiny(), searcher_metric="nope", trainer_kwargs=TRAINER, **loaders())
