"""Ladder step 0: plain training, no platform API at all.

The master still runs it: it launches the process, captures its output and marks the trial
COMPLETED when it exits 0. Nothing is tracked beyond the logs.
"""

from __future__ import annotations

import digits_common as dc


def main() -> None:
    hp = dc.DEFAULT_HPARAMS
    data = dc.load_data()
    model = dc.make_model(hp["hidden_size"])
    opt = dc.make_optimizer(model, hp["lr"])
    for step in range(hp["batches"]):
        loss = dc.train_step(model, opt, *dc.batch(data, step))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss:.4f}")
    print(f"final: {dc.evaluate(model, data)}")


if __name__ == "__main__":
    main()
