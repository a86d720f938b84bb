"""The searcher contract: an event-driven search method that answers with actions.

The master's experiment service owns one :class:`SearchMethod` per experiment. It feeds events
(trial created, a searcher operation completed with its metric, a trial exited, a trial exited
early) and carries out the actions returned. Trials are named by ``request_id`` (a string the
searcher makes; the service maps it to a trial id), so a searcher never sees database ids.

The service persists the inputs of every event (:mod:`master_server.searcher.journal`) and,
now and then, :meth:`SearchMethod.snapshot`; after a master restart it builds the method from
the config again, calls :meth:`SearchMethod.restore` with the last snapshot and replays the
inputs recorded after it, so the search goes on where it was. A method must therefore be
deterministic given its config, its snapshot and its inputs (including the calls to
:meth:`SearchMethod.progress`, which keep the value monotone).

Lengths are *absolute* (seed 001): ``ValidateAfter(rid, 300)`` means "train until 300 units in
total, then report the searcher metric", whatever was trained before.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Any

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Create:
    """Create a trial with these hyperparameters.

    ``checkpoint_from``: the request id of a trial whose latest checkpoint warm-starts this one
    (PBT), or None.
    """

    request_id: str
    hparams: JSONDict
    checkpoint_from: str | None = None


@dataclass(frozen=True)
class ValidateAfter:
    """Give the trial a searcher operation: train to ``length`` units in total, then report."""

    request_id: str
    length: int


@dataclass(frozen=True)
class Stop:
    """The searcher is done with this trial: it should checkpoint and exit (it completes)."""

    request_id: str


@dataclass(frozen=True)
class Shutdown:
    """The search is over; ``failure`` marks the experiment ERROR instead of COMPLETED."""

    failure: bool = False
    reason: str = ""


Action = Create | ValidateAfter | Stop | Shutdown


class ExitedReason(enum.Enum):
    """Why a trial ended before the searcher stopped it."""

    ERRORED = "ERRORED"  # crashed past max_restarts
    USER_CANCELED = "USER_CANCELED"  # killed by a user
    INVALID_HP = "INVALID_HP"  # the trial reported its hparams invalid


class SearchMethod(abc.ABC):
    """One search; every ``on_*`` returns the actions to carry out, in order."""

    @abc.abstractmethod
    def initial_operations(self) -> list[Action]:
        """Actions at experiment start (typically the first Creates + their ValidateAfters)."""

    @abc.abstractmethod
    def on_trial_created(self, request_id: str) -> list[Action]: ...

    @abc.abstractmethod
    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """The trial finished its operation ``length`` (or, for trials that only report
        metrics, reported a validation at ``length`` time units) with ``metric``."""

    @abc.abstractmethod
    def on_trial_exited(self, request_id: str) -> list[Action]:
        """The trial ended normally (completed its work or was stopped by the searcher)."""

    @abc.abstractmethod
    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]: ...

    @abc.abstractmethod
    def progress(self) -> float:
        """Fraction 0..1 of the whole search done (experiment progress)."""

    def on_validation_reported(
        self, request_id: str, metric: float, steps_completed: int
    ) -> list[Action] | None:
        """Optional: the trial reported a validation with the searcher metric in the middle of
        an operation (or while training one long operation).

        Returns:
            None when the method ignores such reports (the default: nothing to save), else the
            actions to carry out (possibly none; the searcher's state is then saved).
        """
        return None

    def on_trial_progress(self, request_id: str, length_done: float) -> None:  # noqa: B027
        """Optional: the trial has trained ``length_done`` units of its current operation."""

    @abc.abstractmethod
    def snapshot(self) -> JSONDict:
        """JSON-serializable state, enough for :meth:`restore` to continue the search."""

    @abc.abstractmethod
    def restore(self, state: JSONDict) -> None: ...
