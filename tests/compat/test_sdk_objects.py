"""The SDK behaviours Determined's end-to-end SDK tests rely on, with ``from determined_sdk
import client`` in place of ``from determined.experimental import client``."""

from __future__ import annotations

import ast
import datetime
import pathlib
import tarfile
from typing import Any

import pytest

from determined_sdk import client
from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

from .conftest import HERE

TINY = HERE / "tiny"
SDK = HERE.parent.parent / "determined_sdk"


def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "sdk-case",
        "entrypoint": "python3 train.py",
        "searcher": {"name": "single", "metric": "loss", "max_length": 2},
        "max_restarts": 0,
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def done_exp(det_client: client.Determined) -> client.Experiment:
    exp = client.create_experiment(_config(labels=["a", "b"]), str(TINY))
    assert exp.wait(interval=0.2) == client.ExperimentState.COMPLETED
    return exp


def test_trial_logs_are_strings_with_determineds_arguments(done_exp: client.Experiment) -> None:
    trial = done_exp.list_trials()[0]
    lines = list(trial.logs())
    assert lines and all(isinstance(x, str) and x.endswith("\n") for x in lines)
    assert list(trial.iter_logs()) == lines
    assert list(trial.logs(head=1)) == lines[:1] and list(trial.logs(tail=1)) == lines[-1:]
    assert [x for x in trial.logs(search_text="START FROM")] == ["START FROM None\n"]
    warned = list(trial.logs(min_level="LOG_LEVEL_WARNING"))
    assert warned and all("a warning line" in x or "WARN" in x or "ERROR" in x for x in warned)
    assert len(list(trial.logs(min_level=client.LogLevel.TRACE))) == len(lines)
    assert list(trial.logs(rank_ids=[1])) == []
    assert list(trial.logs(stdtypes=["stdout"], container_ids=["c0"])) == [
        x.message + "\n" for x in trial.iter_log_lines(streams=["stdout"])
    ]
    future = datetime.datetime.now() + datetime.timedelta(days=1)
    assert list(trial.logs(timestamp_after=future)) == []
    assert list(trial.logs(timestamp_before=future)) == lines
    assert list(trial.logs(follow=True)) == lines  # an ended trial: the backlog, then the end
    with pytest.raises(InvalidArgumentError, match="rank_ids"):
        list(trial.logs(rank_ids=["x"]))  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="LOUD"):
        list(trial.logs(min_level="LOUD"))


def test_wait_on_a_paused_experiment_raises(det_client: client.Determined) -> None:
    exp = client.create_experiment(_config(), str(TINY), activate=False)
    with pytest.raises(ValueError, match="PAUSED"):
        exp.wait(interval=0.1)
    exp.kill()


def test_checkpoint_training_metadata_and_states(done_exp: client.Experiment) -> None:
    trial = done_exp.list_trials()[0]
    ckpt = trial.list_checkpoints()[0]
    training = ckpt.training
    assert isinstance(training, client.CheckpointTrainingMetadata)
    assert (training.experiment_id, training.trial_id) == (done_exp.id, trial.id)
    assert training.experiment_config["searcher"]["metric"] == "loss"
    assert training.hparams == trial.hparams
    assert training.validation_metrics == {
        "avgMetrics": {"loss": 1.0 / trial.id},
        "batchMetrics": [],
    }
    assert ckpt.task_id == f"{done_exp.id}.{trial.id}"
    ckpt.delete()
    listed = done_exp.list_checkpoints(sort_by=client.CheckpointSortBy.STATE)
    assert [c.state for c in listed] == [client.CheckpointState.DELETED]
    assert done_exp.list_checkpoints(sort_by=client.CheckpointSortBy.STATE, max_results=0) == []


def test_trial_metrics_are_shaped_as_determineds(done_exp: client.Experiment) -> None:
    trial = done_exp.list_trials()[0]
    (m,) = list(trial.iter_metrics("validation"))
    assert isinstance(m, client.TrialMetrics)
    assert (m.trial_id, m.trial_run_id, m.steps_completed, m.group) == (
        trial.id,
        1,
        2,
        "validation",
    )
    assert isinstance(m.end_time, datetime.datetime) and m.end_time.tzinfo is not None
    assert m.metrics == {"loss": 1.0 / trial.id} and m.batch_metrics is None
    with pytest.warns(DeprecationWarning, match="stream_metrics"):
        assert list(trial.stream_metrics("validation")) == [m]
    with pytest.warns(DeprecationWarning, match="stream_trials_metrics"):
        assert list(client.stream_trials_metrics([trial.id], "validation")) == [m]


