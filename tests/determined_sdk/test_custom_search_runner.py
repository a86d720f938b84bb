"""``determined_sdk.searcher``: a user's SearchMethod drives a custom search through a real master.

The search used here ("successive grid") tries four values of ``x``: each first-rung trial is
stopped right after it reports (so trials never wait for each other holding a slot); the best
two continue as new trials warm-started from their predecessor's checkpoint; the better of those
gets one more operation on the same trial. Trials are tiny Core API scripts whose loss is
``(x - 2.5)^2 + 1 / (1 + length)``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from determined_sdk import (
    Determined,
    Experiment,
    ExperimentState,
    FailedPreconditionError,
    InvalidArgumentError,
    MasterUnavailableError,
    TrialState,
)
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
from master_server.app import Master

from .conftest import REPO, write_model

pytestmark = pytest.mark.slow

TRIAL = """
import json
import core_api

info = core_api.get_cluster_info()
x = float(info.trial.hparams["x"])
steps = 0
with core_api.init() as ctx:
    if info.latest_checkpoint:
        with ctx.checkpoint.restore_path(info.latest_checkpoint) as path:
            state = json.loads((path / "state.json").read_text())
        steps = state["steps"]
        print(f"RESTORED from trial {state['trial']} at {steps}")
    for op in ctx.searcher.operations():
        steps = op.length
        loss = (x - 2.5) ** 2 + 1.0 / (1 + steps)
        ctx.train.report_validation_metrics(steps, {"loss": loss})
        with ctx.checkpoint.store_path({"steps_completed": steps}) as (path, _):
            state = {"steps": steps, "trial": info.trial.trial_id}
            (path / "state.json").write_text(json.dumps(state))
        op.report_completed(loss)
