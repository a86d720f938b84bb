"""Every allowed experiment and trial state transition, in one place.

The experiment service asks :func:`check_experiment_transition` /
:func:`check_trial_transition` before writing a state; a forbidden edge raises
FailedPreconditionError naming both states, so misuse from a user (pausing a completed
experiment) gets a clear answer and an internal bug cannot silently corrupt a state.
"""

from __future__ import annotations

from determined_sdk.errors import FailedPreconditionError
from master_server.domain import ExperimentState as E
from master_server.domain import TrialState as T

EXPERIMENT_EDGES: dict[E, frozenset[E]] = {
    E.ACTIVE: frozenset(
        {
            E.PAUSED,
            E.STOPPING_COMPLETED,
            E.STOPPING_CANCELED,
            E.STOPPING_ERROR,
            E.COMPLETED,
            E.CANCELED,
            E.ERROR,
        }
    ),
    # PAUSED -> COMPLETED: the last trial finished its work while the pause was on its way.
    E.PAUSED: frozenset({E.ACTIVE, E.STOPPING_CANCELED, E.CANCELED, E.COMPLETED, E.ERROR}),
    E.STOPPING_COMPLETED: frozenset({E.COMPLETED, E.STOPPING_CANCELED, E.STOPPING_ERROR, E.ERROR}),
    E.STOPPING_CANCELED: frozenset({E.CANCELED, E.ERROR}),
    E.STOPPING_ERROR: frozenset({E.ERROR, E.STOPPING_CANCELED}),
    E.COMPLETED: frozenset({E.DELETING}),
    E.CANCELED: frozenset({E.DELETING}),
    E.ERROR: frozenset({E.DELETING}),
    E.DELETING: frozenset({E.DELETED, E.ERROR}),
    E.DELETED: frozenset(),
}

TRIAL_EDGES: dict[T, frozenset[T]] = {
    T.QUEUED: frozenset({T.RUNNING, T.PAUSED, T.CANCELED, T.COMPLETED, T.ERROR}),
    T.RUNNING: frozenset(
        {
            T.QUEUED,
            T.PAUSED,
            T.STOPPING_COMPLETED,
            T.STOPPING_CANCELED,
            T.STOPPING_ERROR,
            T.COMPLETED,
            T.CANCELED,
            T.ERROR,
        }
    ),
    T.PAUSED: frozenset({T.QUEUED, T.CANCELED, T.COMPLETED, T.ERROR}),
    T.STOPPING_COMPLETED: frozenset({T.COMPLETED, T.STOPPING_CANCELED, T.CANCELED, T.ERROR}),
    T.STOPPING_CANCELED: frozenset({T.CANCELED, T.ERROR}),
    T.STOPPING_ERROR: frozenset({T.ERROR}),
    T.COMPLETED: frozenset(),
    T.CANCELED: frozenset(),
    T.ERROR: frozenset(),
}


def experiment_transition_allowed(src: E, dst: E) -> bool:
    """Whether an experiment may go from ``src`` to ``dst`` (staying put is always allowed)."""
    return src == dst or dst in EXPERIMENT_EDGES[src]


def trial_transition_allowed(src: T, dst: T) -> bool:
    """Whether a trial may go from ``src`` to ``dst`` (staying put is always allowed)."""
    return src == dst or dst in TRIAL_EDGES[src]


def check_experiment_transition(experiment_id: int, src: E, dst: E, action: str) -> None:
    """Raise FailedPreconditionError unless ``src -> dst`` is allowed."""
    if not experiment_transition_allowed(src, dst):
        raise FailedPreconditionError(
            f"experiment {experiment_id} is {src.value}; cannot {action} it"
        )


def check_trial_transition(trial_id: int, src: T, dst: T) -> None:
    """Raise FailedPreconditionError unless ``src -> dst`` is allowed."""
    if not trial_transition_allowed(src, dst):
        raise FailedPreconditionError(
            f"trial {trial_id} is {src.value}; cannot move to {dst.value}"
        )