def test_create_experiment_without_a_model_dir_and_with_includes(
    det_client: client.Determined, tmp_path: pathlib.Path
) -> None:
    code = "print('no model dir needed')"
    exp = client.create_experiment(_config(entrypoint=["python3", "-c", code]))
    assert exp.wait(interval=0.2) == client.ExperimentState.COMPLETED
    assert "no model dir needed\n" in list(exp.list_trials()[0].logs())
    extra = tmp_path / "extra.txt"
    extra.write_text("hello")
    cfg = _config(entrypoint=["python3", "-c", "print(open('extra.txt').read())"])
    exp = client.create_experiment(cfg, None, [extra])
    assert exp.wait(interval=0.2) == client.ExperimentState.COMPLETED
    assert "hello\n" in list(exp.list_trials()[0].logs())
    archive = exp.download_code(str(tmp_path / "out"))
    assert archive.endswith(f"exp-{exp.id}_model_def.tar.gz")
    with tarfile.open(archive) as tar:
        assert "extra.txt" in [pathlib.Path(n).name for n in tar.getnames()]
    with pytest.raises(InvalidArgumentError, match="includes"):
        client.create_experiment(cfg, None, [tmp_path / "missing"])
    with pytest.raises(InvalidArgumentError, match="template"):
        client.create_experiment(cfg, template="gpu")


def test_experiment_labels_and_trials(done_exp: client.Experiment) -> None:
    assert done_exp.labels == {"a", "b"}
    done_exp.set_labels(["b", "c"])
    assert done_exp.labels == {"b", "c"}
    done_exp.reload()
    assert done_exp.labels == {"b", "c"}
    trials = done_exp.list_trials(client.TrialSortBy.ID, client.OrderBy.DESC)
    assert [t.id for t in trials] == [t.id for t in done_exp.list_trials()][::-1]
    assert len(list(done_exp.iter_trials(sort_by=client.TrialSortBy.START_TIME, limit=1))) == 1
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        done_exp.list_trials("id")  # type: ignore[arg-type]
    listed = client.list_experiments(sort_by=client.ExperimentSortBy.NAME)
    assert done_exp.id in [e.id for e in listed]


def test_model_registry_names(det_client: client.Determined, done_exp: client.Experiment) -> None:
    ckpt = done_exp.list_checkpoints()[0]
    model = client.create_model("digits-net", labels=["x"])
    assert model.get_version() is None
    assert model.model_id == model.id and model.username == "admin"
    model.set_labels(["x", "y"])
    assert model.labels == ["x", "y"]
    v = model.register_version(ckpt.uuid)
    assert v.model_version == 1
    v.set_name("first")
    v.set_notes("trained on digits")
    again = model.get_version(1)
    assert again is not None and (again.name, again.notes) == ("first", "trained on digits")
    with pytest.raises(InvalidArgumentError, match="notes"):
        v.set_notes(None)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="version 9"):
        client.ModelVersion("digits-net", 9, det_client).set_name("x")
    assert [x.model_version for x in model.get_versions()] == [1]
    latest = model.get_version()
    assert latest is not None and latest.model_version == 1
    assert client.get_model(model.id).name == "digits-net"
    assert client.get_model_by_id(model.id).name == "digits-net"
    assert client.get_model_labels() == ["x", "y"]
    ws = client.create_workspace("registry")
    model.move_to_workspace("registry")
    assert model.workspace_id == ws.id
    assert client.get_model("digits-net").workspace_id == ws.id
    with pytest.raises(NotFoundError, match="nowhere"):
        model.move_to_workspace("nowhere")
    client.create_model("another")
    with pytest.warns(DeprecationWarning):
        names = [m.name for m in client.get_models(sort_by=client.ModelSortBy.NAME)]
    assert names == ["another", "digits-net"]
    with pytest.raises(NotFoundError, match="model 999") as info:
        client.get_model_by_id(999)
    assert info.value.status_code == 404
    with pytest.raises(InvalidArgumentError):
        client.get_model(True)  # type: ignore[arg-type]


