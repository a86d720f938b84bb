"""A Keras 3 digits model (torch backend) on the platform with ``core_api.keras``.

On-cluster the searcher's operations (in epochs) decide how long it trains, a pause stops at
the end of an epoch with a checkpoint, and the next run resumes weights and optimizer at that
epoch. Off-cluster (``python digits.py``) it trains ``epochs`` epochs into ./checkpoints.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import time
from typing import Any

import keras
import numpy as np
import torch
from sklearn.datasets import load_digits

import core_api
from core_api.keras import DeterminedCallback

torch.set_num_threads(1)  # a tiny model: threads only contend

DEFAULT_HPARAMS: dict[str, Any] = {"lr": 0.05, "hidden_size": 32, "epochs": 3, "step_delay": 0.0}


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order] / 16.0).astype("float32")
    y = y[order].astype("int64")
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def build(hp: dict[str, Any]) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(int(hp["hidden_size"]), activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=float(hp["lr"]), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    info = core_api.get_cluster_info()
    hp = {**DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    x, y, xv, yv = data()
    callbacks: list[keras.callbacks.Callback] = []
    if float(hp["step_delay"]):  # pretend work, so a demo can pause it mid-run
        delay = float(hp["step_delay"])
        callbacks.append(
            keras.callbacks.LambdaCallback(on_batch_end=lambda batch, logs: time.sleep(delay))
        )
    with core_api.init() as ctx:
        model = build(hp)
        det = DeterminedCallback(ctx)
        model.fit(
            x,
            y,
            batch_size=32,
            validation_data=(xv, yv),
            epochs=det.epochs(default=int(hp["epochs"])),
            initial_epoch=det.restore(model),
            callbacks=[*callbacks, det],
            verbose=2,
        )


if __name__ == "__main__":
    main()
