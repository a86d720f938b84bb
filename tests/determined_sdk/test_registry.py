"""Workspaces, projects and the model registry through a real master."""

from __future__ import annotations

import pytest

from determined_sdk import (
    AlreadyExistsError,
    Determined,
    Experiment,
    FailedPreconditionError,
    InvalidArgumentError,
    Model,
    ModelVersion,
    NotFoundError,
    Project,
    Workspace,
)

from .conftest import CallCounter


def test_workspaces_and_projects(det: Determined) -> None:
    ws = det.create_workspace("reg-ws")
    assert ws.name == "reg-ws" and ws.num_projects == 0
    assert det.get_workspace("reg-ws").id == ws.id
    assert det.get_workspace(ws.id).name == "reg-ws"
    assert "reg-ws" in [w.name for w in det.list_workspaces()]
    assert [w.id for w in det.list_workspaces(name="reg-ws")] == [ws.id]
    p = ws.create_project("p1", description="first")
    assert (p.name, p.description, p.workspace_id) == ("p1", "first", ws.id)
    assert ws.get_project("p1").id == p.id
    assert ws.get_project(p.id).name == "p1"
    assert [x.id for x in ws.list_projects()] == [p.id]
    assert ws.num_projects == 0  # cached
    ws.reload()
    assert ws.num_projects == 1
    assert det.get_project(p.id).name == "p1"
    with pytest.raises(AlreadyExistsError):
        ws.create_project("p1")
    with pytest.raises(AlreadyExistsError):
        det.create_workspace("reg-ws")
    with pytest.raises(NotFoundError):
        ws.get_project("nope")
    with pytest.raises(NotFoundError):
        det.get_workspace("no-such-ws")
    with pytest.raises(InvalidArgumentError, match="name"):
        det.create_workspace("")
    with pytest.raises(InvalidArgumentError, match="name"):
        ws.create_project(" ")
    default = det.get_workspace("Uncategorized")
    assert default.id == 1
    with pytest.raises(FailedPreconditionError):
        default.delete()
    p.delete()
    with pytest.raises(NotFoundError):
        p.reload()
    ws.delete()
    with pytest.raises(NotFoundError):
        Workspace(ws.id, det).reload()


def test_blank_workspace_project_send_nothing(counted: Determined, counter: CallCounter) -> None:
    Workspace(1, counted)
    Project(1, counted)
    Model("whatever", counted)
    ModelVersion("whatever", 1, counted)
    assert counter.count() == 0
    assert Project(1, counted).name == "Uncategorized"
    assert counter.count() == 1


def test_models(det: Determined, finished: Experiment) -> None:
    m = det.create_model("reg-model", description="d", metadata={"a": 1}, labels=["x"])
    assert (m.name, m.description, m.metadata, m.labels) == ("reg-model", "d", {"a": 1}, ["x"])
    assert det.get_model("reg-model").id == m.id
    assert "reg-model" in [x.name for x in det.list_models()]
    assert [x.name for x in det.list_models(labels=["x"])] == ["reg-model"]
    with pytest.raises(AlreadyExistsError):
        det.create_model("reg-model")

    m.set_description("new")
    m.add_metadata({"b": 2})
    m.remove_metadata(["a"])
    m.add_label("y")
    m.remove_label("x")
    assert (m.description, m.metadata, m.labels) == ("new", {"b": 2}, ["y"])
    fresh = det.get_model("reg-model")
    assert (fresh.description, fresh.metadata, fresh.labels) == ("new", {"b": 2}, ["y"])
    m.set_metadata({"c": 3})
    assert det.get_model("reg-model").metadata == {"c": 3}
    m.archive()
    assert m.archived and "reg-model" not in [x.name for x in det.list_models()]
    assert "reg-model" in [x.name for x in det.list_models(include_archived=True)]
    m.unarchive()
    assert not m.archived

    best, second = finished.list_checkpoints(max_results=2)
    v1 = m.register_version(best.uuid, name="v1", comment="best", metadata={"k": 1}, labels=["p"])
    v2 = m.register_version(second.uuid)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.checkpoint.uuid == best.uuid and v1.checkpoint.hydrated
    assert (v1.name, v1.comment, v1.metadata, v1.labels) == ("v1", "best", {"k": 1}, ["p"])
    assert [v.version for v in m.list_versions()] == [1, 2]
    assert m.get_version().version == 2
    assert m.get_version(1).checkpoint.uuid == best.uuid
    assert ModelVersion("reg-model", 1, det).checkpoint.uuid == best.uuid
    with pytest.raises(InvalidArgumentError, match="version"):
        m.get_version(0)
    with pytest.raises(NotFoundError):
        m.get_version(9)
    with pytest.raises(NotFoundError):
        m.register_version("no-such-checkpoint")
    v2.delete()
    assert [v.version for v in m.list_versions()] == [1]
    m.delete()
    with pytest.raises(NotFoundError):
        det.get_model("reg-model")
    with pytest.raises(NotFoundError):
        Model("reg-model", det).set_description("x")
