"""Snapshot + replayed journal continues identically, for every search method.

The master persists a search as a snapshot now and then plus the inputs of every event since
(:mod:`master_server.searcher.journal`); after a restart it restores the snapshot and replays
those inputs. These tests cut a simulated search at various points, rebuild the method from
a JSON round trip of what would be in the database, and check that it decides exactly as the
uninterrupted search does (same actions, same snapshot, same trace to the end).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from determined_sdk.errors import InvalidArgumentError
from master_server.searcher.base import Create, ExitedReason
from master_server.searcher.custom import CustomSearchMethod
from master_server.searcher.journal import JournaledSearch
from tests.master_server.searcher.sim_harness import Simulator
from tests.master_server.searcher.test_searcher_snapshot import SEARCHERS, build, noisy


def _roundtrip(value: Any) -> Any:
    """What the store gives back (its encoder writes NaN/Infinity literals)."""
    return json.loads(json.dumps(value))


def _canon(state: Any) -> str:
    return json.dumps(state, sort_keys=True)


@pytest.mark.parametrize("name", list(SEARCHERS))
@pytest.mark.parametrize(("snap_at", "cut_at"), [(0.0, 0.4), (0.25, 0.7), (0.5, 0.55)])
def test_snapshot_plus_replayed_inputs_continues_identically(
    name: str, snap_at: float, cut_at: float
) -> None:
    searcher, sim_kw, _ = SEARCHERS[name]
    make = build(searcher)
    whole = Simulator(JournaledSearch(make()), noisy, order_seed=5, **sim_kw).finish()

    sim = Simulator(JournaledSearch(make()), noisy, order_seed=5, **sim_kw)
    live = sim.method
    assert isinstance(live, JournaledSearch)
    snapshot = None
    if snap_at > 0:
        sim.run(max_events=int(whole.steps * snap_at))
        snapshot = _roundtrip(live.snapshot())
    live.take_entries()  # covered by the snapshot (or by nothing: replay from the start)
    sim.run(max_events=max(1, int(whole.steps * cut_at) - int(whole.steps * snap_at)))
    assert sim.shutdown is None, "the cut should be mid-search"
    entries = _roundtrip(live.take_entries())
    assert entries, "some events happened after the snapshot"

    rebuilt = JournaledSearch(make())
    if snapshot is not None:
        rebuilt.restore(snapshot)
    assert rebuilt.replay(entries) == 0
    assert rebuilt.take_entries() == []  # a replay records nothing
    if not name.startswith("optuna") or snapshot is None:
        assert _canon(rebuilt.snapshot()) == _canon(live.snapshot())
    assert rebuilt.progress() == live.progress()
    sim.method = rebuilt
    sim.finish()
    assert sim.trace == whole.trace


def test_a_replay_that_decides_differently_is_counted() -> None:
    make = build(SEARCHERS["random"][0])
    live = JournaledSearch(make())
    live.initial_operations()
    entries = _roundtrip(live.take_entries())
    entries[0][1] ^= 1  # as if the method had decided otherwise
    assert JournaledSearch(make()).replay(entries) == 1


def test_an_unknown_input_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown input 'teleported'"):
        JournaledSearch(build(SEARCHERS["random"][0])()).replay([[["teleported", "r1"], None]])


def test_custom_search_posts_and_acks_replay() -> None:
    live = JournaledSearch(CustomSearchMethod())
    live.initial_operations()
    created = live.custom_post(
        [{"type": "create", "request_id": "a", "hparams": {"x": 1}}], ack_id=1, progress=0.2
    )
    assert created == [Create("a", {"x": 1})]
    live.on_trial_created("a")
    live.on_validation_completed("a", float("nan"), 5)
    live.on_trial_progress("a", 3.0)
    assert [e["id"] for e in live.custom_events_after(2)] == [3, 4]
    live.on_trial_exited_early("a", ExitedReason.ERRORED)
    with pytest.raises(InvalidArgumentError):
        live.custom_post([{"type": "stop", "request_id": "nope"}], ack_id=0, progress=None)
    entries = _roundtrip(live.take_entries())
    assert [e[0][0] for e in entries] == [
        "initial",
        "custom",
        "created",
        "validated",
        "progress",
        "ack",
        "exited_early",
    ]
    rebuilt = JournaledSearch(CustomSearchMethod())
    assert rebuilt.replay(entries) == 0
    assert _canon(rebuilt.snapshot()) == _canon(live.snapshot())
    assert rebuilt.progress() == live.progress() == 0.2
