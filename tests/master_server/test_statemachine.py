"""The state machine: allowed edges pass, forbidden edges fail naming the state."""

from __future__ import annotations

import itertools

import pytest

from determined_sdk.errors import FailedPreconditionError
from master_server.domain import TERMINAL_EXPERIMENT_STATES, TERMINAL_TRIAL_STATES
from master_server.domain import ExperimentState as E
from master_server.domain import TrialState as T
from master_server.statemachine import (
    EXPERIMENT_EDGES,
    TRIAL_EDGES,
    check_experiment_transition,
    check_trial_transition,
    experiment_transition_allowed,
    trial_transition_allowed,
)


def test_every_state_has_an_edge_list() -> None:
    assert set(EXPERIMENT_EDGES) == set(E)
    assert set(TRIAL_EDGES) == set(T)


def test_terminal_trials_never_move() -> None:
    for src, dst in itertools.product(TERMINAL_TRIAL_STATES, T):
        assert trial_transition_allowed(src, dst) == (src == dst)


def test_terminal_experiments_only_go_to_deleting() -> None:
    for src, dst in itertools.product(TERMINAL_EXPERIMENT_STATES, E):
        assert experiment_transition_allowed(src, dst) == (dst in (src, E.DELETING))


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        (E.ACTIVE, E.PAUSED, True),
        (E.PAUSED, E.ACTIVE, True),
        (E.PAUSED, E.COMPLETED, True),
        (E.ACTIVE, E.STOPPING_CANCELED, True),
        (E.STOPPING_CANCELED, E.CANCELED, True),
        (E.STOPPING_CANCELED, E.ACTIVE, False),
        (E.COMPLETED, E.PAUSED, False),
        (E.CANCELED, E.ACTIVE, False),
        (E.DELETED, E.ACTIVE, False),
    ],
)
def test_experiment_edges(src: E, dst: E, ok: bool) -> None:
    assert experiment_transition_allowed(src, dst) is ok
    if ok:
        check_experiment_transition(3, src, dst, "do")
    else:
        with pytest.raises(
            FailedPreconditionError, match=f"experiment 3 is {src.value}; cannot do"
        ):
            check_experiment_transition(3, src, dst, "do")


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        (T.QUEUED, T.RUNNING, True),
        (T.RUNNING, T.QUEUED, True),  # restart after a crash
        (T.RUNNING, T.PAUSED, True),
        (T.PAUSED, T.QUEUED, True),
        (T.PAUSED, T.RUNNING, False),  # must queue for slots first
        (T.COMPLETED, T.RUNNING, False),
        (T.ERROR, T.QUEUED, False),
    ],
)
def test_trial_edges(src: T, dst: T, ok: bool) -> None:
    assert trial_transition_allowed(src, dst) is ok
    if not ok:
        with pytest.raises(FailedPreconditionError, match=f"trial 9 is {src.value}"):
            check_trial_transition(9, src, dst)
