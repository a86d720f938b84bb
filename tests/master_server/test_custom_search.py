"""Custom search through a real master: a driver outside the master reads events and posts
actions; a driver that restarts continues where the last one left off."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grpc
import pytest

from determined_sdk.proto import experiment_pb2
from tests.support import Stubs, trial_state, write_model_dir

pytestmark = pytest.mark.slow

TRIAL = """
    import core_api
    with core_api.init() as ctx:
        x = core_api.get_cluster_info().trial.hparams["x"]
        for op in ctx.searcher.operations():
            ctx.train.report_validation_metrics(op.length, {"loss": (x - 2.0) ** 2})
            op.report_completed((x - 2.0) ** 2)
"""


class Driver:
    """A tiny custom search: try x in [0, 2, 4] one after another; stop at a perfect score."""

    def __init__(self, stubs: Stubs, exp_id: int) -> None:
        self.stubs, self.exp_id = stubs, exp_id

    def events(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        resp = self.stubs.experiments.GetSearcherEvents(
            experiment_pb2.GetSearcherEventsRequest(
                experiment_id=self.exp_id, after_event_id=after, timeout_seconds=30
            )
        )
        return [json.loads(e) for e in resp.events_json], resp.search_over

    def post(self, actions: list[dict[str, Any]], ack: int) -> None:
        self.stubs.experiments.PostSearcherActions(
            experiment_pb2.PostSearcherActionsRequest(
                experiment_id=self.exp_id,
                actions_json=[json.dumps(a) for a in actions],
                acknowledge_event_id=ack,
            )
        )

    def step(self, after: int, state: dict[str, Any]) -> tuple[int, bool]:
        events, over = self.events(after)
        for ev in events:
            actions: list[dict[str, Any]] = []
            if ev["type"] == "initial_operations" or ev["type"] == "trial_exited":
                xs = [0.0, 2.0, 4.0]
                if ev["type"] == "trial_exited":
                    state["done"] += 1
                if state["best"] == 0.0 or state["next"] >= len(xs):
                    actions = [{"type": "shutdown"}]
                else:
                    rid = f"x{state['next']}"
                    actions = [
                        {"type": "create", "request_id": rid, "hparams": {"x": xs[state["next"]]}},
                        {"type": "validate_after", "request_id": rid, "length": 5},
                    ]
                    state["next"] += 1
            elif ev["type"] == "validation":
                state["best"] = min(state["best"], ev["metric"])
                actions = [{"type": "stop", "request_id": ev["request_id"]}]
            if actions:
                self.post(actions, ev["id"])
            after = ev["id"]
        return after, over


def test_custom_search_driver_survives_a_restart(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL})
    cfg = {
        "name": "custom",
        "entrypoint": "python main.py",
        "searcher": {"name": "custom", "metric": "loss"},
        "max_restarts": 0,
        "hyperparameters": {"x": 0.0},
    }
    exp = stubs.create(cfg, md)
    state: dict[str, Any] = {"next": 0, "best": float("inf"), "done": 0}
    after, _ = Driver(stubs, exp.id).step(0, state)  # handles initial_operations: creates x0
    # The driver "restarts": a new one starts from event 0 and is not handed answered events.
    driver = Driver(stubs, exp.id)
    after, over = 0, False
    while not over:
        after, over = driver.step(after, state)
    assert stubs.exp_state(exp.id) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert [json.loads(t.hparams_json)["x"] for t in trials] == [0.0, 2.0]  # stopped at best 0
    assert [trial_state(t) for t in trials] == ["COMPLETED", "COMPLETED"]
    assert stubs.experiment(exp.id).progress == 1.0


def test_custom_search_bad_input(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL})
    single = {
        "name": "s",
        "entrypoint": "python main.py",
        "searcher": {"name": "single", "metric": "loss", "max_length": 1},
    }
    plain = stubs.create(single, md, activate=False)
    custom = stubs.create({**single, "searcher": {"name": "custom", "metric": "loss"}}, md)
    cases = [
        (plain.id, [{"type": "shutdown"}], grpc.StatusCode.FAILED_PRECONDITION, "custom searcher"),
        (999, [], grpc.StatusCode.NOT_FOUND, "999"),
        (
            custom.id,
            [{"type": "stop", "request_id": "nope"}],
            grpc.StatusCode.INVALID_ARGUMENT,
            "nope",
        ),
        (custom.id, [{"type": "launch"}], grpc.StatusCode.INVALID_ARGUMENT, "launch"),
    ]
    for exp_id, actions, code, needle in cases:
        with pytest.raises(grpc.RpcError) as ei:
            Driver(stubs, exp_id).post(actions, 0)
        assert ei.value.code() == code, ei.value.details()
        assert needle in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        stubs.experiments.PostSearcherActions(
            experiment_pb2.PostSearcherActionsRequest(experiment_id=custom.id, actions_json=["[1]"])
        )
    assert (
        ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "actions_json[0]" in ei.value.details()
    )
    assert stubs.trials_of(custom.id) == []  # nothing was half-applied


def test_a_create_whose_record_died_with_the_master_is_not_made_twice(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    """The master created the trial but died before recording the event (here: the record is
    removed from the database); the driver posts the Create again to the next master, which
    carries it out on the trial the dead one left instead of failing on the duplicate."""
    import sqlalchemy as sa

    data = tmp_path / "data"
    m1 = master_factory(data_dir=data)
    stubs = Stubs.connect(m1.address)
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL})
    cfg = {
        "name": "custom",
        "entrypoint": "python main.py",
        "searcher": {"name": "custom", "metric": "loss"},
        "hyperparameters": {"x": 0.0},
    }
    exp = stubs.create(cfg, md, activate=False)
    create = [{"type": "create", "request_id": "a", "hparams": {"x": 1.0}}]
    Driver(stubs, exp.id).post(create, 0)
    (before,) = stubs.trials_of(exp.id)
    stubs.channel.close()
    m1.stop()
    engine = sa.create_engine(f"sqlite:///{data / 'master.db'}")
    with engine.begin() as conn:
        lost = conn.execute(sa.text("DELETE FROM searcher_events")).rowcount
    engine.dispose()
    assert lost == 1  # the post's record (the experiment's snapshot was written at creation)

    m2 = master_factory(data_dir=data)
    stubs = Stubs.connect(m2.address)
    Driver(stubs, exp.id).post(create, 0)
    (after,) = stubs.trials_of(exp.id)
    assert (after.id, after.hparams_json) == (before.id, before.hparams_json)
    assert trial_state(after) == "PAUSED"
    events, _ = Driver(stubs, exp.id).events(0)
    assert [e["type"] for e in events] == ["trial_created"]
    stubs.channel.close()
