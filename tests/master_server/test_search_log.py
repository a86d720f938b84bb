"""Search persistence (:mod:`master_server.engine.search_log`) against a real SQLite store.

A search is played as the engine plays it (trial runtimes, one save per event) with a small
snapshot threshold, so snapshots and log records interleave; at many points a fresh runtime is
restored from the store and must equal the live one: searcher state, every trial runtime,
started and shutdown.
"""

from __future__ import annotations

import json
import pathlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from master_server.config import validate_experiment_config
from master_server.domain import ExperimentState, NewExperiment
from master_server.engine import search_log
from master_server.engine.state import ExperimentRuntime, TrialRuntime
from master_server.searcher.base import Action, Create, Shutdown, Stop, ValidateAfter
from master_server.searcher.factory import make_search_method
from master_server.searcher.journal import JournaledSearch
from master_server.store import Store, open_store

CONFIG = validate_experiment_config(
    {
        "entrypoint": "python train.py",
        "hyperparameters": {"x": {"type": "double", "minval": -1, "maxval": 1}},
        "searcher": {
            "name": "adaptive_asha",
            "metric": "loss",
            "max_trials": 40,
            "max_length": 16,
            "max_rungs": 3,
            "divisor": 2,
            "max_concurrent_trials": 4,
        },
        "reproducibility": {"experiment_seed": 7},
    }
)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'master.db'}")
    yield s
    s.close()


def _state(rt: ExperimentRuntime) -> str:
    return json.dumps(
        {
            "method": rt.searcher.snapshot(),
            "trials": {rid: t.to_json() for rid, t in rt.trials.items()},
            "started": rt.started,
            "shutdown": None if rt.shutdown is None else repr(rt.shutdown),
        },
        sort_keys=True,
    )


def test_restore_at_any_point_equals_the_live_search(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_log, "MIN_LOG_BYTES", 1500)
    exp_id = store.create_experiment(
        NewExperiment(
            name="e",
            config=CONFIG,
            original_config="",
            project_id=1,
            searcher_name="adaptive_asha",
            state=ExperimentState.ACTIVE,
        )
    ).id
    rt = ExperimentRuntime(exp_id, CONFIG, JournaledSearch(make_search_method(CONFIG)))
    ready: deque[tuple[str, int]] = deque()
    exits: deque[str] = deque()

    def apply(actions: list[Action]) -> None:
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, Create):
                rt.trials[a.request_id] = TrialRuntime(len(rt.trials) + 1, exp_id, a.request_id)
                rt.dirty.add(a.request_id)
                pending.extend(rt.searcher.on_trial_created(a.request_id))
            elif isinstance(a, ValidateAfter):
                rt.trials[a.request_id].ops.append(a.length)
                rt.dirty.add(a.request_id)
                ready.append((a.request_id, a.length))
            elif isinstance(a, Stop):
                rt.trials[a.request_id].closed = True
                rt.dirty.add(a.request_id)
                exits.append(a.request_id)
            elif isinstance(a, Shutdown):
                rt.shutdown = a

    def restored() -> ExperimentRuntime:
        fresh = ExperimentRuntime(exp_id, CONFIG, JournaledSearch(make_search_method(CONFIG)))
        saved: dict[str, Any] = fresh.log.restore(store, fresh)
        for rid, s in saved.items():
            tr = TrialRuntime(int(s["trial_id"]), exp_id, rid, ops=list(s["ops"]))
            tr.completed_length, tr.closed = int(s["completed_length"]), bool(s["closed"])
            fresh.trials[rid] = tr
        return fresh

    rt.started = True
    apply(rt.searcher.initial_operations())
    rt.log.save(store, rt)
    events, checked, with_records = 1, 0, 0
    while exits or ready:
        if exits:
            apply(rt.searcher.on_trial_exited(exits.popleft()))
        else:
            rid, length = ready.popleft()
            rt.trials[rid].completed_length = length
            rt.dirty.add(rid)
            if events % 3 == 0:
                rt.searcher.on_trial_progress(rid, length / 2)
            loss = (length - 8) ** 2 / (1 + int(rid[1:]))
            apply(rt.searcher.on_validation_completed(rid, loss, length))
        rt.searcher.progress()  # before the save, as the engine asks
        rt.log.save(store, rt)
        events += 1
        if events % 7 == 0:
            fresh = restored()
            assert _state(fresh) == _state(rt), f"after event {events}"
            assert fresh.searcher.progress() == rt.searcher.progress()
            checked += 1
            with_records += fresh.log.records > 0
    assert rt.shutdown is not None
    assert _state(restored()) == _state(rt)
    assert rt.log.snapshots >= 3, "snapshots were written along the way"
    assert checked >= 10 and with_records >= checked // 2, "most restores replayed records"


def test_a_failed_write_makes_the_next_save_a_snapshot(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp_id = store.create_experiment(
        NewExperiment(
            name="e",
            config=CONFIG,
            original_config="",
            project_id=1,
            searcher_name="adaptive_asha",
            state=ExperimentState.ACTIVE,
        )
    ).id
    rt = ExperimentRuntime(exp_id, CONFIG, JournaledSearch(make_search_method(CONFIG)))
    rt.started = True
    rt.searcher.initial_operations()
    rt.log.save(store, rt)
    assert rt.log.snapshots == 1
    rt.searcher.on_validation_completed("r1", 0.5, 4)

    def refuse(experiment_id: int, event: dict[str, Any]) -> int:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(store, "append_searcher_event", refuse)
        with pytest.raises(OSError, match="disk full"):
            rt.log.save(store, rt)
    rt.searcher.on_validation_completed("r2", 0.25, 4)
    rt.log.save(store, rt)  # covers the inputs the failed record lost
    assert rt.log.snapshots == 2
    fresh = ExperimentRuntime(exp_id, CONFIG, JournaledSearch(make_search_method(CONFIG)))
    fresh.log.restore(store, fresh)
    assert json.dumps(fresh.searcher.snapshot()) == json.dumps(rt.searcher.snapshot())
