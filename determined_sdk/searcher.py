"""Custom hyperparameter search: your own search method, run against the master.

An experiment whose config says ``searcher: {name: custom, metric: ...}`` creates no trials by
itself. The master records *events* (the experiment started, a trial was created, a trial
reported a validation, a trial exited) and waits for *actions* (create a trial, train a trial to
a length, stop a trial, end the search). A :class:`SearchRunner` connects the two: it long-polls
the master for events, hands each one to your :class:`SearchMethod`, and posts the actions the
method returns, acknowledging the event in the same call.

.. code-block:: python

    from determined_sdk import Determined
    from determined_sdk.searcher import (
        Create, SearchMethod, SearchRunner, Shutdown, Stop, ValidateAfter,
    )

    class TryEach(SearchMethod):  # one trial per learning rate, one after another

        def __init__(self, lrs: list[float]) -> None:
            self.left, self.total = list(lrs), len(lrs)

        def _next(self) -> list:
            if not self.left:
                return [Shutdown()]
            lr = self.left.pop(0)
            return [Create(f"lr={lr}", {"lr": lr}), ValidateAfter(f"lr={lr}", 100)]

        def initial_operations(self):
            return self._next()

        def on_trial_created(self, request_id):
            return []

        def on_validation_completed(self, request_id, metric, length):
            print(request_id, metric)
            return [Stop(request_id)]

        def on_trial_exited(self, request_id):
            return self._next()

        def on_trial_exited_early(self, request_id, reason):
            return self._next()

        def progress(self):
            return 1 - len(self.left) / self.total

    with Determined() as d:      # $DET_MASTER
        runner = SearchRunner.create_or_resume(
            TryEach([0.1, 0.01]), d, "search.yaml", "model_dir", state_dir="search_state"
        )
        print(runner.run())      # ExperimentState.COMPLETED

Resuming. Every event the runner answers is acknowledged together with its answer, so a runner
that starts again (after a crash, a ``Ctrl-C``, a reboot) is handed only the events nobody
answered yet. With a ``state_dir`` the runner also saves your method's state
(:meth:`SearchMethod.save_state`) and its answer *before* posting; a new runner over the same
directory loads that state and re-posts an answer whose post did not reach the master, so every
event is handled by your method exactly once. See ``docs/custom-search.md``.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import json
import logging
import math
import os
import pathlib
import pickle
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from determined_sdk import errors
from determined_sdk._client import Determined
from determined_sdk._enums import ExperimentState
from determined_sdk._experiment import Experiment
from determined_sdk._session import Session
from determined_sdk.proto import experiment_pb2

logger = logging.getLogger(__name__)

JSONDict = dict[str, Any]

#: Version of the runner's state file; a file of another version is refused.
STATE_VERSION = 1
STATE_FILE = "runner_state.pkl"
EXPERIMENT_ID_FILE = "experiment_id"

# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """Create a trial.

    Attributes:
        request_id: Your name for the trial (a non-empty string, unique in the search). Every
            later event and action names the trial by it.
        hparams: The trial's hyperparameters (JSON-serializable).
        checkpoint_from: The request id of a trial whose latest checkpoint warm-starts this one
            (the new trial sees it as ``latest_checkpoint`` on its first run), or None.
    """

    request_id: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_from: str | None = None


@dataclass(frozen=True)
class ValidateAfter:
    """Give a trial a searcher operation: train until ``length`` units *in total*, then report.

    Lengths are absolute: ``ValidateAfter(rid, 300)`` after ``ValidateAfter(rid, 100)`` means
    200 more units. The trial reports the operation with ``op.report_completed(metric)``, which
    reaches your method as :meth:`SearchMethod.on_validation_completed`.

    Attributes:
        request_id: The trial.
        length: Units (batches, unless the trial decides otherwise) in total; a positive int.
    """

    request_id: str
    length: int


@dataclass(frozen=True)
class Stop:
    """The search is done with a trial: it is asked to checkpoint and exit, and then COMPLETES.

    Attributes:
        request_id: The trial.
    """

    request_id: str


@dataclass(frozen=True)
class Shutdown:
    """End the search; the experiment finishes when its remaining trials have exited.

    Attributes:
        failure: Finish the experiment as ERROR instead of COMPLETED.
        reason: Why (shown as the experiment's error when ``failure``).
    """

    failure: bool = False
    reason: str = ""


Action = Create | ValidateAfter | Stop | Shutdown
"""Anything a :class:`SearchMethod` may return."""


def action_to_json(action: Action) -> JSONDict:
    """The JSON form of an action, as the master's ``PostSearcherActions`` takes it.

    Args:
        action: One of :class:`Create`, :class:`ValidateAfter`, :class:`Stop`,
            :class:`Shutdown`.

    Returns:
        A JSON-serializable dict.

    Raises:
        TypeError: ``action`` is not an action.
    """
    if isinstance(action, Create):
        return {
            "type": "create",
            "request_id": action.request_id,
            "hparams": dict(action.hparams),
            "checkpoint_from": action.checkpoint_from,
        }
    if isinstance(action, ValidateAfter):
        return {"type": "validate_after", "request_id": action.request_id, "length": action.length}
    if isinstance(action, Stop):
        return {"type": "stop", "request_id": action.request_id}
    if isinstance(action, Shutdown):
        return {"type": "shutdown", "failure": action.failure, "reason": action.reason}
    raise TypeError(
        "a search method must return Create, ValidateAfter, Stop or Shutdown objects, "
        f"got {type(action).__name__} ({action!r})"
    )


# --- events -----------------------------------------------------------------------------------


class ExitedReason(enum.Enum):
    """Why a trial ended before the search stopped it."""

    ERRORED = "ERRORED"
    """It failed more often than the config's ``max_restarts`` allows."""
    USER_CANCELED = "USER_CANCELED"
    """A user killed it."""
    INVALID_HP = "INVALID_HP"
    """The trial reported its hyperparameters invalid (``EarlyExitReason.INVALID_HP``)."""


class SearchMethod(abc.ABC):
    """Your search: it answers each event with a list of actions (possibly empty).

    Subclass it and implement the ``on_*`` methods, :meth:`initial_operations` and
    :meth:`progress`. A :class:`SearchRunner` calls them one at a time, in the order the master
    recorded the events.

    For a search that resumes after your program restarts, the runner saves
    :meth:`save_state` after every event (see :class:`SearchRunner`); the defaults save and
    restore the instance's attributes, which works as long as they can be pickled.
    """

    @abc.abstractmethod
    def initial_operations(self) -> list[Action]:
        """The experiment started: return the first actions (usually Creates + ValidateAfters).

        Returns:
            Actions to carry out, in order.
        """

    @abc.abstractmethod
    def on_trial_created(self, request_id: str) -> list[Action]:
        """The master created the trial asked for by ``Create(request_id, ...)``.

        Args:
            request_id: The trial.

        Returns:
            Actions to carry out, in order.
        """

    @abc.abstractmethod
    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """The trial completed its operation of ``length`` units with ``metric``.

        Args:
            request_id: The trial.
            metric: The searcher metric it reported (NaN when it reported no finite value).
            length: The operation's (absolute) length.

        Returns:
            Actions to carry out, in order (typically the next ValidateAfter, or a Stop).
        """

    @abc.abstractmethod
    def on_trial_exited(self, request_id: str) -> list[Action]:
        """The trial ended normally: it was stopped, or its code finished.

        Args:
            request_id: The trial.

        Returns:
            Actions to carry out, in order.
        """

    @abc.abstractmethod
    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """The trial ended before the search was done with it.

        Args:
            request_id: The trial.
            reason: Why.

        Returns:
            Actions to carry out, in order.
        """

    @abc.abstractmethod
    def progress(self) -> float:
        """How much of the search is done, 0..1 (shown as the experiment's progress).

        The master keeps the experiment's progress monotone and below 1 until the search ends.
        """

    def on_trial_progress(self, request_id: str, length_done: float) -> None:  # noqa: B027
        """Optional: the trial has trained ``length_done`` units (absolute) of its operation.

        Progress events are coalesced by the master and need no answer.

        Args:
            request_id: The trial.
            length_done: Units trained so far.
        """

    def save_state(self) -> Any:
        """The state a :class:`SearchRunner` saves after every event (must be picklable).

        The default is a shallow copy of the instance's attributes; override it (with
        :meth:`load_state`) to save less, or to save things that cannot be pickled.
        """
        return dict(vars(self))

    def load_state(self, state: Any) -> None:
        """Continue from what :meth:`save_state` returned (in an earlier process).

        Args:
            state: The saved state.
        """
        vars(self).update(state)


# --- the runner -------------------------------------------------------------------------------


@dataclass
class _SavedState:
    """What a runner keeps in its state file."""

    experiment_id: int
    method_state: Any
    event_id: int  # the last event the method handled
    answer: list[JSONDict]  # the actions answering it (posted, or maybe not)
    version: int = STATE_VERSION


class SearchRunner:
    """Runs a :class:`SearchMethod` against an experiment with ``searcher.name: custom``.

    Args:
        method: Your search method.
        experiment: The experiment (from ``Determined.create_experiment`` or
            ``Determined.get_experiment``); calls go through its client's session.
        state_dir: A directory where the runner saves the method's state and its last answer
            after every event, so a new runner (in a new process) over the same directory
            continues exactly where this one stopped. None: nothing is saved; a new runner
            then gets the unanswered events with a fresh method.
        poll_timeout: Seconds each long poll for events waits on the master.

    Raises:
        InvalidArgumentError: ``poll_timeout`` is not positive, or ``state_dir`` holds the state
            of another experiment.
    """

    def __init__(
        self,
        method: SearchMethod,
        experiment: Experiment,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        poll_timeout: float = 30.0,
    ) -> None:
        if not poll_timeout > 0:
            raise errors.InvalidArgumentError(f"poll_timeout: must be > 0, got {poll_timeout}")
        self.method = method
        self.experiment = experiment
        self.poll_timeout = float(poll_timeout)
        self.state_dir = None if state_dir is None else pathlib.Path(state_dir)
        session: Session = experiment._session
        self._get_events = session.get_searcher_events
        self._post_actions = session.post_searcher_actions
        self._saved: _SavedState | None = None
        if self.state_dir is not None:
            self._saved = self._load()
            if self._saved is not None:
                method.load_state(self._saved.method_state)

    @classmethod
    def create_or_resume(
        cls,
        method: SearchMethod,
        client: Determined,
        config: Mapping[str, Any] | str | os.PathLike[str],
        model_dir: str | os.PathLike[str] | None,
        *,
        state_dir: str | os.PathLike[str],
        project_id: int | None = None,
        poll_timeout: float = 30.0,
    ) -> SearchRunner:
        """A runner for the experiment saved in ``state_dir``, or for a new one.

        The first call creates the experiment and writes its id to ``state_dir``; a later call
        (a restarted program) finds the id there and resumes that experiment's search, loading
        the method's saved state into ``method``.

        Args:
            method: Your search method (fresh; its saved state is loaded when resuming).
            client: The client to talk to the master with.
            config: The experiment config (a dict, or a YAML/JSON file path; used only when
                creating); its searcher must be ``custom``.
            model_dir: The model directory (used only when creating).
            state_dir: Where the experiment id and the runner's state are kept (created if
                missing).
            project_id: Project of a new experiment (None: the default project).
            poll_timeout: See :class:`SearchRunner`.

        Returns:
            The runner; call :meth:`run`.

        Raises:
            InvalidArgumentError: The config is invalid or its searcher is not ``custom``.
            NotFoundError: The saved experiment no longer exists.
        """
        root = pathlib.Path(state_dir)
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / EXPERIMENT_ID_FILE
        if id_file.exists():
            exp = client.get_experiment(int(id_file.read_text().strip()))
            logger.info("resuming the search of experiment %d", exp.id)
        else:
            if isinstance(config, Mapping):
                name = (config.get("searcher") or {}).get("name")
                if name != "custom":
                    raise errors.InvalidArgumentError(
                        f"searcher.name: must be 'custom' for a SearchRunner, got {name!r}"
                    )
            exp = client.create_experiment(config, model_dir, project_id=project_id)
            if exp.searcher_name != "custom":
                exp.kill()  # its own searcher would run it: do not leave it behind
                raise errors.InvalidArgumentError(
                    f"searcher.name: must be 'custom' for a SearchRunner, got "
                    f"{exp.searcher_name!r} (experiment {exp.id} was created and killed)"
                )
            _atomic_write(id_file, f"{exp.id}\n".encode())
            logger.info("created experiment %d for the search", exp.id)
        return cls(method, exp, state_dir=root, poll_timeout=poll_timeout)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> ExperimentState:
        """Answer events until the search is over.

        Returns when the experiment reaches a final state (COMPLETED after your
        :class:`Shutdown` and the last trial's exit, CANCELED or ERROR). An exception from
        your method, or a failed call to the master, propagates. To continue, start a new
        runner over the same ``state_dir`` with a fresh method (it is restored to its state
        after the last event handled); calling :meth:`run` again on this runner also works
        after a failed call, but keeps whatever your method changed before it raised.

        Returns:
            The experiment's final state.

        Raises:
            InvalidArgumentError: The master refused an answer (an unknown request id, a
                duplicate Create, an action after Shutdown, ...); the message names the field.
            FailedPreconditionError: The experiment does not use the custom searcher.
            TypeError: The method returned something that is not a list of actions.
            DeterminedError: Any other failure of a call to the master.
        """
        after = 0
        while True:
            resp = self._get_events(
                experiment_pb2.GetSearcherEventsRequest(
                    experiment_id=self.experiment.id,
                    after_event_id=after,
                    timeout_seconds=self.poll_timeout,
                ),
                timeout=self.poll_timeout + 30.0,
            )
            over = resp.search_over
            for text in resp.events_json:
                event = json.loads(text)
                self._handle(event, post=not over)
                after = max(after, int(event["id"]))
            if over:
                self.experiment.reload()
                state = self.experiment.state
                logger.info("experiment %d: the search is over (%s)", self.experiment.id, state)
                return state

    def _handle(self, event: JSONDict, *, post: bool) -> None:
        """Dispatch one event (unless the saved state says it was handled) and post the answer."""
        event_id = int(event["id"])
        saved = self._saved
        if saved is not None and event_id <= saved.event_id:
            # Handled by a runner before us. The master still has it, so the answer of the last
            # handled event may not have reached it: post that again; earlier ones were
            # answered (or needed no answer).
            if event_id == saved.event_id and post:
                self._post(event, saved.answer)
            return
        answer = [action_to_json(a) for a in self._dispatch(event)]
        self._save(event_id, answer)
        if event["type"] == "trial_progress" and not answer:
            return  # needs no answer; the next poll acknowledges it
        if post:
            self._post(event, answer)
        elif answer:
            logger.info(
                "experiment %d is over; not posting the answer to event %d: %s",
                self.experiment.id,
                event_id,
                answer,
            )

    def _dispatch(self, event: Mapping[str, Any]) -> list[Action]:
        m = self.method
        kind = event.get("type")
        rid = str(event.get("request_id", ""))
        out: Any
        if kind == "initial_operations":
            out = m.initial_operations()
        elif kind == "trial_created":
            out = m.on_trial_created(rid)
        elif kind == "validation":
            metric = event.get("metric")
            out = m.on_validation_completed(
                rid, math.nan if metric is None else float(metric), int(event["length"])
            )
        elif kind == "trial_progress":
            done = event.get("length_done")
            m.on_trial_progress(rid, math.nan if done is None else float(done))
            out = []
        elif kind == "trial_exited":
            out = m.on_trial_exited(rid)
        elif kind == "trial_exited_early":
            out = m.on_trial_exited_early(rid, ExitedReason(event["reason"]))
        else:
            logger.warning("ignoring a searcher event of unknown type %r: %s", kind, event)
            out = []
        if out is None or isinstance(out, str | bytes) or not isinstance(out, Iterable):
            raise TypeError(
                f"{type(m).__name__} must return a list of actions for a {kind} event, "
                f"got {type(out).__name__}"
            )
        return list(out)

    def _post(self, event: Mapping[str, Any], answer: list[JSONDict]) -> None:
        progress = _progress_of(self.method)
        req = experiment_pb2.PostSearcherActionsRequest(
            experiment_id=self.experiment.id,
            actions_json=[json.dumps(a) for a in answer],
            progress=progress,
            acknowledge_event_id=int(event["id"]),
        )
        try:
            self._post_actions(req)
        except errors.FailedPreconditionError:
            # The experiment may have ended (killed, or finished) since the events were read:
            # then there is nothing left to answer.
            self.experiment.reload()
            if self.experiment.state.is_terminal:
                return
            raise
        except errors.DeterminedError as e:
            e.add_note(
                f"while answering event {event.get('id')} ({event.get('type')} "
                f"{event.get('request_id', '')}) of experiment {self.experiment.id} with {answer}"
            )
            raise

    # -- the state file -----------------------------------------------------------------------

    def _state_path(self) -> pathlib.Path:
        assert self.state_dir is not None
        return self.state_dir / STATE_FILE

    def _load(self) -> _SavedState | None:
        path = self._state_path()
        if not path.exists():
            return None
        with path.open("rb") as f:
            saved = pickle.load(f)  # the runner's own file: trusted
        if not isinstance(saved, _SavedState) or saved.version != STATE_VERSION:
            raise errors.InvalidArgumentError(
                f"state_dir: {str(path)!r} is not a state file of this SearchRunner version"
            )
        if saved.experiment_id != self.experiment.id:
            raise errors.InvalidArgumentError(
                f"state_dir: {str(self.state_dir)!r} holds the search of experiment "
                f"{saved.experiment_id}, not {self.experiment.id}"
            )
        return saved

    def _save(self, event_id: int, answer: list[JSONDict]) -> None:
        """Remember the handled event and its answer; with a state_dir, on disk first."""
        if self.state_dir is None:
            self._saved = _SavedState(self.experiment.id, None, event_id, answer)
            return
        saved = _SavedState(self.experiment.id, self.method.save_state(), event_id, answer)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self._state_path(), pickle.dumps(saved))
        self._saved = saved


def _progress_of(method: SearchMethod) -> float:
    """The method's progress, clamped to [0, 1] (0 when it is not a finite number)."""
    try:
        value = float(method.progress())
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = [
    "Action",
    "Create",
    "ExitedReason",
    "SearchMethod",
    "SearchRunner",
    "Shutdown",
    "Stop",
    "ValidateAfter",
    "action_to_json",
]
