"""core_api.pytorch: PyTorchTrial + Trainer off-cluster (exact resume, periods, bad input) and
through a real master (an experiment completes honouring min_validation_period and
min_checkpoint_period; pause mid-epoch + activate equals an uninterrupted run; ASHA promotes in
epochs; a 2-slot DDP trial completes)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")

import core_api  # noqa: E402
import core_api.pytorch as cp  # noqa: E402
from tests.core_api.test_integration import checkpoints, logs, metrics  # noqa: E402
from tests.support import REPO, Stubs, trial_state, wait_for  # noqa: E402

EXAMPLE = REPO / "examples" / "pytorch"


@pytest.fixture
def digits() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import digits_trial
    finally:
        sys.path.remove(str(EXAMPLE))
    yield digits_trial


@pytest.fixture
def trial_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )


def run_local(
    digits: Any,
    storage: pathlib.Path,
    *,
    max_length: cp.TrainUnit,
    latest: str | None = None,
    preempt_at: int | None = None,
    seed: int = 0,
    **fit: Any,
) -> tuple[cp.Trainer, list[tuple[str, int, dict[str, float]]]]:
    """Fit the digits trial off-cluster; returns the trainer and every reported metric.

    ``preempt_at``: the preemption check answers True from that batch on (as a pause would).
    """
    seen: list[tuple[str, int, dict[str, float]]] = []
    with cp.init(hparams=digits.DEFAULT_HPARAMS, checkpoint_storage=storage, seed=seed) as context:
        train = context.core.train
        real = train._report

        def record(group: str, steps: Any, m: Any) -> None:
            seen.append((group, int(steps), {k: float(v) for k, v in m.items()}))
            real(group, steps, m)

        train._report = record  # type: ignore[method-assign]
        trainer = cp.Trainer(digits.DigitsTrial(context), context)
        if preempt_at is not None:
            context.core.preempt.should_preempt = (  # type: ignore[method-assign]
                lambda auto_ack=True: trainer.state.batches >= preempt_at
            )
        trainer.fit(max_length=max_length, latest_checkpoint=latest, **fit)
    return trainer, seen


def test_off_cluster_fit_periods_and_checkpoints(digits: Any, tmp_path: pathlib.Path) -> None:
    trainer, seen = run_local(
        digits,
        tmp_path,
        max_length=cp.Batch(60),
        validation_period=cp.Batch(20),
        checkpoint_period=cp.Batch(25),
        reporting_period=cp.Batch(10),
        checkpoint_policy="none",
        searcher_metric="validation_loss",
    )
    assert [s for g, s, _ in seen if g == "training"] == [10, 20, 30, 40, 50, 60]
    assert [s for g, s, _ in seen if g == "validation"] == [20, 40, 60]
    stored = sorted(
        json.loads((d / "metadata.json").read_text())["steps_completed"] for d in tmp_path.iterdir()
    )
    assert stored == [25, 50, 60]  # the period, and the end of training
    assert trainer.state.batches == 60
    assert trainer.state.epoch == 1 and trainer.state.epoch_batch == 60 - 45  # 45 batches/epoch


def test_checkpoint_policy_best_keeps_improvements_only(
    digits: Any, tmp_path: pathlib.Path
) -> None:
    _, seen = run_local(
        digits,
        tmp_path,
        max_length=cp.Batch(40),
        validation_period=cp.Batch(5),
        checkpoint_policy="best",
        searcher_metric="accuracy",
        smaller_is_better=False,
    )
    acc = [(s, m["accuracy"]) for g, s, m in seen if g == "validation"]
    best, improved = -1.0, []
    for s, a in acc:
        if a > best:
            best, improved = a, [*improved, s]
    stored = sorted(
        json.loads((d / "metadata.json").read_text())["steps_completed"] for d in tmp_path.iterdir()
    )
    assert stored == sorted(set(improved) | {40})


def test_resume_mid_epoch_equals_uninterrupted(digits: Any, tmp_path: pathlib.Path) -> None:
    """Stop at batch 57 (mid-epoch 1, mid reporting period), resume to 110: every metric equals
    the uninterrupted run's (dropout RNG, momentum, StepLR, data order and partial sums)."""
    periods = {"validation_period": cp.Batch(20), "reporting_period": cp.Batch(10)}
    _, whole = run_local(digits, tmp_path / "a", max_length=cp.Batch(110), **periods)
    _, first = run_local(
        digits,
        tmp_path / "b",
        max_length=cp.Batch(110),
        checkpoint_policy="none",
        preempt_at=57,
        **periods,
    )
    (ckpt,) = [
        d.name
        for d in (tmp_path / "b").iterdir()
        if json.loads((d / "metadata.json").read_text())["steps_completed"] == 57
    ]
    resumed_trainer, second = run_local(
        digits, tmp_path / "b", max_length=cp.Batch(110), latest=ckpt, **periods
    )
    expect = [r for r in whole if r[1] > 57]
    assert [r for r in second if r[1] > 57] == expect
    assert first == [r for r in whole if r[1] <= 57]
    assert resumed_trainer.state.batches == 110


