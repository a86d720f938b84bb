"""core_api.keras.DeterminedCallback (Keras 3, torch backend): off-cluster checkpoints and
restore; through a real master the example completes, a pause resumes at the right epoch, ASHA
promotes in epochs, and patience stops a flat trial through the platform's searcher."""

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

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import core_api  # noqa: E402
from core_api.keras import DeterminedCallback, _to_numpy  # noqa: E402
from tests.core_api.test_integration import checkpoints, logs, metrics  # noqa: E402
from tests.support import REPO, Stubs, trial_state, wait_for  # noqa: E402

EXAMPLE = REPO / "examples" / "keras"
# Keras 3's torch backend under numpy 2 (inside model.fit, not ours): it retries without copy=.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
EPOCH = 45  # batches per epoch: 1437 training digits, 32 a batch


@pytest.fixture
def digits() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import digits as mod
    finally:
        sys.path.remove(str(EXAMPLE))
    yield mod


def test_off_cluster_checkpoints_and_restore(digits: Any, tmp_path: pathlib.Path) -> None:
    x, y, xv, yv = digits.data()
    hp = dict(digits.DEFAULT_HPARAMS)
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        model = digits.build(hp)
        det = DeterminedCallback(ctx)
        assert det.epochs(default=3) == 3 and det.restore(model) == 0
        model.fit(
            x, y, batch_size=32, validation_data=(xv, yv), epochs=3, callbacks=[det], verbose=0
        )
        metas = {d.name: json.loads((d / "metadata.json").read_text()) for d in tmp_path.iterdir()}
        by_epoch = {m["epochs_completed"]: sid for sid, m in metas.items()}
        assert sorted(by_epoch) == [1, 2, 3]
        assert metas[by_epoch[2]]["steps_completed"] == 2 * EPOCH
        final = [_to_numpy(v).copy() for v in model.weights]
        # A fresh model restored from epoch 3 has the same weights and resumes at epoch 3.
        again = digits.build(hp)
        det2 = DeterminedCallback(ctx)
        assert det2.restore(again, by_epoch[3]) == 3
        assert det2.batches_trained == 3 * EPOCH
        for a, b in zip(final, again.weights, strict=True):
            assert (a == _to_numpy(b)).all()


def test_bad_input(digits: Any, tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        with pytest.raises(ValueError, match="checkpoint_epochs"):
            DeterminedCallback(ctx, checkpoint_epochs=-1)
        with pytest.raises(ValueError, match="batch_report_period"):
            DeterminedCallback(ctx, batch_report_period=1.5)  # type: ignore[arg-type]
        with pytest.raises(core_api.NotFoundError):
            DeterminedCallback(ctx).restore(digits.build(digits.DEFAULT_HPARAMS), "nope")


# -- through a real master ---------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )
    dst = tmp_path / "model"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    return dst


def config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLE / "digits.yaml").read_text())
    hp = over.pop("hparams", {})
    cfg["hyperparameters"].update(hp)
    cfg.update(over)
    return cfg


def finished(stubs: Stubs, exp_id: int, timeout: float = 300.0) -> None:
    state = stubs.wait_exp(exp_id, "COMPLETED", "ERROR", "CANCELED", timeout=timeout)
    if state != "COMPLETED":
        text = "\n".join(logs(stubs, t.id) for t in stubs.trials_of(exp_id))
        pytest.fail(f"experiment {exp_id} ended {state}; logs:\n{text[-6000:]}")


@pytest.mark.slow
def test_pause_resumes_at_the_right_epoch(stubs: Stubs, model_dir: pathlib.Path) -> None:
    exp = stubs.create(config(hparams={"step_delay": 0.05}), model_dir)

    def first_epoch_done() -> Any:
        if stubs.exp_state(exp.id) == "ERROR":
            finished(stubs, exp.id)  # fails with the trial's logs
        return next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= EPOCH), None)

    trial = wait_for(first_epoch_done, 180, "the trial to finish its first epoch")
    stubs.action(exp.id, "pause")
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 120, "the trial to pause")
    paused = checkpoints(stubs, trial.id)[-1]
    epochs_done = json.loads(paused.metadata_json)["epochs_completed"]
    assert 1 <= epochs_done < 4 and paused.steps_completed == epochs_done * EPOCH
    stubs.action(exp.id, "activate")
    finished(stubs, exp.id)
    done = stubs.trial(trial.id)
    assert done.run_id == 2 and done.has_searcher_metric
    assert f"resumed from checkpoint {paused.uuid} at epoch {epochs_done}" in logs(stubs, trial.id)
    # One validation per epoch, none repeated or skipped across the pause.
    assert [s for s, _ in metrics(stubs, trial.id, "validation")] == [
        EPOCH * k for k in (1, 2, 3, 4)
    ]
    assert checkpoints(stubs, trial.id)[-1].steps_completed == 4 * EPOCH


@pytest.mark.slow
def test_asha_promotes_in_epochs(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(
        searcher={
            "name": "adaptive_asha",
            "metric": "val_loss",
            "max_length": {"epochs": 4},
            "max_trials": 2,
            "max_rungs": 2,
            "divisor": 2,
            "mode": "aggressive",
        },
        hparams={"lr": {"type": "log", "base": 10, "minval": -2, "maxval": -1}},
    )
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 2 and all(trial_state(t) == "COMPLETED" for t in trials)
    val = {t.id: [s for s, _ in metrics(stubs, t.id, "validation")] for t in trials}
    promoted = [t for t in trials if val[t.id] == [EPOCH * k for k in (1, 2, 3, 4)]]
    assert promoted, val
    assert all(t.run_id == 1 for t in promoted)
    for t in trials:
        assert val[t.id] in ([EPOCH, 2 * EPOCH], [EPOCH * k for k in (1, 2, 3, 4)])


@pytest.mark.slow
def test_patience_stops_a_flat_trial(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = config(
        hparams={"lr": 0.0},
        searcher={
            "name": "single",
            "metric": "val_loss",
            "max_length": {"epochs": 20},
            "early_stopping": {"patience": 2},
        },
    )
    exp = stubs.create(cfg, model_dir)
    finished(stubs, exp.id)
    (trial,) = stubs.trials_of(exp.id)
    val = [s for s, _ in metrics(stubs, trial.id, "validation")]
    # Epochs 2 and 3 do not improve on epoch 1: stopped at an epoch end soon after.
    assert val[:3] == [EPOCH, 2 * EPOCH, 3 * EPOCH] and len(val) < 20, val
