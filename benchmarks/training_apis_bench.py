"""Training-API overhead: each integration against the same plain loop, in one run.

Run: ``python benchmarks/training_apis_bench.py [--repeats 5] [--only pytorch,lightning,keras]``

For each API the same digits MLP trains the same number of batches with the same validations
and one checkpoint at the end, twice per repeat, alternating:

* **plain**: the framework alone (a hand-written PyTorch loop; a Lightning ``Trainer`` with no
  logger and no checkpointing; ``keras.Model.fit``), saving its state at the end;
* **integrated**: ``core_api.pytorch.Trainer``; Lightning with ``DeterminedLogger`` +
  ``DeterminedCallback``; ``keras.Model.fit`` with ``core_api.keras.DeterminedCallback``,
  each recording to a real master (its own process, as in production) as an unmanaged trial;
  the integrated time includes creating that trial and closing the context (every report
  stored).

It prints the median seconds of each and the ratio integrated / plain (goal <= 1.02). Both
run in this process, in alternating order, each after the master has had a second to settle,
so the ratio holds on a loaded machine better than the absolute times do.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from core_api_bench import master_process  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

torch.set_num_threads(1)
BATCHES = 450  # 10 epochs of 45 batches
VALIDATE_EVERY = 90
BATCH_SIZE = 32


def digits() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    xt = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(xt))
    return TensorDataset(xt[:cut], yt[:cut]), TensorDataset(xt[cut:], yt[cut:])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# -- PyTorch ---------------------------------------------------------------------------------


def pytorch_plain(out: pathlib.Path, master: str) -> None:
    train, val = digits()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True)
    step = 0
    while step < BATCHES:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % VALIDATE_EVERY == 0:
                with torch.no_grad():
                    model.eval()
                    for xv, yv in DataLoader(val, batch_size=128):
                        nn.functional.cross_entropy(model(xv), yv)
                    model.train()
            if step == BATCHES:
                break
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, out / "state.pt")


def pytorch_integrated(out: pathlib.Path, master: str) -> None:
    import core_api.pytorch as cp

    train, val = digits()

    class Trial(cp.PyTorchTrial):
        def __init__(self, context: cp.PyTorchTrialContext) -> None:
            super().__init__(context)
            self.model = context.wrap_model(mlp())
            self.opt = context.wrap_optimizer(
                torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            )

        def build_training_data_loader(self) -> DataLoader[Any]:
            return DataLoader(train, batch_size=BATCH_SIZE, shuffle=True)

        def build_validation_data_loader(self) -> DataLoader[Any]:
            return DataLoader(val, batch_size=128)

        def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.context.backward(loss)
            self.context.step_optimizer(self.opt)
            return loss

        def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            x, y = batch
            return {"validation_loss": nn.functional.cross_entropy(self.model(x), y)}

    with cp.init(hparams={}, master=master, checkpoint_storage=out) as context:
        cp.Trainer(Trial(context), context).fit(
            max_length=cp.Batch(BATCHES),
            validation_period=cp.Batch(VALIDATE_EVERY),
            reporting_period=cp.Batch(VALIDATE_EVERY),
            checkpoint_policy="none",
        )


# -- Lightning -------------------------------------------------------------------------------


def _lightning_module() -> Any:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Module()


def _lightning_fit(out: pathlib.Path, **extra: Any) -> Any:
    import lightning.pytorch as pl

    train, val = digits()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=BATCHES,
        val_check_interval=VALIDATE_EVERY,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        **extra,
    )
    trainer.fit(
        _lightning_module(),
        train_dataloaders=DataLoader(train, batch_size=BATCH_SIZE, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=128),
    )
    return trainer


def lightning_plain(out: pathlib.Path, master: str) -> None:
    trainer = _lightning_fit(out, logger=False, enable_checkpointing=False)
    trainer.save_checkpoint(out / "model.ckpt")


def lightning_integrated(out: pathlib.Path, master: str) -> None:
    import core_api
    from core_api.lightning import DeterminedCallback, DeterminedLogger

    with core_api.init(master=master, checkpoint_storage=out) as ctx:
        _lightning_fit(
            out,
            logger=[DeterminedLogger(ctx, echo_interval=None)],
            callbacks=[DeterminedCallback(ctx, checkpoint_period=0)],
            enable_checkpointing=False,
        )


# -- Keras -----------------------------------------------------------------------------------


def _keras_fit(callbacks: list[Any]) -> Any:
    import keras

    train, val = digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = train.tensors[0].numpy(), train.tensors[1].numpy()
    xv, yv = val.tensors[0].numpy(), val.tensors[1].numpy()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=BATCHES // 45,
        validation_data=(xv, yv),
        callbacks=callbacks,
        verbose=0,
    )
    return model


def keras_plain(out: pathlib.Path, master: str) -> None:
    from core_api.keras import _to_numpy

    model = _keras_fit([])
    np.savez(out / "state.npz", *[_to_numpy(v) for v in model.variables])


def keras_integrated(out: pathlib.Path, master: str) -> None:
    import core_api
    from core_api.keras import DeterminedCallback

    with core_api.init(master=master, checkpoint_storage=out) as ctx:
        _keras_fit([DeterminedCallback(ctx, checkpoint_epochs=0)])


APIS: dict[str, tuple[Callable[[pathlib.Path, str], None], Callable[[pathlib.Path, str], None]]] = {
    "pytorch": (pytorch_plain, pytorch_integrated),
    "lightning": (lightning_plain, lightning_integrated),
    "keras": (keras_plain, keras_integrated),
}


def timed(fn: Callable[[pathlib.Path, str], None], master: str) -> float:
    gc.collect()
    # Let the master finish what the last run left it (an unmanaged trial's end), so neither
    # side pays for the other's aftermath.
    time.sleep(1.0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fn(pathlib.Path(tmp), master)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=",".join(APIS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")  # the frameworks' own notices, not what is measured
    with tempfile.TemporaryDirectory() as data, master_process(pathlib.Path(data)) as master:
        print(
            f"{BATCHES} batches of {BATCH_SIZE}, validation every {VALIDATE_EVERY}; "
            f"median of {args.repeats} runs each, in alternating order"
        )
        for name in args.only.split(","):
            plain, integrated = APIS[name]
            timed(plain, master)  # warm-up: imports, first-call costs
            timed(integrated, master)
            p: list[float] = []
            q: list[float] = []
            for i in range(args.repeats):
                if i % 2:  # alternate which goes first, so order effects cancel
                    q.append(timed(integrated, master))
                    p.append(timed(plain, master))
                else:
                    p.append(timed(plain, master))
                    q.append(timed(integrated, master))
            mp, mq = statistics.median(p), statistics.median(q)
            print(
                f"{name:10s} plain {mp:7.3f} s   integrated {mq:7.3f} s   "
                f"ratio {mq / mp:6.3f}   (goal <= 1.02)",
                flush=True,
            )


if __name__ == "__main__":
    main()