def test_bad_input(digits: Any, tmp_path: pathlib.Path) -> None:
    with cp.init(hparams=digits.DEFAULT_HPARAMS, checkpoint_storage=tmp_path) as context:
        trainer = cp.Trainer(digits.DigitsTrial(context), context)
        with pytest.raises(ValueError, match=r"fit\(max_length=\.\.\.\) is required"):
            trainer.fit()
        with pytest.raises(ValueError, match="checkpoint_policy"):
            trainer.fit(max_length=cp.Batch(1), checkpoint_policy="sometimes")
        with pytest.raises(ValueError, match="validation_period must be Batch"):
            trainer.fit(max_length=cp.Batch(1), validation_period=10)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"Batch\(value\) must be an int >= 1"):
            cp.Batch(0)
        with pytest.raises(KeyError, match="hyperparameter 'nope' not found"):
            context.get_hparam("nope")
        with pytest.raises(core_api.NotFoundError):
            trainer.fit(max_length=cp.Batch(1), latest_checkpoint="no-such-checkpoint")
        with pytest.raises(TypeError, match="takes a PyTorchTrial"):
            cp.Trainer(object(), context)  # type: ignore[arg-type]
    with (
        cp.init(hparams={"lr": 0.1}) as context,
        pytest.raises(KeyError, match="'global_batch_size' is not set"),
    ):
        context.get_per_slot_batch_size()


# -- through a real master ---------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / "model"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    return dst


def config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLE / "digits_trial.yaml").read_text())
    hp = over.pop("hparams", {})
    cfg["hyperparameters"].update(hp)
    cfg.update(over)
    return cfg


def finished(stubs: Stubs, exp_id: int, timeout: float = 240.0) -> None:
    state = stubs.wait_exp(exp_id, "COMPLETED", "ERROR", "CANCELED", timeout=timeout)
    if state != "COMPLETED":
        text = "\n".join(logs(stubs, t.id) for t in stubs.trials_of(exp_id))
        pytest.fail(f"experiment {exp_id} ended {state}; logs:\n{text[-6000:]}")


@pytest.mark.slow
@pytest.mark.usefixtures("trial_pythonpath")
def test_experiment_completes_with_config_periods(stubs: Stubs, model_dir: pathlib.Path) -> None:
    # 2 epochs of records_per_epoch=320 records at 32 a batch: 20 batches.
    cfg = config(
        records_per_epoch=320,
        searcher={
            "name": "single",
            "metric": "validation_loss",
            "max_length": {"epochs": 2},
        },
        min_validation_period={"batches": 6},
        min_checkpoint_period={"batches": 9},
    )
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    (trial,) = stubs.trials_of(exp.id)
    assert [s for s, _ in metrics(stubs, trial.id, "validation")] == [6, 12, 18, 20]
    steps = [c.steps_completed for c in checkpoints(stubs, trial.id, all_states=True)]
    # min_checkpoint_period (9, 18), the "best" validations (some of 6, 12, 18) and the end (20).
    assert {9, 18, 20} <= set(steps)
    assert trial.has_searcher_metric and trial.progress == pytest.approx(1.0)
    assert "batch 20: validation" in logs(stubs, trial.id)
    # checkpoint_storage.save_trial_best (1) and save_trial_latest (1): the garbage collection
    # at the experiment's end keeps the best checkpoint by the searcher metric and the latest.
    val = dict(metrics(stubs, trial.id, "validation"))
    ckpt_steps = set(steps)
    best_step = min((s for s in ckpt_steps if s in val), key=lambda s: val[s]["validation_loss"])
    wait_for(
        lambda: {c.steps_completed for c in checkpoints(stubs, trial.id)} == {best_step, 20},
        60,
        "garbage collection to keep the best and the latest checkpoint",
    )


