"""core_api.lightning's DeterminedLogger + DeterminedCallback in the user's own Trainer: their
CSVLogger, ModelCheckpoint and max_steps keep working (off-cluster), and through a real master
the example completes, ASHA promotes, and a pause resumes the same trial."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
from typing import Any

import pytest
import yaml

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import core_api  # noqa: E402
from core_api.lightning import (  # noqa: E402
    DeterminedCallback,
    DeterminedLogger,
    latest_checkpoint_path,
)
from tests.core_api.test_integration import checkpoints, logs, metrics  # noqa: E402
from tests.core_api.test_lightning import Tiny, loaders  # noqa: E402
from tests.support import REPO, Stubs, trial_state, wait_for  # noqa: E402

EXAMPLE = REPO / "examples" / "lightning"
QUIET = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
    "log_every_n_steps": 5,
}


class TinyWithHparams(Tiny):  # type: ignore[misc]
    def __init__(self, width: int = 4, note: str = "hi") -> None:
        super().__init__()
        self.save_hyperparameters()


def stored(storage: pathlib.Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads((d / "metadata.json").read_text()) for d in storage.iterdir() if d.is_dir()),
        key=lambda m: m["steps_completed"],
    )


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the test's second trainer
def test_users_loggers_checkpoints_and_limits_keep_working(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path / "det") as ctx:
        det_logger = DeterminedLogger(ctx, echo_interval=0)
        trainer = pl.Trainer(
            max_steps=30,
            default_root_dir=tmp_path,
            val_check_interval=10,
            logger=[CSVLogger(tmp_path / "csv"), det_logger],
            callbacks=[
                ModelCheckpoint(dirpath=tmp_path / "mine", monitor="val_loss"),
                DeterminedCallback(ctx, checkpoint_period=10),
            ],
            **QUIET,
        )
        trainer.fit(TinyWithHparams(), **loaders())
    assert trainer.global_step == 30  # the user's max_steps
    assert list((tmp_path / "mine").glob("*.ckpt"))  # the user's ModelCheckpoint
    (csv_file,) = (tmp_path / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(csv_file.open()))
    assert any(r.get("val_loss") for r in rows) and any(r.get("loss") for r in rows)
    saved = stored(tmp_path / "det")
    assert [m["steps_completed"] for m in saved] == [10, 20, 30]  # the period; the end is 30
    assert all(m["hparams"] == {"width": 4, "note": "hi"} for m in saved)
    assert det_logger.hyperparameters == {"width": 4, "note": "hi"}
    # The stored checkpoints are Lightning's own: ckpt_path resumes one.
    first = min((tmp_path / "det").iterdir(), key=lambda d: stored_step(d))
    with core_api.init(checkpoint_storage=tmp_path / "det") as ctx:
        path = latest_checkpoint_path(ctx, first.name)
        assert path is not None
        again = pl.Trainer(
            max_steps=15,
            val_check_interval=5,
            default_root_dir=tmp_path,
            logger=[DeterminedLogger(ctx)],
            callbacks=[
                ModelCheckpoint(dirpath=tmp_path / "mine-again", monitor="val_loss"),
                DeterminedCallback(ctx, checkpoint_period=0),
            ],
            **QUIET,
        )
        # Step 10 is mid-epoch: Lightning says (rightly) that a plain DataLoader restarts it.
        with pytest.warns(UserWarning, match="dataloader is not resumable"):
            again.fit(TinyWithHparams(), ckpt_path=path, **loaders())
        assert again.global_step == 15


def stored_step(d: pathlib.Path) -> int:
    return int(json.loads((d / "metadata.json").read_text())["steps_completed"])


def test_pause_at_epoch_waits_for_the_epoch_end(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path / "det") as ctx:
        callback = DeterminedCallback(ctx, checkpoint_period=0, pause_at="epoch")
        ctx.preempt.should_preempt = lambda auto_ack=True: True  # type: ignore[method-assign]
        trainer = pl.Trainer(
            max_steps=100,
            default_root_dir=tmp_path,
            logger=[DeterminedLogger(ctx)],
            callbacks=[callback],
            **QUIET,
        )
        trainer.fit(Tiny(), **loaders())
    assert callback.preempted
    assert trainer.global_step == 32  # 256 records / 8 a batch: stopped at the first epoch end
    assert [m["steps_completed"] for m in stored(tmp_path / "det")] == [32]


def test_bad_input(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        with pytest.raises(ValueError, match="pause_at"):
            DeterminedCallback(ctx, pause_at="never")
        with pytest.raises(ValueError, match="checkpoint_period"):
            DeterminedCallback(ctx, checkpoint_period=-1)
        with pytest.raises(core_api.NotFoundError):
            latest_checkpoint_path(ctx, "no-such-checkpoint")
        assert latest_checkpoint_path(ctx) is None  # off-cluster, nothing to resume


# -- through a real master -------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )
    dst = tmp_path / "model"
    shutil.copytree(
        EXAMPLE,
        dst,
        ignore=shutil.ignore_patterns("__pycache__", "checkpoints", "lightning_logs", "user_*"),
    )
    return dst


def config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLE / "digits.yaml").read_text())
    cfg.update(over)
    return cfg


def finished(stubs: Stubs, exp_id: int, timeout: float = 300.0) -> None:
    state = stubs.wait_exp(exp_id, "COMPLETED", "ERROR", "CANCELED", timeout=timeout)
    if state != "COMPLETED":
        text = "\n".join(logs(stubs, t.id) for t in stubs.trials_of(exp_id))
        pytest.fail(f"experiment {exp_id} ended {state}; logs:\n{text[-6000:]}")


@pytest.mark.slow
def test_example_completes_with_the_users_logger_and_checkpoint(
    stubs: Stubs, model_dir: pathlib.Path
) -> None:
    exp = stubs.create(config(), model_dir)
    finished(stubs, exp.id)
    (trial,) = stubs.trials_of(exp.id)
    assert [s for s, _ in metrics(stubs, trial.id, "validation")] == [50, 100, 150, 200]
    assert trial.has_searcher_metric and trial.progress == pytest.approx(1.0)
    ckpts = checkpoints(stubs, trial.id, all_states=True)
    assert {100, 200} <= {c.steps_completed for c in ckpts}  # min_checkpoint_period + op end
    assert json.loads(ckpts[-1].metadata_json)["hparams"] == {"lr": 0.05, "hidden_size": 32}
    text = logs(stubs, trial.id)
    assert "step 200: validation" in text and "hyperparameters:" in text
    assert "Traceback" not in text


@pytest.mark.slow
def test_asha_promotes(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(
        searcher={
            "name": "adaptive_asha",
            "metric": "val_loss",
            "max_length": {"batches": 200},
            "max_trials": 2,
            "max_rungs": 2,
            "divisor": 2,
            "mode": "aggressive",
        }
    )
    cfg["hyperparameters"]["lr"] = {"type": "log", "base": 10, "minval": -2, "maxval": -1}
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 2 and all(trial_state(t) == "COMPLETED" for t in trials)
    val = {t.id: [s for s, _ in metrics(stubs, t.id, "validation")] for t in trials}
    promoted = [t for t in trials if val[t.id] == [50, 100, 150, 200]]
    assert promoted, val
    assert all(t.run_id == 1 for t in promoted)


@pytest.mark.slow
def test_pause_and_activate_resumes(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(searcher={"name": "single", "metric": "val_loss", "max_length": {"batches": 400}})
    exp = stubs.create(cfg, model_dir)
    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 20), None),
        120,
        "the trial to report 20 steps",
    )
    stubs.action(exp.id, "pause")
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 90, "the trial to pause")
    paused_at = checkpoints(stubs, trial.id)[-1].steps_completed
    stubs.action(exp.id, "activate")
    finished(stubs, exp.id)
    assert stubs.trial(trial.id).run_id == 2
    assert checkpoints(stubs, trial.id)[-1].steps_completed == 400
    steps = [s for s, _ in metrics(stubs, trial.id, "training")]
    assert steps == sorted(set(steps)) and steps[-1] == 400
    assert 20 <= paused_at < 400


def test_fit_takes_the_users_logger_and_model_checkpoint(tmp_path: pathlib.Path) -> None:
    """The older ``core_api.lightning.fit`` no longer rejects a logger or a ModelCheckpoint of
    the user's, and names the way to keep one's own limits."""
    from core_api import lightning as cl

    with core_api.init(checkpoint_storage=tmp_path / "det", max_length=20) as ctx:
        trainer = cl.fit(
            ctx,
            Tiny(),
            searcher_metric="val_loss",
            trainer_kwargs={
                **QUIET,
                "default_root_dir": tmp_path,
                "val_check_interval": 10,
                "logger": CSVLogger(tmp_path / "csv"),
                "callbacks": [ModelCheckpoint(dirpath=tmp_path / "mine", monitor="val_loss")],
            },
            **loaders(),
        )
        assert trainer is not None and trainer.global_step == 20
        with pytest.raises(ValueError, match="DeterminedLogger \\+ DeterminedCallback"):
            cl.fit(ctx, Tiny(), searcher_metric="val_loss", trainer_kwargs={"max_steps": 5})
    assert list((tmp_path / "csv").rglob("metrics.csv"))
    assert list((tmp_path / "mine").glob("*.ckpt"))
