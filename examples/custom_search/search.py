"""A custom hyperparameter search run from your own machine: successive halving over a grid.

Every learning rate of a small grid gets a trial that trains to the first rung; when all of
them have reported, the better half goes on to the next rung, and so on to the last rung. The
master runs the trials (``model/train.py``); this script decides, through
:class:`determined_sdk.searcher.SearchRunner`.

A trial that waits for its next operation keeps its slot, so a rung that waits for *every*
trial would hang as soon as there are more trials than slots. Here each trial is stopped right
after it reports (freeing its slot), and a promoted learning rate continues as a new trial
warm-started from its predecessor's checkpoint (``Create(..., checkpoint_from=...)``); lengths
are absolute along that lineage, so the new trial trains only the extra batches.

Run it against a master (``python -m master_server --data-dir /tmp/det --port 8080``)::

    DET_MASTER=127.0.0.1:8080 python examples/custom_search/search.py --state-dir /tmp/search

Stop it at any time (Ctrl-C) and run the same command again: the runner finds the experiment
and the search's state in ``--state-dir`` and goes on where it stopped. See
``docs/custom-search.md``.
"""

from __future__ import annotations

import argparse
import math
import pathlib

from determined_sdk import Determined
from determined_sdk.searcher import (
    Action,
    Create,
    ExitedReason,
    SearchMethod,
    SearchRunner,
    Shutdown,
    Stop,
    ValidateAfter,
)

HERE = pathlib.Path(__file__).resolve().parent
LEARNING_RATES = [0.001, 0.01, 0.05, 0.1, 0.3, 0.6, 0.9, 1.05]
RUNGS = [2, 4, 8]  # batches, absolute


def _key(metric: float) -> float:
    """Sort key: smaller is better, NaN (diverged) last."""
    return math.inf if math.isnan(metric) else metric


class SuccessiveHalving(SearchMethod):
    """Successive halving over ``lrs``: keep the better half at every rung.

    Its state is plain attributes, so the default ``save_state``/``load_state`` (a copy of the
    attributes, pickled by the runner) make it resumable.

    Args:
        lrs: The learning rates to try.
        rungs: Increasing (absolute) lengths at which the learning rates are compared.
    """

    def __init__(self, lrs: list[float], rungs: list[int]) -> None:
        self.lrs = list(lrs)
        self.rungs = list(rungs)
        self.rung = 0  # the rung being trained
        self.lr_of: dict[str, float] = {}  # every trial -> its learning rate
        self.running: set[str] = set()  # trials of the current rung not exited yet
        self.results: dict[str, float] = {}  # trials of the current rung -> metric
        self.best: tuple[str, float] | None = None
        self.validations = 0

    def _start(self, lrs_and_parents: list[tuple[float, str | None]]) -> list[Action]:
        actions: list[Action] = []
        for lr, parent in lrs_and_parents:
            rid = f"lr={lr:g}/rung{self.rung}"
            self.lr_of[rid] = lr
            self.running.add(rid)
            actions.append(Create(rid, {"lr": lr}, checkpoint_from=parent))
            actions.append(ValidateAfter(rid, self.rungs[self.rung]))
        return actions

    def initial_operations(self) -> list[Action]:
        """One trial per learning rate, each to the first rung."""
        return self._start([(lr, None) for lr in self.lrs])

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Nothing to do: the operation came with the Create."""
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Record the result and stop the trial (its checkpoint carries it on if promoted)."""
        self.results[request_id] = metric
        self.validations += 1
        print(f"  {request_id} ({length} batches): validation_loss={metric:.4g}", flush=True)
        return [Stop(request_id)]

    def _exit(self, request_id: str) -> list[Action]:
        self.running.discard(request_id)
        if self.running:
            return []  # the rung is not over yet
        results, self.results = self.results, {}
        ranked = sorted(results, key=lambda rid: _key(results[rid]))
        if not ranked:
            return [Shutdown(failure=True, reason=f"every trial of rung {self.rung} failed")]
        if self.rung + 1 == len(self.rungs):
            self.best = (ranked[0], results[ranked[0]])
            return [Shutdown()]
        self.rung += 1
        keep = ranked[: max(1, len(ranked) // 2)]
        return self._start([(self.lr_of[rid], rid) for rid in keep])

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """A trial ended (we stopped it); the last one of a rung starts the next rung."""
        return self._exit(request_id)

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """A trial failed: it leaves the race."""
        print(f"  {request_id} exited early: {reason.value}", flush=True)
        self.results.pop(request_id, None)
        return self._exit(request_id)

    def progress(self) -> float:
        """Validations received over the validations a full halving takes."""
        expected, n = 0, len(self.lrs)
        for _ in self.rungs:
            expected += n
            n = max(1, n // 2)
        return self.validations / expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir",
        default="custom_search_state",
        help="where the experiment id and the search state are kept (resume with the same one)",
    )
    parser.add_argument("--master", default=None, help="host:port (default: $DET_MASTER)")
    args = parser.parse_args()

    method = SuccessiveHalving(LEARNING_RATES, RUNGS)
    with Determined(args.master) as client:
        runner = SearchRunner.create_or_resume(
            method,
            client,
            HERE / "search.yaml",
            HERE / "model",
            state_dir=args.state_dir,
        )
        print(f"experiment {runner.experiment.id}: successive halving over {LEARNING_RATES}")
        state = runner.run()
        print(f"experiment {runner.experiment.id} ended: {state.value}")
        if method.best is not None:
            rid, loss = method.best
            print(f"best: {rid} validation_loss={loss:.6g}")


if __name__ == "__main__":
    main()