"""

XS = [0.0, 1.0, 2.5, 4.5]  # losses at length 1: 6.75, 2.75, 0.5, 4.5


def _config(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "entrypoint": "python main.py",
        "searcher": {"name": "custom", "metric": "loss"},
        "hyperparameters": {"x": 0.0},
        "max_restarts": 0,
        "checkpoint_storage": {"save_trial_latest": 100, "save_trial_best": 100},
    }


class SuccessiveGrid(SearchMethod):
    """See the module docstring. ``handled`` logs every event the method was given."""

    def __init__(self, xs: list[float]) -> None:
        self.xs = list(xs)
        self.x_of: dict[str, float] = {}
        self.rung = 0
        self.running: set[str] = set()
        self.results: dict[str, float] = {}
        self.finalist: str | None = None
        self.handled: list[tuple[str, str]] = []
        self.done = 0

    def _create(self, rid: str, x: float, parent: str | None, length: int) -> list[Action]:
        self.x_of[rid] = x
        self.running.add(rid)
        return [Create(rid, {"x": x}, checkpoint_from=parent), ValidateAfter(rid, length)]

    def initial_operations(self) -> list[Action]:
        self.handled.append(("initial_operations", ""))
        out: list[Action] = []
        for i, x in enumerate(self.xs):
            out += self._create(f"r0-{i}", x, None, 1)
        return out

    def on_trial_created(self, request_id: str) -> list[Action]:
        self.handled.append(("trial_created", request_id))
        return []

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        self.handled.append(("validation", f"{request_id}@{length}"))
        self.done += 1
        self.results[request_id] = metric
        if self.rung == 0 or request_id == self.finalist:
            return [Stop(request_id)]
        if len(self.results) < len(self.running):
            return []  # rung 1: wait for the other one (two trials fit the two slots)
        ranked = sorted(self.results, key=self.results.__getitem__)
        self.finalist = ranked[0]
        return [Stop(r) for r in ranked[1:]] + [ValidateAfter(ranked[0], 3)]

    def _exit(self, request_id: str) -> list[Action]:
        self.running.discard(request_id)
        if self.running:
            return []
        if self.rung == 0:
            self.rung = 1
            ranked = sorted(self.results, key=self.results.__getitem__)[:2]
            self.results = {}
            out: list[Action] = []
            for i, parent in enumerate(ranked):
                out += self._create(f"r1-{i}", self.x_of[parent], parent, 2)
            return out
        return [Shutdown()]

    def on_trial_exited(self, request_id: str) -> list[Action]:
        self.handled.append(("trial_exited", request_id))
        return self._exit(request_id)

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        self.handled.append(("trial_exited_early", request_id))
        self.results.pop(request_id, None)
        return self._exit(request_id)

    def progress(self) -> float:
        return self.done / 7  # 4 + 2 + 1 validations


class Failing(SuccessiveGrid):
    """Raises from the method at its ``fail_at``-th event (not part of the saved state)."""

    def __init__(self, xs: list[float], fail_at: int) -> None:
        super().__init__(xs)
        self.fail_at = fail_at

    def on_trial_exited(self, request_id: str) -> list[Action]:
        if len(self.handled) + 1 >= self.fail_at:
            raise RuntimeError("the search method crashed")
        return super().on_trial_exited(request_id)

    def save_state(self) -> Any:
        state = dict(vars(self))
        del state["fail_at"]
        return state


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_model(tmp_path_factory.mktemp("custom-model"), {"main.py": TRIAL})


@pytest.fixture
def new_experiment(det: Determined, trial_dir: pathlib.Path) -> Callable[[str], Experiment]:
    def make(name: str) -> Experiment:
        return det.create_experiment(_config(name), trial_dir)

    return make


def _check_finished_search(exp: Experiment, method: SuccessiveGrid) -> None:
    """The search ran exactly as a clean run does, and every event was handled once."""
    exp.reload()
    assert exp.state is ExperimentState.COMPLETED, exp.error
    assert exp.progress == 1.0
    trials = exp.list_trials()
    assert [t.hparams["x"] for t in trials] == [*XS, 2.5, 1.0]
    assert [t.state for t in trials] == [TrialState.COMPLETED] * 6
    assert [t.steps_completed for t in trials] == [1, 1, 1, 1, 3, 2]
    first, second = trials[:4], trials[4:]
    assert all(t.warm_start_checkpoint_uuid is None for t in first)
    for child, parent in zip(second, (first[2], first[1]), strict=True):
        assert child.warm_start_checkpoint_uuid == parent.latest_checkpoint_uuid
        assert any(
            line.message == f"RESTORED from trial {parent.id} at 1"
            for line in child.iter_log_lines()
        )
    assert len(method.handled) == len(set(method.handled)), method.handled
    kinds = [k for k, _ in method.handled]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "initial_operations": 1,
        "trial_created": 6,
        "validation": 7,
        "trial_exited": 6,
    }
    assert method.finalist == "r1-0"


def test_runner_drives_a_custom_search_to_completed(
    new_experiment: Callable[[str], Experiment],
) -> None:
    exp = new_experiment("runner")
    method = SuccessiveGrid(XS)
    assert SearchRunner(method, exp, poll_timeout=5).run() is ExperimentState.COMPLETED
    _check_finished_search(exp, method)


def test_a_new_runner_resumes_after_the_method_crashed(
    new_experiment: Callable[[str], Experiment], tmp_path: pathlib.Path
) -> None:
    exp = new_experiment("runner-crash")
    state_dir = tmp_path / "state"
    # The 9th event is a trial exit: the crash comes in the middle of the first rung.
    with pytest.raises(RuntimeError, match="crashed"):
        SearchRunner(Failing(XS, fail_at=9), exp, state_dir=state_dir, poll_timeout=5).run()
    assert exp.list_trials(), "the crash should come mid-search"
    exp.reload()
    assert exp.state is ExperimentState.ACTIVE
    fresh = SuccessiveGrid([])  # its state comes from state_dir
    runner = SearchRunner(fresh, exp, state_dir=state_dir, poll_timeout=5)
    assert fresh.xs == XS and len(fresh.handled) == 8
    assert runner.run() is ExperimentState.COMPLETED
    _check_finished_search(exp, fresh)


class _LosePost:
    """Wraps a runner's PostSearcherActions call: the ``nth`` call fails with UNAVAILABLE,
    before reaching the master (``deliver=False``) or after it was carried out (the reply is
    lost, ``deliver=True``)."""

    def __init__(self, call: Any, nth: int, deliver: bool) -> None:
        self.call, self.nth, self.deliver, self.count = call, nth, deliver, 0

    def __call__(self, request: Any, **kw: Any) -> Any:
        self.count += 1
        if self.count == self.nth:
            if self.deliver:
                self.call(request, **kw)
            raise MasterUnavailableError("connection lost (test)")
        return self.call(request, **kw)


@pytest.mark.parametrize("deliver", [False, True], ids=["lost-request", "lost-reply"])
def test_an_answer_lost_in_flight_is_carried_out_exactly_once(
    new_experiment: Callable[[str], Experiment], tmp_path: pathlib.Path, deliver: bool
) -> None:
    exp = new_experiment(f"runner-lost-{deliver}")
    state_dir = tmp_path / "state"
    method = SuccessiveGrid(XS)
    runner = SearchRunner(method, exp, state_dir=state_dir, poll_timeout=5)
    # The 1st post answers initial_operations: the 4 Creates.
    runner._post_actions = _LosePost(runner._post_actions, 1, deliver)  # type: ignore[assignment]
    with pytest.raises(MasterUnavailableError):
        runner.run()
    assert len(method.handled) == 1
    assert len(exp.list_trials()) == (4 if deliver else 0)
    # A new process: a fresh method over the same state. The answer is posted again only if
    # it did not arrive (a second post of the Creates would fail: "already created").
    fresh = SuccessiveGrid([])
    assert SearchRunner(fresh, exp, state_dir=state_dir, poll_timeout=5).run() is (
        ExperimentState.COMPLETED
    )
    _check_finished_search(exp, fresh)


def test_bad_answers_and_experiments(
    det: Determined,
    new_experiment: Callable[[str], Experiment],
    trial_dir: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    class Unknown(SuccessiveGrid):
        def initial_operations(self) -> list[Action]:
            return [Create("a", {"x": 1.0}), Stop("nope")]

    exp = new_experiment("runner-bad")
    try:
        with pytest.raises(InvalidArgumentError, match="nope") as ei:
            SearchRunner(Unknown(XS), exp, poll_timeout=5).run()
        assert "unknown request id" in str(ei.value)
        assert exp.list_trials() == []  # nothing of the answer was carried out

        class NotAList(SuccessiveGrid):
            def initial_operations(self) -> list[Action]:
                return Stop("a")  # type: ignore[return-value]

        with pytest.raises(TypeError, match="must return a list of actions"):
            SearchRunner(NotAList(XS), exp, poll_timeout=5).run()

        class NotAnAction(SuccessiveGrid):
            def initial_operations(self) -> list[Action]:
                return [{"type": "create", "request_id": "a"}]  # type: ignore[list-item]

        with pytest.raises(TypeError, match="Create, ValidateAfter, Stop or Shutdown"):
            SearchRunner(NotAnAction(XS), exp, poll_timeout=5).run()
    finally:
        exp.kill()
    assert exp.wait(interval=0.05, timeout=30) is ExperimentState.CANCELED

    single = det.create_experiment(
        {
            **_config("not-custom"),
            "searcher": {"name": "single", "metric": "loss", "max_length": 1},
        },
        trial_dir,
        activate=False,
    )
    with pytest.raises(FailedPreconditionError, match="custom searcher"):
        SearchRunner(SuccessiveGrid(XS), single).run()
    single.kill()
    with pytest.raises(InvalidArgumentError, match="poll_timeout"):
        SearchRunner(SuccessiveGrid(XS), single, poll_timeout=0)

    # create_or_resume refuses a config whose searcher is not custom (a dict before creating;
    # a file after creating, and then the experiment is killed, not left to run).
    bad = {**_config("not-custom"), "searcher": {"name": "single", "metric": "loss"}}
    with pytest.raises(InvalidArgumentError, match=r"searcher\.name: must be 'custom'"):
        SearchRunner.create_or_resume(
            SuccessiveGrid(XS), det, bad, trial_dir, state_dir=tmp_path / "a"
        )
    assert not (tmp_path / "a" / "experiment_id").exists()
    path = tmp_path / "single.yaml"
    path.write_text(json.dumps(bad))
    with pytest.raises(
        InvalidArgumentError, match=r"experiment (\d+) was created and killed"
    ) as ei:
        SearchRunner.create_or_resume(
            SuccessiveGrid(XS), det, path, trial_dir, state_dir=tmp_path / "b"
        )
    killed = det.get_experiment(int(re.findall(r"experiment (\d+)", str(ei.value))[0]))
    assert killed.wait(interval=0.05, timeout=30) is ExperimentState.CANCELED
    assert not (tmp_path / "b" / "experiment_id").exists()


def test_state_dir_of_another_experiment_is_refused(
    new_experiment: Callable[[str], Experiment], tmp_path: pathlib.Path
) -> None:
    class OneTrial(SuccessiveGrid):
        def initial_operations(self) -> list[Action]:
            return [Create("a", {"x": 2.5}), ValidateAfter("a", 1)]

        def on_validation_completed(self, request_id: str, metric: float, length: int) -> list:
            return [Stop(request_id), Shutdown()]

        def on_trial_exited(self, request_id: str) -> list[Action]:
            return []

    exp = new_experiment("runner-one")
    assert SearchRunner(OneTrial([]), exp, state_dir=tmp_path).run() is ExperimentState.COMPLETED
    other = new_experiment("runner-other")
    try:
        with pytest.raises(InvalidArgumentError, match=f"experiment {exp.id}, not {other.id}"):
            SearchRunner(OneTrial([]), other, state_dir=tmp_path)
    finally:
        other.kill()


def test_a_trial_waits_for_an_operation_sent_after_it_asked(
    sdk_master: Master,
    new_experiment: Callable[[str], Experiment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exp = new_experiment("runner-late")
    svc = sdk_master.parts["experiments"]
    real = svc.get_searcher_operation
    waiting = threading.Event()
    experiment_id = exp.id

    def spy(trial_id: int, timeout_s: float) -> tuple[int | None, bool]:
        # The master found no operation for this trial and did not tell it it is done: from now
        # on the trial is waiting, and the driver may answer.
        out = real(trial_id, 0)
        if out == (None, False) and svc.store.get_trial(trial_id).experiment_id == experiment_id:
            waiting.set()
            out = real(trial_id, timeout_s)
        return out

    real_nowait = svc.searcher_operation_nowait

    def spy_nowait(trial_id: int) -> tuple[bool, tuple[int | None, bool]] | None:
        # The asyncio server's lock-free check of a live trial: not ready, and not done.
        out = real_nowait(trial_id)
        if (
            out is not None
            and out == (False, (None, False))
            and svc.store.get_trial(trial_id).experiment_id == experiment_id
        ):
            waiting.set()
        return out

    monkeypatch.setattr(svc, "get_searcher_operation", spy)
    monkeypatch.setattr(svc, "searcher_operation_nowait", spy_nowait)

    class Late(SuccessiveGrid):
        """Answers trial_created with the trial's operation only once the trial waits for it
        (or has gone: then the test fails below)."""

        def initial_operations(self) -> list[Action]:
            return [Create("a", {"x": 2.5})]

        def on_trial_created(self, request_id: str) -> list[Action]:
            deadline = time.monotonic() + 30
            while not waiting.wait(0.05):
                (trial,) = exp.list_trials()
                if trial.state.value in ("COMPLETED", "ERROR", "CANCELED"):
                    break
                assert time.monotonic() < deadline, "the trial never asked for an operation"
            return [ValidateAfter(request_id, 1)]

        def on_validation_completed(self, request_id: str, metric: float, length: int) -> list:
            return [Stop(request_id)]

        def on_trial_exited(self, request_id: str) -> list[Action]:
            return [Shutdown()]

    try:
        assert SearchRunner(Late([]), exp, poll_timeout=5).run() is ExperimentState.COMPLETED
        assert waiting.is_set()
        (trial,) = exp.list_trials()
        assert trial.steps_completed == 1, "the trial exited without its operation"
        assert trial.state is TrialState.COMPLETED
    finally:
        exp.reload()
        if not exp.state.is_terminal:
            exp.kill()


def test_example_script_runs_and_resumes(sdk_master: Master, tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "DET_MASTER": sdk_master.address, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "examples/custom_search/search.py", "--state-dir", str(tmp_path)]
    outs = []
    for _ in range(2):  # the second run finds the finished search in the state dir
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outs.append(done.stdout)
    first, again = outs
    exp_line = first.splitlines()[0]
    assert exp_line.startswith("experiment ") and again.splitlines()[0] == exp_line
    for out in outs:
        assert "ended: COMPLETED" in out
        assert "best: lr=0.6/rung2 " in out
    assert first.count("validation_loss=") == 8 + 4 + 2 + 1  # the final best line included
    assert "validation_loss=" not in again.split("ended:")[0]  # nothing was run again