@pytest.mark.slow
@pytest.mark.usefixtures("trial_pythonpath")
def test_patience_stops_one_long_operation(stubs: Stubs, model_dir: pathlib.Path) -> None:
    """lr 0: the validation loss never improves; patience 2 stops the single 300-batch op after
    the third validation instead of training it to the end."""
    cfg = config(
        hparams={"lr": 0.0},
        searcher={
            "name": "single",
            "metric": "validation_loss",
            "max_length": {"batches": 300},
            "early_stopping": {"patience": 2},
        },
        min_validation_period={"batches": 10},
    )
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    (trial,) = stubs.trials_of(exp.id)
    assert trial_state(trial) == "COMPLETED"
    val = [s for s, _ in metrics(stubs, trial.id, "validation")]
    assert val[:3] == [10, 20, 30] and val[-1] < 300, val
    assert trial.steps_completed < 300


@pytest.mark.slow
@pytest.mark.usefixtures("trial_pythonpath")
def test_pause_mid_epoch_then_activate_equals_uninterrupted(
    stubs: Stubs, model_dir: pathlib.Path, digits: Any, tmp_path: pathlib.Path
) -> None:
    cfg = config(
        searcher={"name": "single", "metric": "validation_loss", "max_length": {"batches": 200}},
        reproducibility={"experiment_seed": 7},
    )
    cfg["hyperparameters"]["step_delay"] = 0.02
    exp = stubs.create(cfg, model_dir)
    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 50), None),
        120,
        "the trial to report 50 batches",
    )
    stubs.action(exp.id, "pause")
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 90, "the trial to pause")
    paused_at = checkpoints(stubs, trial.id)[-1].steps_completed
    assert 50 <= paused_at < 200 and paused_at % 45 != 0, paused_at  # mid-epoch
    stubs.action(exp.id, "activate")
    finished(stubs, exp.id)
    assert stubs.trial(trial.id).run_id == 2
    assert "resumed from checkpoint" in logs(stubs, trial.id)
    # The same trial (same seed, same periods) uninterrupted, off-cluster in this process.
    _, whole = run_local(
        digits,
        tmp_path / "reference",
        max_length=cp.Batch(200),
        validation_period=cp.Batch(30),
        reporting_period=cp.Batch(10),
        seed=(7 + trial.id) % 2**31,
    )
    for group in ("training", "validation"):
        got = metrics(stubs, trial.id, group)
        want = [(s, m) for g, s, m in whole if g == group]
        assert [s for s, _ in got] == [s for s, _ in want], group
        for (s, g), (_, w) in zip(got, want, strict=True):
            assert g == pytest.approx(w, rel=1e-6, abs=1e-9), (group, s)


@pytest.mark.slow
@pytest.mark.usefixtures("trial_pythonpath")
def test_asha_promotes_in_epochs(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(
        records_per_epoch=320,
        hparams={"lr": {"type": "log", "base": 10, "minval": -2, "maxval": -1}},
        searcher={
            "name": "adaptive_asha",
            "metric": "validation_loss",
            "max_length": {"epochs": 4},
            "max_trials": 2,
            "max_rungs": 2,
            "divisor": 2,
            "mode": "aggressive",
        },
    )
    cfg.pop("min_validation_period")
    cfg.pop("min_checkpoint_period")
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 2 and all(trial_state(t) == "COMPLETED" for t in trials)
    val = {t.id: [s for s, _ in metrics(stubs, t.id, "validation")] for t in trials}
    promoted = [t for t in trials if val[t.id] == [20, 40]]  # 2 epochs = 20 batches, then 4
    assert promoted, val
    assert all(t.run_id == 1 for t in promoted)


@pytest.mark.slow
@pytest.mark.usefixtures("trial_pythonpath")
def test_two_slot_ddp_completes(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(
        resources={"slots_per_trial": 2},
        searcher={"name": "single", "metric": "validation_loss", "max_length": {"batches": 40}},
    )
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    (trial,) = stubs.trials_of(exp.id)
    text = logs(stubs, trial.id)
    assert "Traceback" not in text
    val = metrics(stubs, trial.id, "validation")
    assert [s for s, _ in val] == [30, 40] and val[-1][1]["accuracy"] > 0.5
    assert [s for s, _ in metrics(stubs, trial.id, "training")] == [10, 20, 30, 40]
    ckpt = checkpoints(stubs, trial.id)[-1]
    assert ckpt.steps_completed == 40
    assert {"state.pt", "rng_state_rank0.pkl", "rng_state_rank1.pkl"} <= set(ckpt.resources)
