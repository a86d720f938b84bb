"""Experiment and Trial resources through a real master: caching, reload, setters, actions."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from determined_sdk import (
    Determined,
    Experiment,
    ExperimentState,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OrderBy,
    Trial,
    TrialState,
)

from .conftest import CallCounter


def test_create_get_and_attributes(det: Determined, finished: Experiment) -> None:
    exp = det.get_experiment(finished.id)
    assert exp.id == finished.id
    assert exp.name == "finished"
    assert exp.state is ExperimentState.COMPLETED
    assert exp.state.is_terminal
    assert exp.config["searcher"]["name"] == "grid"
    assert exp.searcher_name == "grid"
    assert exp.progress == pytest.approx(1.0)
    assert exp.project_id == 1 and exp.workspace_id == 1
    assert exp.archived is False
    assert exp.num_trials == 2
    assert exp.end_time is not None and exp.end_time >= exp.start_time
    assert exp.unmanaged is False


def test_direct_instantiation_sends_no_request(
    counted: Determined, counter: CallCounter, finished: Experiment
) -> None:
    trial_id = finished.list_trials()[0].id
    exp = Experiment(finished.id, counted)
    trial = Trial(trial_id, counted.session)
    assert counter.count() == 0
    assert not exp.hydrated and not trial.hydrated
    # Lazy hydrate: the first cached attribute fetches once, later ones are free.
    assert trial.state is TrialState.COMPLETED
    assert trial.hparams["lr"] in (0.1, 0.5)
    assert trial.experiment_id == finished.id
    assert counter.count("GetTrial") == 1 and counter.count() == 1
    # Helper methods work on a blank object without fetching it first.
    list(Trial(trial_id, counted).iter_log_lines(tail=1))
    assert counter.count("TrialLogs") == 1 and counter.count("GetTrial") == 1
    assert exp.name == "finished"
    assert exp.config["name"] == "finished"
    assert counter.count("GetExperiment") == 1


def test_blank_object_for_unknown_id_raises_on_first_read(counted: Determined) -> None:
    t = Trial(987654, counted)
    with pytest.raises(NotFoundError, match="987654"):
        _ = t.state
    with pytest.raises(NotFoundError, match="987654"):
        t.kill()


def test_cached_until_reload(
    det: Determined, make_experiment: Callable[..., Experiment], counter: CallCounter
) -> None:
    exp = make_experiment(activate=False, name="cache")
    assert exp.state is ExperimentState.PAUSED
    other = det.get_experiment(exp.id)
    other.activate()
    other.set_description("changed elsewhere")
    # This object's copy is unchanged until reload().
    assert exp.state is ExperimentState.PAUSED
    assert exp.description == ""
    exp.reload()
    assert exp.description == "changed elsewhere"
    assert exp.state is not ExperimentState.PAUSED
    trial = exp.await_first_trial(timeout=60)
    first_state = trial.state
    exp.wait(interval=0.1, timeout=120)
    assert trial.state is first_state  # cached
    trial.reload()
    assert trial.state is TrialState.COMPLETED
    assert trial.summary_metrics["validation_metrics"]["loss"]["count"] == 4


def test_setters_update_server_and_local(
    det: Determined, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(activate=False, name="setters")
    exp.set_name("renamed")
    exp.set_description("desc")
    exp.add_label("a")
    exp.add_label("b")
    exp.add_label("a")
    exp.remove_label("b")
    assert (exp.name, exp.description, exp.labels) == ("renamed", "desc", {"a"})
    fresh = det.get_experiment(exp.id)
    assert (fresh.name, fresh.description, fresh.labels) == ("renamed", "desc", {"a"})
    with pytest.raises(InvalidArgumentError, match="name"):
        exp.set_name("")
    with pytest.raises(InvalidArgumentError, match="label"):
        exp.add_label("")
    # Setters on a blank object update the server without fetching it.
    blank = Experiment(exp.id, det)
    blank.set_name("blank-set")
    assert det.get_experiment(exp.id).name == "blank-set"
    exp.kill()
    assert exp.wait(interval=0.1, timeout=60) is ExperimentState.CANCELED


def test_archive_delete_and_state_errors(
    det: Determined, make_experiment: Callable[..., Experiment], tmp_path: pathlib.Path
) -> None:
    exp = make_experiment(activate=False, name="archive")
    with pytest.raises(FailedPreconditionError, match="PAUSED"):
        exp.archive()
    with pytest.raises(FailedPreconditionError):
        exp.delete()
    exp.cancel()
    assert exp.wait(interval=0.05, timeout=60) is ExperimentState.CANCELED
    exp.archive()
    assert exp.archived is True
    assert exp.id not in [e.id for e in det.list_experiments()]
    assert exp.id in [e.id for e in det.list_experiments(include_archived=True)]
    assert [e.id for e in det.list_experiments(archived_only=True)] == [exp.id]
    exp.unarchive()
    assert exp.archived is False
    code = exp.extract_code(tmp_path / "code")
    assert (code / "trainer.py").is_file()
    archive = exp.download_code(str(tmp_path / "tgz"))
    assert archive == str(tmp_path / "tgz" / f"exp-{exp.id}_model_def.tar.gz")
    exp.delete()
    with pytest.raises(NotFoundError, match=str(exp.id)):
        exp.reload()
    with pytest.raises(NotFoundError):
        det.get_experiment(exp.id)


def test_pause_activate_and_wait(make_experiment: Callable[..., Experiment]) -> None:
    exp = make_experiment(name="pause", hyperparameters={"steps": 3, "sleep": 0.01})
    exp.pause()
    exp.reload()
    assert exp.state is ExperimentState.PAUSED
    exp.activate()
    assert exp.wait(interval=0.1, timeout=120) is ExperimentState.COMPLETED
    assert exp.state is ExperimentState.COMPLETED  # wait() reloads


def test_wait_and_await_timeouts(make_experiment: Callable[..., Experiment]) -> None:
    from determined_sdk import DeadlineExceededError

    exp = make_experiment(activate=False, name="timeouts")
    with pytest.raises(ValueError, match=f"experiment {exp.id} is PAUSED"):
        exp.wait(interval=0.01, timeout=0.05)  # a paused experiment would never end
    running = make_experiment(name="deadline")
    with pytest.raises(DeadlineExceededError, match=str(running.id)):
        running.wait(interval=0.01, timeout=0.05)
    running.kill()
    with pytest.raises(DeadlineExceededError):
        exp.await_first_trial(interval=0.01, timeout=0.05)
    exp.kill()
    with pytest.raises(FailedPreconditionError, match="without creating a trial"):
        exp.await_first_trial(interval=0.05, timeout=30)


def test_list_and_iter_trials(
    finished: Experiment, counted: Determined, counter: CallCounter
) -> None:
    trials = finished.list_trials()
    assert [t.id for t in trials] == sorted(t.id for t in trials)
    assert len(trials) == 2
    assert sorted(t.hparams["lr"] for t in trials) == [0.1, 0.5]
    assert all(t.hydrated for t in trials)
    assert finished.list_trials(states=[TrialState.ERROR]) == []
    assert len(finished.list_trials(states=["completed"])) == 2
    with pytest.raises(InvalidArgumentError, match="states"):
        finished.list_trials(states=["nope"])
    blank = Experiment(finished.id, counted)
    it = blank.iter_trials(page_size=1)
    assert counter.count() == 0  # lazy: nothing sent until iteration
    first = next(it)
    assert counter.count("ListExperimentTrials") == 1
    rest = list(it)
    assert [first.id] + [t.id for t in rest] == [t.id for t in trials]
    assert counter.count("ListExperimentTrials") >= 2
    with pytest.raises(InvalidArgumentError, match="page_size"):
        blank.iter_trials(page_size=0)


def test_trial_attributes(finished: Experiment, det: Determined) -> None:
    t = det.get_trial(finished.list_trials()[0].id)
    assert t.state is TrialState.COMPLETED
    assert t.restarts == 0
    assert t.steps_completed == 60
    val = t.summary_metrics["validation_metrics"]["loss"]
    assert val["count"] == 6 and val["min"] <= val["max"]
    assert t.searcher_metric == pytest.approx(val["min"])
    assert t.latest_checkpoint_uuid is not None
    latest = t.latest_checkpoint
    assert latest is not None and latest.steps_completed == 60
    assert t.end_time is not None


def test_unknown_ids_and_bad_args(det: Determined) -> None:
    with pytest.raises(NotFoundError, match="4242"):
        det.get_experiment(4242)
    with pytest.raises(NotFoundError, match="4242"):
        det.get_trial(4242)
    with pytest.raises(NotFoundError):
        Experiment(4242, det).pause()
    with pytest.raises(NotFoundError):
        Experiment(4242, det).list_trials()
    with pytest.raises(InvalidArgumentError, match="experiment_id"):
        Experiment(0, det)
    with pytest.raises(InvalidArgumentError, match="trial_id"):
        Trial(-1, det)
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        det.list_experiments(sort_by="color")
    with pytest.raises(InvalidArgumentError, match="limit"):
        det.list_experiments(limit=-1)
    with pytest.raises(InvalidArgumentError, match=r"searcher\.name"):
        det.create_experiment({"name": "x", "searcher": {"name": "nope"}}, None)
    with pytest.raises(InvalidArgumentError, match="config"):
        det.create_experiment("/no/such/config.yaml", None)
    with pytest.raises(InvalidArgumentError, match="model_dir"):
        det.create_experiment({"name": "x"}, "/no/such/dir")


def test_list_experiments_filters(
    det: Determined, make_experiment: Callable[..., Experiment]
) -> None:
    a = make_experiment(activate=False, name="filter-alpha", labels=["blue"])
    b = make_experiment(activate=False, name="filter-beta", labels=["blue", "red"])
    got = det.list_experiments(name="filter-")
    assert [e.id for e in got] == [a.id, b.id]
    assert [e.id for e in det.list_experiments(labels=["red"])] == [b.id]
    assert [e.id for e in det.list_experiments(name="filter-", limit=1)] == [a.id]
    desc = det.list_experiments(name="filter-", sort_by="id", order_by=OrderBy.DESC)
    assert [e.id for e in desc] == [b.id, a.id]
    paused = det.list_experiments(states=[ExperimentState.PAUSED], name="filter-")
    assert {e.id for e in paused} == {a.id, b.id}
    assert next(det.iter_experiments(name="filter-alpha")).name == "filter-alpha"
    for e in (a, b):
        e.kill()


def test_move_to_project(det: Determined, make_experiment: Callable[..., Experiment]) -> None:
    ws = det.create_workspace("move-ws")
    proj = ws.create_project("move-proj", description="hp search")
    exp = make_experiment(activate=False, name="mover")
    exp.move_to_project("move-ws", "move-proj")
    assert (exp.project_id, exp.workspace_id) == (proj.id, ws.id)
    assert [e.id for e in proj.list_experiments()] == [exp.id]
    assert [e.id for e in ws.list_experiments()] == [exp.id]
    with pytest.raises(NotFoundError):
        exp.move_to_project("move-ws", "no-such-project")
    with pytest.raises(NotFoundError):
        exp.move_to_project("no-such-ws", "move-proj")
    exp.kill()


def test_deprecated_experiment_calls_warn(finished: Experiment) -> None:
    with pytest.warns(DeprecationWarning, match="list_trials"):
        trials = finished.get_trials()
    assert len(trials) == 2
    with pytest.warns(DeprecationWarning, match="list_checkpoints"):
        best = finished.top_checkpoint()
    assert best.uuid == finished.list_checkpoints(max_results=1)[0].uuid
    with pytest.warns(DeprecationWarning, match="list_checkpoints"):
        top = finished.top_n_checkpoints(2, sort_by="accuracy", smaller_is_better=False)
    assert [c.uuid for c in top] == [
        c.uuid for c in finished.list_checkpoints("accuracy", OrderBy.DESC, 2)
    ]
