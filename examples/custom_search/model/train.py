"""A tiny trial for the custom-search example: gradient descent on f(w) = (w - 3)^2.

It trains to each searcher operation's (absolute) length, reports ``validation_loss``,
checkpoints, and reports the operation completed; it checkpoints and exits when the master asks
(a searcher ``Stop``, a pause). A good learning rate converges in a few steps, a tiny one
crawls, and one above 1 diverges, so the search has something to choose.
"""

from __future__ import annotations

import json

import core_api


def main() -> None:
    info = core_api.get_cluster_info()
    lr = float(info.trial.hparams["lr"]) if info is not None else 0.1
    w, steps = 0.0, 0
    with core_api.init(max_length=20) as ctx:
        if info is not None and info.latest_checkpoint:
            with ctx.checkpoint.restore_path(info.latest_checkpoint) as path:
                state = json.loads((path / "state.json").read_text())
            w, steps = float(state["w"]), int(state["steps"])

        def checkpoint() -> None:
            with ctx.checkpoint.store_path({"steps_completed": steps}) as (path, _):
                (path / "state.json").write_text(json.dumps({"w": w, "steps": steps}))

        for op in ctx.searcher.operations():
            while steps < op.length:
                w -= lr * 2 * (w - 3.0)
                steps += 1
                if ctx.preempt.should_preempt():
                    checkpoint()
                    return
            loss = (w - 3.0) ** 2
            ctx.train.report_validation_metrics(steps, {"validation_loss": loss})
            checkpoint()
            op.report_completed(loss)


if __name__ == "__main__":
    main()
