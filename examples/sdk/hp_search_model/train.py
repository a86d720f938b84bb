"""A toy trial for the SDK examples: fits y = 3x + 1 by gradient descent with the Core API.

It reports training and validation loss every few steps, checkpoints, and stops when the master
asks (pause, kill, searcher stop). A too-large learning rate diverges, a too-small one
plateaus, so the example's early stopping has something to do.
"""

from __future__ import annotations

import json
import random
import time

import core_api

EVAL_EVERY = 10


def main() -> None:
    info = core_api.get_cluster_info()
    hp = info.trial.hparams if info is not None else {"learning_rate": 0.01, "steps": 200}
    lr = float(hp["learning_rate"])
    total = int(hp.get("steps", 200))
    rng = random.Random(0)
    data = [(x, 3 * x + 1 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(256))]
    w, b, start = 0.0, 0.0, 0

    with core_api.init() as ctx:
        if ctx.info is not None and ctx.info.latest_checkpoint:
            with ctx.checkpoint.restore_path(ctx.info.latest_checkpoint) as path:
                state = json.loads((path / "state.json").read_text())
                w, b, start = state["w"], state["b"], state["step"]
            print(f"resumed from step {start}")
        print(f"training with learning_rate={lr} for {total} steps")
        for step in range(start + 1, total + 1):
            gw = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
            gb = sum(2 * (w * x + b - y) for x, y in data) / len(data)
            w, b = w - lr * gw, b - lr * gb
            loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
            ctx.train.report_training_metrics(step, {"loss": loss})
            if step % EVAL_EVERY == 0:
                val = round(loss, 3)  # coarse, so a plateau shows as "no improvement"
                ctx.train.report_validation_metrics(step, {"validation_loss": val})
                print(f"step {step}: validation_loss={val}")
                with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _):
                    (path / "state.json").write_text(json.dumps({"w": w, "b": b, "step": step}))
                if ctx.preempt.should_preempt():
                    print("preempted; exiting")
                    return
            time.sleep(0.01)
        print(f"done: w={w:.3f} b={b:.3f}")


if __name__ == "__main__":
    main()