def test_sdk_resource_modules_form_no_import_loop() -> None:
    graph: dict[str, set[str]] = {}
    for f in SDK.glob("*.py"):
        name = "determined_sdk" if f.stem == "__init__" else f"determined_sdk.{f.stem}"
        deps: set[str] = set()
        for node in ast.parse(f.read_text()).body:  # module-level imports only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "determined_sdk"
            ):
                if node.module == "determined_sdk":
                    deps |= {f"determined_sdk.{a.name}" for a in node.names}
                else:
                    deps.add(str(node.module))
        graph[name] = deps

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))
        return seen

    loops = [m for m in graph if m != "determined_sdk" and m in reach(m)]
    assert loops == []


def test_workspaces_and_projects_in_determineds_spelling(det_client: client.Determined) -> None:
    ws = client.create_workspace("team")
    ws.create_project("p1")
    by_name = client.Workspace(det_client.session, workspace_name="team")
    assert by_name.id == ws.id and by_name.name == "team"
    assert client.Workspace(det_client.session, workspace_id=ws.id).name == "team"
    assert client.Workspace(ws.id, det_client).name == "team"  # our order still works
    by_name.delete_project("p1")
    assert by_name.list_projects() == []
    client.delete_workspace("team")
    with pytest.raises(NotFoundError):
        client.get_workspace("team")
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        client.Workspace(det_client.session)
    with pytest.raises(NotFoundError):
        client.Workspace(det_client.session, workspace_name="nope")


def test_checkpoint_remove_files(done_exp: client.Experiment) -> None:
    ckpt = done_exp.list_checkpoints()[0]
    assert set(ckpt.resources) == {"weights.txt", "extra/notes.md", "metadata.json"}
    files = pathlib.Path(ckpt.storage["path"], ckpt.uuid)
    ckpt.remove_files(["extra"])
    assert ckpt.state == client.CheckpointState.PARTIALLY_DELETED
    assert set(ckpt.resources) == {"weights.txt", "metadata.json"}
    assert not (files / "extra" / "notes.md").exists() and (files / "weights.txt").exists()
    with pytest.raises(InvalidArgumentError, match="globs"):
        ckpt.remove_files(["../elsewhere"])
    ckpt.remove_files("*.txt")
    assert set(ckpt.resources) == {"metadata.json"}
    ckpt.remove_files(["*.json"])
    assert ckpt.state == client.CheckpointState.DELETED and ckpt.resources == {}
    assert not files.exists()
    with pytest.raises(FailedPreconditionError, match="DELETED"):
        ckpt.remove_files(["*"])


def test_experiment_notes_and_project_edits(done_exp: client.Experiment) -> None:
    assert done_exp.notes == ""
    done_exp.set_notes("# results\nbest lr 0.1")
    assert done_exp.notes == "# results\nbest lr 0.1"
    assert client.get_experiment(done_exp.id).notes == "# results\nbest lr 0.1"
    with pytest.raises(InvalidArgumentError, match="notes"):
        done_exp.set_notes(3)  # type: ignore[arg-type]

    project = client.get_workspace("Uncategorized").create_project("vision")
    project.set_name("vision-2")
    project.set_description("convnets")
    project.add_note("plan", "try resnet")
    project.add_note("log", "day 1")
    assert (project.name, project.description) == ("vision-2", "convnets")
    assert project.notes == [
        {"name": "plan", "contents": "try resnet"},
        {"name": "log", "contents": "day 1"},
    ]
    project.remove_note("plan")
    project.archive()
    project.reload()
    assert project.archived and project.notes == [{"name": "log", "contents": "day 1"}]
    project.unarchive()
    assert not project.archived
    with pytest.raises(NotFoundError, match="no note named 'nope'"):
        project.remove_note("nope")
    with pytest.raises(InvalidArgumentError, match=r"notes\[1\]\.name"):
        project.add_note("", "x")
    with pytest.raises(InvalidArgumentError, match="name"):
        project.set_name("")
