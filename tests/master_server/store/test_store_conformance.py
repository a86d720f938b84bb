"""Conformance suite of the :class:`~master_server.store.base.Store` contract.

Every test runs once per backend (SQLite file and PostgreSQL schema, see ``conftest.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, insert, select

from determined_sdk.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from master_server.domain import (
    Checkpoint,
    CheckpointState,
    Experiment,
    ExperimentFilter,
    ExperimentState,
    LogLine,
    LogQuery,
    MetricColumns,
    MetricPoint,
    MetricQuery,
    MetricReport,
    NewExperiment,
    SearcherLog,
    Trial,
    TrialState,
)
from master_server.store import SQLStore, Store, open_store
from master_server.store.models import (
    Base,
    CheckpointRow,
    ExperimentLabelRow,
    ExperimentRow,
    LogRow,
    MetricBatchRow,
    MetricRow,
    SearcherEventRow,
    SearcherStateRow,
    TrialRow,
)
from master_server.store.sql import _MIGRATIONS_DIR

NAN = math.nan
INF = math.inf

# -- helpers ---------------------------------------------------------------------------------


def new_exp(
    store: Store,
    name: str = "exp",
    *,
    project_id: int = 1,
    labels: Sequence[str] = (),
    state: ExperimentState = ExperimentState.ACTIVE,
    config: dict[str, Any] | None = None,
    model_definition: bytes = b"",
) -> Experiment:
    return store.create_experiment(
        NewExperiment(
            name=name,
            config=config if config is not None else {"searcher": {"name": "single"}},
            original_config="searcher:\n  name: single\n",
            project_id=project_id,
            searcher_name="single",
            state=state,
            labels=tuple(labels),
            model_definition=model_definition,
        )
    )


def new_trial(store: Store, exp_id: int, request_id: str = "r1", **kw: Any) -> Trial:
    return store.create_trial(exp_id, request_id=request_id, hparams={"lr": 0.1}, **kw)


def rep(group: str, steps: int, ts: float = 0.0, **metrics: float) -> MetricReport:
    return MetricReport(group=group, steps_completed=steps, metrics=metrics, timestamp=ts)


def ckpt(
    uuid: str,
    trial: Trial,
    steps: int,
    state: CheckpointState = CheckpointState.COMPLETED,
    **kw: Any,
) -> Checkpoint:
    fields: dict[str, Any] = {
        "resources": {"model.pt": 10},
        "metadata": {"framework": "torch"},
        "storage": {"type": "shared_fs", "path": "/ckpts"},
        "report_time": time.time(),
    }
    fields.update(kw)
    return Checkpoint(
        uuid=uuid,
        trial_id=trial.id,
        experiment_id=trial.experiment_id,
        state=state,
        steps_completed=steps,
        **fields,
    )


def all_points(store: Store, trial_ids: Sequence[int], **kw: Any) -> list[MetricPoint]:
    return [p for page in store.iter_metrics(trial_ids, **kw) for p in page]


def count_rows(store: SQLStore, model: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_stats(stats: dict[str, Any], **want: float | int | None) -> None:
    assert set(stats) == {"min", "max", "last", "count", "mean"}
    for key, value in want.items():
        assert same_float(stats[key], value), (key, stats[key], value)


# -- lifecycle -------------------------------------------------------------------------------


def test_dialect_and_defaults(store: SQLStore, store_url: str) -> None:
    assert store.dialect == store_url.split(":")[0].split("+")[0]
    ws = store.get_workspace(1)
    assert (ws.id, ws.name, ws.num_projects) == (1, "Uncategorized", 1)
    proj = store.get_project(1)
    assert (proj.id, proj.name, proj.workspace_id, proj.num_experiments) == (
        1,
        "Uncategorized",
        1,
        0,
    )
    assert [w.id for w in store.list_workspaces()] == [1]
    assert [p.id for p in store.list_projects()] == [1]


def test_migrate_twice_is_noop_and_schema_matches_models(store: SQLStore) -> None:
    store.migrate()
    store.migrate()
    assert [w.name for w in store.list_workspaces()] == ["Uncategorized"]
    assert [p.name for p in store.list_projects()] == ["Uncategorized"]
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        # The newest revision (whichever that is after merges): migrations have one head.
        (head,) = ScriptDirectory(str(_MIGRATIONS_DIR)).get_heads()
        assert ctx.get_current_revision() == head
        assert compare_metadata(ctx, Base.metadata) == []
    # Sequences were moved past the default rows: the next ids are 2.
    assert store.create_workspace("w").id == 2
    assert store.create_project(1, "p").id == 2


def test_reopen_keeps_data(store: SQLStore, store_url: str) -> None:
    exp = new_exp(store, "kept", labels=("a",))
    trial = new_trial(store, exp.id)
    assert store.add_metrics(
        trial.id, "b1", [rep("training", 5, loss=NAN), rep("training", 6, loss=1.0)]
    )
    store.add_checkpoint(ckpt("c1", trial, 6))
    store.close()

    again = open_store(store_url)
    try:
        again.migrate()  # a no-op on an up-to-date database
        assert again.get_experiment(exp.id).labels == ("a",)
        got = again.get_trial(trial.id)
        assert got.steps_completed == 6
        assert got.latest_checkpoint_uuid == "c1"
        assert_stats(got.summary_metrics["avg_metrics"]["loss"], count=2, last=1.0, mean=1.0)
        points = all_points(again, [trial.id])
        assert [p.steps_completed for p in points] == [5, 6]
        assert math.isnan(points[0].metrics["loss"])
        assert not again.add_metrics(trial.id, "b1", [rep("training", 7, loss=1.0)])
        assert [w.id for w in again.list_workspaces()] == [1]
        assert new_exp(again, "next").id == exp.id + 1
    finally:
        again.close()


def test_unsupported_url() -> None:
    with pytest.raises(InvalidArgumentError):
        SQLStore("mysql://localhost/db")


# -- workspaces and projects -----------------------------------------------------------------


def test_workspaces(store: SQLStore) -> None:
    a = store.create_workspace("alpha")
    b = store.create_workspace("beta")
    assert (a.id, b.id) == (2, 3)
    assert store.get_workspace(2) == a
    assert store.get_workspace_by_name("beta") == b
    assert [w.name for w in store.list_workspaces()] == ["Uncategorized", "alpha", "beta"]
    assert [w.id for w in store.list_workspaces(name="beta")] == [3]
    assert store.list_workspaces(name="nope") == []
    with pytest.raises(AlreadyExistsError, match="workspace named 'alpha' already exists"):
        store.create_workspace("alpha")
    with pytest.raises(NotFoundError, match="workspace 99 not found"):
        store.get_workspace(99)
    with pytest.raises(NotFoundError, match="workspace named 'gamma' not found"):
        store.get_workspace_by_name("gamma")
    with pytest.raises(InvalidArgumentError):
        store.create_workspace("  ")


def test_delete_workspace(store: SQLStore) -> None:
    with pytest.raises(FailedPreconditionError):
        store.delete_workspace(1)
    with pytest.raises(NotFoundError, match="workspace 42 not found"):
        store.delete_workspace(42)
    ws = store.create_workspace("busy")
    proj = store.create_project(ws.id, "p")
    new_exp(store, project_id=proj.id)
    with pytest.raises(FailedPreconditionError, match=f"workspace {ws.id}"):
        store.delete_workspace(ws.id)
    empty = store.create_workspace("empty")
    empty_proj = store.create_project(empty.id, "unused")
    store.delete_workspace(empty.id)
    with pytest.raises(NotFoundError):
        store.get_workspace(empty.id)
    with pytest.raises(NotFoundError, match=f"project {empty_proj.id} not found"):
        store.get_project(empty_proj.id)
    assert store.get_workspace(ws.id).num_projects == 1


def test_projects(store: SQLStore) -> None:
    ws = store.create_workspace("w")
    p = store.create_project(ws.id, "vision", "cnn things")
    assert (p.id, p.workspace_id, p.description, p.num_experiments) == (2, ws.id, "cnn things", 0)
    with pytest.raises(AlreadyExistsError, match="project named 'vision' already exists"):
        store.create_project(ws.id, "vision")
    other = store.create_project(1, "vision")  # same name, other workspace
    assert other.id == 3
    assert store.get_project_by_name(ws.id, "vision") == p
    with pytest.raises(NotFoundError, match="project named 'nlp'"):
        store.get_project_by_name(ws.id, "nlp")
    with pytest.raises(NotFoundError, match="workspace 77 not found"):
        store.create_project(77, "x")
    with pytest.raises(NotFoundError, match="project 77 not found"):
        store.get_project(77)
    assert [x.id for x in store.list_projects(ws.id)] == [p.id]
    assert [x.id for x in store.list_projects()] == [1, 2, 3]
    with pytest.raises(NotFoundError):
        store.list_projects(77)
    new_exp(store, project_id=p.id)
    new_exp(store, project_id=p.id)
    assert store.get_project(p.id).num_experiments == 2
    assert store.get_workspace(ws.id).num_projects == 1
    with pytest.raises(FailedPreconditionError, match=f"project {p.id}"):
        store.delete_project(p.id)
    with pytest.raises(FailedPreconditionError):
        store.delete_project(1)
    with pytest.raises(NotFoundError):
        store.delete_project(77)
    store.delete_project(other.id)
    assert [x.id for x in store.list_projects()] == [1, 2]


# -- experiments -------------------------------------------------------------------------------


def test_create_and_get_experiment(store: SQLStore) -> None:
    ws = store.create_workspace("w")
    proj = store.create_project(ws.id, "p")
    before = time.time()
    exp = new_exp(
        store,
        "mnist",
        project_id=proj.id,
        labels=("a", "b", "a"),
        config={"hyperparameters": {"lr": 0.5}, "x": [1, 2]},
        model_definition=b"\x00zipbytes\xff",
    )
    after = time.time()
    assert exp.id == 1
    assert exp.name == "mnist"
    assert exp.labels == ("a", "b")
    assert exp.config == {"hyperparameters": {"lr": 0.5}, "x": [1, 2]}
    assert exp.original_config.startswith("searcher:")
    assert exp.state is ExperimentState.ACTIVE
    assert (exp.archived, exp.progress, exp.end_time, exp.error) == (False, 0.0, None, "")
    assert (exp.project_id, exp.workspace_id) == (proj.id, ws.id)
    assert before <= exp.start_time <= after
    assert exp.searcher_name == "single"
    assert (exp.num_trials, exp.unmanaged) == (0, False)
    assert store.get_experiment(exp.id) == exp
    assert store.get_model_definition(exp.id) == b"\x00zipbytes\xff"
    new_trial(store, exp.id, "r1")
    new_trial(store, exp.id, "r2")
    assert store.get_experiment(exp.id).num_trials == 2
    assert new_exp(store).id == 2
    with pytest.raises(NotFoundError, match="experiment 7 not found"):
        store.get_experiment(7)
    with pytest.raises(NotFoundError, match="experiment 7 not found"):
        store.get_model_definition(7)
    with pytest.raises(NotFoundError, match="project 9 not found"):
        new_exp(store, project_id=9)


def test_update_experiment(store: SQLStore) -> None:
    exp = new_exp(store, "old", labels=("x",))
    ws = store.create_workspace("w")
    proj = store.create_project(ws.id, "p")
    got = store.update_experiment(exp.id, name="new", description="desc")
    assert (got.name, got.description, got.labels, got.state) == ("new", "desc", ("x",), exp.state)
    got = store.update_experiment(
        exp.id,
        labels=["y", "z"],
        state=ExperimentState.COMPLETED,
        archived=True,
        progress=0.75,
        end_time=123.5,
        error="boom",
    )
    assert got.labels == ("y", "z")
    assert got.state is ExperimentState.COMPLETED
    assert (got.archived, got.progress, got.end_time, got.error) == (True, 0.75, 123.5, "boom")
    got = store.update_experiment(exp.id, project_id=proj.id, end_time=None)
    assert (got.project_id, got.workspace_id, got.end_time) == (proj.id, ws.id, None)
    assert got.name == "new" and got.config == exp.config and got.start_time == exp.start_time
    assert store.update_experiment(exp.id) == got
    assert store.get_experiment(exp.id) == got
    # Labels are searchable after an update.
    flt = ExperimentFilter(labels=("z",), archived=None)
    assert [e.id for e in store.list_experiments(flt)[0]] == [exp.id]
    assert store.list_experiments(ExperimentFilter(labels=("x",), archived=None)) == ([], 0)
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.update_experiment(99, name="x")
    with pytest.raises(NotFoundError, match="project 99 not found"):
        store.update_experiment(exp.id, project_id=99)
    assert store.get_experiment(exp.id).project_id == proj.id


@pytest.fixture
def catalog(store: SQLStore) -> dict[str, Experiment]:
    """Five experiments across two workspaces with labels, states and archived flags."""
    ws = store.create_workspace("w2")
    p2 = store.create_project(ws.id, "p2")
    e = {
        "a": new_exp(store, "Alpha run", labels=("cv", "prod")),
        "b": new_exp(store, "beta", labels=("cv",)),
        "c": new_exp(store, "gamma ALPHA", project_id=p2.id, labels=("nlp", "prod")),
        "d": new_exp(store, "delta_%", project_id=p2.id),
        "e": new_exp(store, "epsilon", labels=("cv", "prod")),
    }
    e["b"] = store.update_experiment(
        e["b"].id, state=ExperimentState.COMPLETED, progress=1.0, end_time=50.0
    )
    e["c"] = store.update_experiment(
        e["c"].id, state=ExperimentState.ERROR, progress=0.3, end_time=40.0
    )
    e["e"] = store.update_experiment(e["e"].id, archived=True, progress=0.5)
    e["d"] = store.update_experiment(e["d"].id, progress=0.3)
    return e


def summaries(
    store: SQLStore, flt: ExperimentFilter, owners: dict[int, str] | None = None
) -> tuple[list[Experiment], int]:
    """``list_experiment_summaries`` decoded into summary experiments (configs left empty),
    after checking each row's owner against ``owners`` (experiment id -> username)."""
    rows, total = store.list_experiment_summaries(flt)
    out = []
    for r in rows:
        assert len(r) == 17 and r[16] == (owners or {}).get(r[0])
        out.append(
            Experiment(
                id=r[0],
                name=r[1],
                description=r[2],
                labels=tuple(json.loads(r[3])),
                config={},
                original_config="",
                state=ExperimentState(r[4]),
                archived=bool(r[5]),
                progress=r[6],
                project_id=r[7],
                workspace_id=r[8],
                start_time=r[9],
                end_time=r[10],
                searcher_name=r[11],
                num_trials=r[12],
                unmanaged=bool(r[13]),
                error=r[14],
                notes=r[15],
            )
        )
    return out, total


def checked_list(store: SQLStore, flt: ExperimentFilter) -> tuple[list[Experiment], int]:
    """``list_experiments(flt)``, checking that the summaries list the same (sans configs)."""
    page, total = store.list_experiments(flt)
    stripped = [dataclasses.replace(x, config={}, original_config="") for x in page]
    assert summaries(store, flt) == (stripped, total)
    return page, total


def ids(result: tuple[list[Experiment], int]) -> tuple[list[str], int]:
    page, total = result
    return [x.name for x in page], total


def test_list_experiments_filters(store: SQLStore, catalog: dict[str, Experiment]) -> None:
    c = catalog
    names = {v.name: k for k, v in c.items()}

    def run(**kw: Any) -> tuple[list[str], int]:
        page, total = checked_list(store, ExperimentFilter(**kw))
        return [names[x.name] for x in page], total

    assert run() == (["a", "b", "c", "d"], 4)  # archived=False by default
    assert run(archived=None) == (["a", "b", "c", "d", "e"], 5)
    assert run(archived=True) == (["e"], 1)
    assert run(project_id=1) == (["a", "b"], 2)
    assert run(workspace_id=c["c"].workspace_id) == (["c", "d"], 2)
    assert run(workspace_id=1, archived=None) == (["a", "b", "e"], 3)
    assert run(states=(ExperimentState.COMPLETED, ExperimentState.ERROR)) == (["b", "c"], 2)
    assert run(name_contains="alpha") == (["a", "c"], 2)  # case-insensitive
    assert run(name_contains="_%") == (["d"], 1)  # LIKE wildcards are literal
    assert run(labels=("cv",), archived=None) == (["a", "b", "e"], 3)
    assert run(labels=("cv", "prod"), archived=None) == (["a", "e"], 2)  # all must match
    assert run(labels=("cv", "nlp")) == ([], 0)
    assert run(labels=("prod",), name_contains="ALPHA", project_id=1) == (["a"], 1)
    full = store.list_experiments(ExperimentFilter(project_id=1))[0][0]
    assert full == store.get_experiment(c["a"].id)
    # Summaries leave out both configs and nothing else.
    summary = store.list_experiments(ExperimentFilter(project_id=1, full=False))[0][0]
    assert summary == dataclasses.replace(full, config={}, original_config="")
    # The summary rows carry each experiment's owner (None: no owner recorded).
    ann = store.create_user("ann", "hash")
    store.set_owner("experiment", c["b"].id, ann.id)
    rows, total = summaries(store, ExperimentFilter(), owners={c["b"].id: "ann"})
    assert [x.id for x in rows] == [c[k].id for k in "abcd"] and total == 4


def test_list_experiments_sort_and_paging(store: SQLStore, catalog: dict[str, Experiment]) -> None:
    c = catalog
    names = {v.name: k for k, v in c.items()}

    def run(**kw: Any) -> tuple[list[str], int]:
        page, total = checked_list(store, ExperimentFilter(archived=None, **kw))
        return [names[x.name] for x in page], total

    assert run(sort_by="id") == (["a", "b", "c", "d", "e"], 5)
    assert run(sort_by="id", descending=True) == (["e", "d", "c", "b", "a"], 5)
    # Code point order: upper case sorts before lower case on both backends.
    assert run(sort_by="name") == (["a", "b", "d", "e", "c"], 5)
    assert run(sort_by="name", descending=True) == (["c", "e", "d", "b", "a"], 5)
    assert run(sort_by="start_time") == (["a", "b", "c", "d", "e"], 5)
    # Unfinished experiments (no end time) sort last ascending, first descending.
    assert run(sort_by="end_time") == (["c", "b", "a", "d", "e"], 5)
    assert run(sort_by="end_time", descending=True) == (["e", "d", "a", "b", "c"], 5)
    assert run(sort_by="state") == (["a", "d", "e", "b", "c"], 5)
    # Ties are broken by id, in the direction asked.
    assert run(sort_by="progress") == (["a", "c", "d", "e", "b"], 5)
    assert run(sort_by="progress", descending=True) == (["b", "e", "d", "c", "a"], 5)
    assert run(sort_by="id", offset=1, limit=2) == (["b", "c"], 5)
    assert run(sort_by="id", offset=4, limit=2) == (["e"], 5)
    assert run(sort_by="id", offset=10) == ([], 5)
    assert run(sort_by="id", limit=0) == ([], 5)
    assert run(sort_by="progress", descending=True, offset=1, limit=3) == (["e", "d", "c"], 5)
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        run(sort_by="config")
    with pytest.raises(InvalidArgumentError):
        run(offset=-1)
    with pytest.raises(InvalidArgumentError, match="sort_by"):
        store.list_experiment_summaries(ExperimentFilter(sort_by="config"))
    with pytest.raises(InvalidArgumentError, match="offset"):
        store.list_experiment_summaries(ExperimentFilter(offset=-1))


def test_list_experiments_ten_thousand(store: SQLStore) -> None:
    now = time.time()
    rows = [
        {
            "project_id": 1,
            "name": f"exp-{i:05d}",
            "description": "",
            "labels": '["even"]' if i % 2 == 0 else "[]",
            "config": '{"big": "' + "x" * 2000 + '"}',
            "original_config": "",
            "model_definition": b"",
            "state": "COMPLETED" if i % 3 == 0 else "ACTIVE",
            "archived": False,
            "progress": (i % 100) / 100,
            "start_time": now + i,
            "end_time": None,
            "searcher_name": "single",
            "unmanaged": False,
            "error": "",
        }
        for i in range(10_000)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(ExperimentRow), rows)
        conn.execute(
            insert(ExperimentLabelRow),
            [{"experiment_id": i + 1, "label": "even"} for i in range(0, 10_000, 2)],
        )
    start = time.perf_counter()
    page, total = store.list_experiments(
        ExperimentFilter(
            labels=("even",),
            states=(ExperimentState.COMPLETED,),
            name_contains="EXP-0",
            sort_by="progress",
            descending=True,
            limit=50,
        )
    )
    elapsed = time.perf_counter() - start
    assert total == len([i for i in range(10_000) if i % 6 == 0 and i < 10_000])
    assert len(page) == 50
    assert all(e.state is ExperimentState.COMPLETED and e.labels == ("even",) for e in page)
    assert [e.progress for e in page] == sorted((e.progress for e in page), reverse=True)
    all_page, all_total = store.list_experiments(ExperimentFilter(sort_by="name", limit=100))
    assert all_total == 10_000 and all_page[0].name == "exp-00000"
    assert elapsed < 2.0, f"list_experiments took {elapsed:.2f}s on 10,000 experiments"


def test_delete_experiment_cascades(store: SQLStore) -> None:
    keep = new_exp(store, "keep")
    keep_trial = new_trial(store, keep.id)
    store.add_metrics(keep_trial.id, "k", [rep("training", 1, loss=1.0)])
    store.add_logs([LogLine(trial_id=keep_trial.id, timestamp=1.0, message="keep")])

    exp = new_exp(store, "doomed", labels=("x",))
    trials = [new_trial(store, exp.id, f"r{i}") for i in range(2)]
    for t in trials:
        store.add_metrics(t.id, "b", [rep("training", 1, loss=1.0), rep("validation", 1, acc=0.5)])
        store.add_checkpoint(ckpt(f"ck-{t.id}", t, 1))
        store.add_logs([LogLine(trial_id=t.id, timestamp=1.0, message="bye")])
    store.save_searcher_state(exp.id, {"trials": 2})

    store.delete_experiment(exp.id)
    with pytest.raises(NotFoundError, match=f"experiment {exp.id} not found"):
        store.get_experiment(exp.id)
    for t in trials:
        with pytest.raises(NotFoundError, match=f"trial {t.id} not found"):
            store.get_trial(t.id)
        with pytest.raises(NotFoundError, match=f"checkpoint 'ck-{t.id}' not found"):
            store.get_checkpoint(f"ck-{t.id}")
    assert count_rows(store, TrialRow) == 1
    assert count_rows(store, MetricRow) == 1
    assert count_rows(store, MetricBatchRow) == 1
    assert count_rows(store, CheckpointRow) == 0
    assert count_rows(store, LogRow) == 1
    assert count_rows(store, SearcherStateRow) == 0
    assert count_rows(store, ExperimentLabelRow) == 0
    assert store.list_experiments(ExperimentFilter(archived=None))[1] == 1
    assert len(all_points(store, [keep_trial.id])) == 1
    with pytest.raises(NotFoundError, match=f"experiment {exp.id} not found"):
        store.delete_experiment(exp.id)


def test_delete_experiment_with_registered_checkpoint_is_refused(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_checkpoint(ckpt("reg", trial, 1))
    store.create_model("m")
    store.create_model_version("m", "reg")
    with pytest.raises(FailedPreconditionError, match="'reg'"):
        store.delete_experiment(exp.id)
    assert store.get_experiment(exp.id).id == exp.id
    store.delete_model_version("m", 1)
    store.delete_experiment(exp.id)


def test_create_experiment_stores_its_searcher_state_with_the_row(store: SQLStore) -> None:
    exp = store.create_experiment(
        NewExperiment(
            name="with-state",
            config={"searcher": {"name": "single"}, "pair": (1, 2)},
            original_config="searcher:\n  name: single\n",
            project_id=1,
            searcher_name="single",
            state=ExperimentState.PAUSED,
            searcher_state={"method": {"rng": "abc"}, "started": False},
            unmanaged=True,
        )
    )
    assert store.load_searcher_state(exp.id) == {"method": {"rng": "abc"}, "started": False}
    # The value returned is the row as stored (a tuple comes back a list, as JSON has it).
    assert store.get_experiment(exp.id) == exp and exp.config["pair"] == [1, 2]
    assert exp.unmanaged and exp.state is ExperimentState.PAUSED
    assert store.load_searcher_state(new_exp(store).id) is None  # none given: none stored


def test_transaction_is_all_or_nothing(store: SQLStore) -> None:
    """Calls inside ``transaction()`` commit together; a raise undoes every one of them."""
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    with pytest.raises(RuntimeError, match="crash"), store.transaction():
        store.update_trial(trial.id, state=TrialState.COMPLETED)
        assert store.get_trial(trial.id).state == TrialState.COMPLETED  # sees its writes
        new_trial(store, exp.id, "r2")
        with store.transaction():  # nested: joins the outer one
            store.append_searcher_event(exp.id, {"in": [["exited", "r1"]]})
        raise RuntimeError("crash")
    assert store.get_trial(trial.id).state == TrialState.QUEUED
    assert store.list_trials(exp.id)[1] == 1
    assert store.load_searcher_log(exp.id).events == []

    seen: list[TrialState] = []
    with store.transaction():
        store.update_trial(trial.id, state=TrialState.RUNNING)
        # Another thread does not see the transaction before its commit.
        reader = threading.Thread(target=lambda: seen.append(store.get_trial(trial.id).state))
        reader.start()
        reader.join(timeout=30)
        # A call that fails undoes its own part only; the transaction goes on.
        with pytest.raises(AlreadyExistsError):
            new_trial(store, exp.id, "r1")
        store.append_searcher_event(exp.id, {"in": [["created", "r1"]]})
    assert seen == [TrialState.QUEUED]
    assert store.get_trial(trial.id).state == TrialState.RUNNING
    assert [e for _, e in store.load_searcher_log(exp.id).events] == [{"in": [["created", "r1"]]}]


def test_transaction_holds_no_write_lock_before_its_first_write(store: SQLStore) -> None:
    """An engine event reads and decides before it writes: until its first write, others
    write freely (on SQLite, the one writer is not held); from then on, its reads see its
    writes and a raise undoes them."""
    exp = new_exp(store)
    trial = new_trial(store, exp.id)

    def write_elsewhere() -> None:
        done: list[bool] = []
        t = threading.Thread(
            target=lambda: done.append(bool(store.update_trial(trial.id, progress=0.5)))
        )
        t.start()
        t.join(timeout=5)  # a held write lock would keep it waiting past this
        assert done == [True]

    with store.transaction():
        assert store.get_trial(trial.id).state == TrialState.QUEUED
        write_elsewhere()  # not blocked: nothing is written in this block yet
        assert store.get_trial(trial.id).progress == 0.5  # and seen: no snapshot taken yet
        store.update_trial(trial.id, state=TrialState.RUNNING)
        assert store.get_trial(trial.id).state == TrialState.RUNNING
    with pytest.raises(RuntimeError, match="crash"), store.transaction():
        store.get_experiment(exp.id)
        store.update_trial(trial.id, state=TrialState.COMPLETED)
        raise RuntimeError("crash")
    assert store.get_trial(trial.id).state == TrialState.RUNNING
    with store.transaction():  # only reads: commits nothing and never waits for the writer
        store.get_trial(trial.id)
    write_elsewhere()  # the lock of no block is left behind


def test_searcher_state(store: SQLStore) -> None:
    exp = new_exp(store)
    assert store.load_searcher_state(exp.id) is None
    store.save_searcher_state(exp.id, {"ops": [1, 2], "rng": "abc"})
    assert store.load_searcher_state(exp.id) == {"ops": [1, 2], "rng": "abc"}
    store.save_searcher_state(exp.id, {"ops": []})
    assert store.load_searcher_state(exp.id) == {"ops": []}
    with pytest.raises(NotFoundError, match="experiment 5 not found"):
        store.save_searcher_state(5, {})
    with pytest.raises(NotFoundError, match="experiment 5 not found"):
        store.load_searcher_state(5)


def test_searcher_event_log(store: SQLStore) -> None:
    exp, other = new_exp(store), new_exp(store)
    assert store.load_searcher_log(exp.id) == SearcherLog(snapshot=None, events=[])
    # Events before any snapshot are replayed from a fresh search.
    i1 = store.append_searcher_event(exp.id, {"in": [[["initial"], 7]]})
    i2 = store.append_searcher_event(exp.id, {"in": [[["validated", "r1", math.nan, 3], 1]]})
    store.append_searcher_event(other.id, {"in": []})
    assert i1 < i2
    log = store.load_searcher_log(exp.id)
    assert log.snapshot is None
    assert [i for i, _ in log.events] == [i1, i2]
    assert log.events[0][1] == {"in": [[["initial"], 7]]}
    assert math.isnan(log.events[1][1]["in"][0][0][2])  # NaN metrics survive
    # A snapshot covers (and deletes) every event so far; later events follow it.
    assert store.save_searcher_state(exp.id, {"n": 2}) == len('{"n":2}')
    i3 = store.append_searcher_event(exp.id, {"in": [[["exited", "r1"], 0]]})
    assert i3 > i2
    log = store.load_searcher_log(exp.id)
    assert log.snapshot == {"n": 2}
    assert log.events == [(i3, {"in": [[["exited", "r1"], 0]]})]
    assert count_rows(store, SearcherEventRow) == 2  # i3 and the other experiment's
    # ... or the events up to a given id only.
    i4 = store.append_searcher_event(exp.id, {"x": 4})
    store.save_searcher_state(exp.id, {"n": 3}, events_through=i3)
    assert store.load_searcher_log(exp.id).events == [(i4, {"x": 4})]
    assert store.load_searcher_state(exp.id) == {"n": 3}
    assert len(store.load_searcher_log(other.id).events) == 1
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.append_searcher_event(99, {})
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.load_searcher_log(99)
    store.delete_experiment(exp.id)
    assert count_rows(store, SearcherEventRow) == 1


def test_light_experiment_state_and_progress(store: SQLStore) -> None:
    exp = new_exp(store, state=ExperimentState.PAUSED)
    assert store.get_experiment_state(exp.id) is ExperimentState.PAUSED
    store.update_experiment(exp.id, state=ExperimentState.ACTIVE)
    assert store.get_experiment_state(exp.id) is ExperimentState.ACTIVE
    store.set_experiment_progress(exp.id, 0.25)
    got = store.get_experiment(exp.id)
    assert got.progress == 0.25 and got.state is ExperimentState.ACTIVE and got.name == "exp"
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.get_experiment_state(99)
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.set_experiment_progress(99, 0.5)
    # Inside a transaction a missing experiment fails only that call.
    with store.transaction():
        store.set_experiment_progress(exp.id, 0.5)
        with pytest.raises(NotFoundError):
            store.append_searcher_event(99, {})
    assert store.get_experiment(exp.id).progress == 0.5


# -- trials ------------------------------------------------------------------------------------


def test_trials(store: SQLStore) -> None:
    exp = new_exp(store)
    before = time.time()
    t1 = new_trial(store, exp.id, "r1", warm_start_checkpoint_uuid="warm")
    assert t1.id == 1
    assert (t1.experiment_id, t1.request_id, t1.hparams) == (exp.id, "r1", {"lr": 0.1})
    assert t1.state is TrialState.QUEUED
    assert (t1.summary_metrics, t1.restarts, t1.run_id, t1.steps_completed) == ({}, 0, 0, 0)
    assert (t1.end_time, t1.latest_checkpoint_uuid, t1.progress) == (None, None, 0.0)
    assert t1.warm_start_checkpoint_uuid == "warm"
    assert before <= t1.start_time <= time.time()
    assert store.get_trial(t1.id) == t1
    t2 = new_trial(store, exp.id, "r2", state=TrialState.RUNNING)
    assert t2.id == 2 and t2.state is TrialState.RUNNING
    with pytest.raises(AlreadyExistsError, match="'r1'"):
        new_trial(store, exp.id, "r1")
    with pytest.raises(NotFoundError, match="experiment 9 not found"):
        new_trial(store, 9)
    with pytest.raises(NotFoundError, match="trial 5 not found"):
        store.get_trial(5)

    got = store.update_trial(
        t1.id,
        state=TrialState.COMPLETED,
        restarts=2,
        run_id=3,
        start_time=10.0,
        end_time=20.0,
        progress=1.0,
        exit_reason="done",
        latest_checkpoint_uuid="manual",
    )
    assert got.state is TrialState.COMPLETED
    assert (got.restarts, got.run_id, got.start_time, got.end_time) == (2, 3, 10.0, 20.0)
    assert (got.progress, got.exit_reason, got.latest_checkpoint_uuid) == (1.0, "done", "manual")
    assert got.request_id == "r1" and got.hparams == t1.hparams
    got = store.update_trial(t1.id, end_time=None, latest_checkpoint_uuid=None)
    assert (got.end_time, got.latest_checkpoint_uuid, got.restarts) == (None, None, 2)
    with pytest.raises(NotFoundError, match="trial 5 not found"):
        store.update_trial(5, restarts=1)


def test_list_trials(store: SQLStore) -> None:
    e1 = new_exp(store)
    e2 = new_exp(store)
    t = [new_trial(store, e1.id, f"a{i}") for i in range(5)]
    u = new_trial(store, e2.id, "b0")
    store.update_trial(t[1].id, state=TrialState.RUNNING)
    store.update_trial(t[3].id, state=TrialState.RUNNING)

    def run(*a: Any, **kw: Any) -> tuple[list[int], int]:
        trials, total = store.list_trials(*a, **kw)
        return [x.id for x in trials], total

    assert run(e1.id) == ([x.id for x in t], 5)
    assert run() == ([x.id for x in t] + [u.id], 6)
    assert run(e1.id, states=[TrialState.RUNNING]) == ([t[1].id, t[3].id], 2)
    assert run(e1.id, states=[TrialState.RUNNING, TrialState.QUEUED], offset=1, limit=2) == (
        [t[1].id, t[2].id],
        5,
    )
    assert run(e1.id, offset=4, limit=10) == ([t[4].id], 5)
    assert run(e2.id, states=[TrialState.COMPLETED]) == ([], 0)
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.list_trials(99)
    assert store.get_experiment(e1.id).num_trials == 5


# -- metrics -----------------------------------------------------------------------------------


def test_add_metrics_many_one_transaction_per_call(store: SQLStore) -> None:
    exp = new_exp(store)
    a, b = new_trial(store, exp.id, "a"), new_trial(store, exp.id, "b")
    assert store.add_metrics(a.id, "old", [rep("training", 1, loss=9.0)])
    results = store.add_metrics_many(
        [
            (a.id, "a1", [rep("training", 2, loss=4.0)], 1),
            (b.id, "b1", [rep("training", 5, loss=1.0), rep("validation", 5, acc=0.5)], 1),
            (a.id, "old", [rep("training", 3, loss=0.0)], 1),  # stored before: a no-op
            (a.id, "a1", [rep("training", 3, loss=0.0)], 1),  # a retry within the same call
            (999_999, "x", [rep("training", 1, loss=1.0)], 1),  # no such trial
            (b.id, "", [rep("training", 1, loss=1.0)], 1),  # a bad batch id
            (b.id, "b2", [rep("training", -1, loss=1.0)], 1),  # a bad step
            (b.id, "b3", [rep("training", 6, loss=3.0)], 1),
        ]
    )
    assert results[:4] == [True, True, False, False]
    assert isinstance(results[4], NotFoundError) and "999999" in str(results[4])
    assert isinstance(results[5], InvalidArgumentError) and "batch_id" in str(results[5])
    assert isinstance(results[6], InvalidArgumentError) and "steps_completed" in str(results[6])
    assert results[7] is True
    # The bad batches stopped nothing else; each trial's summary folds its own batches.
    ga, gb = store.get_trial(a.id), store.get_trial(b.id)
    assert [p.steps_completed for p in all_points(store, [a.id])] == [1, 2]
    assert [p.steps_completed for p in all_points(store, [b.id])] == [5, 5, 6]
    assert_stats(ga.summary_metrics["avg_metrics"]["loss"], min=4.0, max=9.0, last=4.0, count=2)
    assert_stats(gb.summary_metrics["avg_metrics"]["loss"], min=1.0, max=3.0, last=3.0, count=2)
    assert (ga.steps_completed, gb.steps_completed) == (2, 6)
    assert store.add_metrics_many([]) == []


def test_add_metrics_summary(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    assert store.add_metrics(
        trial.id,
        "batch-1",
        [
            rep("training", 10, loss=4.0, grad=1.0, x=1.0, bad=NAN),
            rep("training", 20, loss=NAN, grad=INF, x=2.0),
            rep("training", 30, loss=2.0, grad=-1.0, x=NAN),
            rep("validation", 30, acc=0.5),
            rep("inference", 5, lat=-INF),
        ],
    )
    got = store.get_trial(trial.id)
    assert got.steps_completed == 30
    s = got.summary_metrics
    assert set(s) == {"avg_metrics", "validation_metrics", "inference"}
    assert set(s["avg_metrics"]) == {"loss", "grad", "x", "bad"}
    assert_stats(s["avg_metrics"]["loss"], min=2.0, max=4.0, last=2.0, count=3, mean=3.0)
    assert_stats(s["avg_metrics"]["grad"], min=-1.0, max=INF, last=-1.0, count=3, mean=INF)
    assert_stats(s["avg_metrics"]["x"], min=1.0, max=2.0, last=NAN, count=3, mean=1.5)
    # Only NaN so far: nothing to take a min, max or mean of.
    assert_stats(s["avg_metrics"]["bad"], min=None, max=None, last=NAN, count=1, mean=None)
    assert_stats(s["validation_metrics"]["acc"], min=0.5, max=0.5, last=0.5, count=1, mean=0.5)
    assert_stats(s["inference"]["lat"], min=-INF, max=-INF, last=-INF, count=1, mean=-INF)

    # A second batch folds into the first; steps_completed never goes back.
    assert store.add_metrics(
        trial.id,
        "batch-2",
        [rep("training", 25, loss=6.0, bad=3.0, new=1.0), rep("validation", 40, acc=NAN)],
    )
    got = store.get_trial(trial.id)
    s = got.summary_metrics
    assert got.steps_completed == 40
    assert_stats(s["avg_metrics"]["loss"], min=2.0, max=6.0, last=6.0, count=4, mean=4.0)
    assert_stats(s["avg_metrics"]["bad"], min=3.0, max=3.0, last=3.0, count=2, mean=3.0)
    assert_stats(s["avg_metrics"]["new"], min=1.0, max=1.0, last=1.0, count=1, mean=1.0)
    assert_stats(s["avg_metrics"]["x"], count=3, last=NAN, mean=1.5)
    assert_stats(s["validation_metrics"]["acc"], min=0.5, max=0.5, last=NAN, count=2, mean=0.5)
    assert store.add_metrics(trial.id, "batch-3", [rep("training", 1, grad=2.0)])
    got = store.get_trial(trial.id)
    assert got.steps_completed == 40
    assert_stats(got.summary_metrics["avg_metrics"]["grad"], count=4, last=2.0, mean=INF)


def test_duplicate_batch_is_ignored(store: SQLStore) -> None:
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    assert store.add_metrics(t1.id, "same", [rep("training", 1, loss=1.0)])
    before = store.get_trial(t1.id)
    assert store.add_metrics(t1.id, "same", [rep("training", 9, loss=100.0)]) is False
    assert store.add_metrics(t1.id, "same", []) is False
    assert store.get_trial(t1.id) == before
    assert [p.steps_completed for p in all_points(store, [t1.id])] == [1]
    # Batch ids are per trial.
    assert store.add_metrics(t2.id, "same", [rep("training", 2, loss=2.0)])
    assert store.add_metrics(t1.id, "empty", [])
    assert store.add_metrics(t1.id, "empty", [rep("training", 2, loss=2.0)]) is False
    assert store.get_trial(t1.id) == before


def test_add_metrics_errors_and_values(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    with pytest.raises(NotFoundError, match="trial 99 not found"):
        store.add_metrics(99, "b", [rep("training", 1, loss=1.0)])
    with pytest.raises(InvalidArgumentError):
        store.add_metrics(trial.id, "b", [rep("training", 1, loss="high")])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.add_metrics(trial.id, "b", [rep("training", -1, loss=1.0)])
    with pytest.raises(InvalidArgumentError):
        store.add_metrics(trial.id, "b", [rep("", 1, loss=1.0)])
    with pytest.raises(InvalidArgumentError):
        store.add_metrics(trial.id, "", [rep("training", 1, loss=1.0)])
    # A failed call stores nothing, not even its batch id.
    assert store.add_metrics(trial.id, "b", [rep("training", 1, loss=3, acc=0.5)])
    (point,) = all_points(store, [trial.id])
    assert point.metrics == {"loss": 3.0, "acc": 0.5}
    assert type(point.metrics["loss"]) is float
    assert store.get_trial(trial.id).summary_metrics["avg_metrics"]["loss"]["mean"] == 3.0


def test_nonfinite_values_round_trip(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    values = {"nan": NAN, "inf": INF, "ninf": -INF, "tiny": 5e-324, "big": 1.7976931348623157e308}
    store.add_metrics(trial.id, "b", [rep("training", 1, 12.5, **values)])
    (point,) = all_points(store, [trial.id])
    assert point == MetricPoint(trial.id, "training", 1, point.metrics, 12.5)
    assert math.isnan(point.metrics["nan"])
    assert point.metrics["inf"] == INF and point.metrics["ninf"] == -INF
    assert point.metrics["tiny"] == 5e-324 and point.metrics["big"] == 1.7976931348623157e308
    ck = store.add_checkpoint(ckpt("c", trial, 1))
    assert math.isnan(ck.training_metrics["nan"]) and ck.training_metrics["ninf"] == -INF


def test_stored_json_is_strict(store: SQLStore) -> None:
    """Non-finite values are spelled as strings: every JSON column parses as standard JSON."""
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_metrics(trial.id, "b", [rep("training", 1, a=NAN, b=INF, c=-INF, d=1.0)])
    store.add_metrics(trial.id, "c", [rep("training", 2, a=NAN)])
    store.add_checkpoint(ckpt("c", trial, 2))
    with store.engine.connect() as conn:
        texts = list(conn.scalars(select(MetricRow.payload)))
        texts += list(conn.execute(select(TrialRow.summary_metrics, TrialRow.summary_state)).one())
        texts += list(
            conn.execute(
                select(CheckpointRow.training_metrics, CheckpointRow.validation_metrics)
            ).one()
        )

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert len(texts) == 6
    for raw in texts:
        json.loads(raw, parse_constant=reject)


def test_iter_metrics_order_and_paging(store: SQLStore) -> None:
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    # Interleaved groups, steps out of order across batches, repeated steps within a group.
    batches = [
        [rep("training", s, loss=float(s)) for s in range(0, 40, 2)]
        + [rep("validation", 10, acc=0.1), rep("validation", 30, acc=0.3)],
        [rep("training", s, loss=float(s)) for s in range(1, 40, 2)]
        + [rep("training", 10, loss=-10.0), rep("zgroup", 10, z=1.0)],
        [rep("validation", 10, acc=0.11), rep("aaa", 0, a=0.0)],
    ]
    for n, batch in enumerate(batches):
        store.add_metrics(t2.id, f"b{n}", batch)  # t2 written first: order is by trial id
        store.add_metrics(t1.id, f"b{n}", batch)

    # Expected: by trial, then steps, then insertion order (batch, position in batch).
    order = [
        (r.steps_completed, b, i, r) for b, batch in enumerate(batches) for i, r in enumerate(batch)
    ]
    order.sort(key=lambda x: (x[0], x[1], x[2]))
    want = [
        MetricPoint(tid, r.group, r.steps_completed, r.metrics, r.timestamp)
        for tid in (t1.id, t2.id)
        for _s, _b, _i, r in order
    ]
    assert len(want) == 2 * 46
    for page_size in (1, 7, 46, 1000):
        pages = list(store.iter_metrics([t2.id, t1.id], page_size=page_size))
        assert [p for page in pages for p in page] == want
        assert all(len(page) == page_size for page in pages[:-1])
        assert 0 < len(pages[-1]) <= page_size
    at_ten = [(p.group, p.metrics) for p in want[: len(want) // 2] if p.steps_completed == 10]
    assert at_ten == [
        ("training", {"loss": 10.0}),
        ("validation", {"acc": 0.1}),
        ("training", {"loss": -10.0}),
        ("zgroup", {"z": 1.0}),
        ("validation", {"acc": 0.11}),
    ]
    val = all_points(store, [t1.id, t2.id], group="validation", page_size=2)
    assert [(p.trial_id, p.steps_completed, p.metrics["acc"]) for p in val] == [
        (t1.id, 10, 0.1),
        (t1.id, 10, 0.11),
        (t1.id, 30, 0.3),
        (t2.id, 10, 0.1),
        (t2.id, 10, 0.11),
        (t2.id, 30, 0.3),
    ]
    assert all_points(store, [t1.id], group="nope") == []
    assert list(store.iter_metrics([])) == []


def test_iter_metrics_is_lazy(store: SQLStore) -> None:
    gen = store.iter_metrics([12345])  # nothing happens until the first page is asked for
    assert isinstance(gen, Iterator)
    with pytest.raises(NotFoundError, match="trial 12345 not found"):
        next(gen)
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_metrics(trial.id, "b1", [rep("training", s, v=float(s)) for s in range(10)])
    pages = store.iter_metrics([trial.id], page_size=4)
    first = next(pages)
    assert [p.steps_completed for p in first] == [0, 1, 2, 3]
    # Rows written after the first page are still reached: each page is a new keyset query.
    store.add_metrics(trial.id, "b2", [rep("training", s, v=float(s)) for s in range(10, 14)])
    rest = [p.steps_completed for page in pages for p in page]
    assert rest == list(range(4, 14))
    with pytest.raises(InvalidArgumentError):
        next(store.iter_metrics([trial.id], page_size=0))


def test_read_metrics_names_filter_answers_value_columns(store: SQLStore) -> None:
    exp = new_exp(store)
    t = new_trial(store, exp.id, "r1")
    odd = {"$.x": 3.0, 'quo"te': 4.0, "a b": 5.0}
    store.add_metrics(
        t.id,
        "b1",
        [
            rep("training", 0, loss=1.0, acc=0.5),
            rep("training", 1, acc=0.25),  # no loss
            rep("training", 2, loss=math.nan, up=math.inf, down=-math.inf),
            rep("training", 3, other=1.0),  # none of the names: left out
            MetricReport("training", 4, odd, 0.0),
        ],
    )

    def read(*names: str) -> MetricColumns:
        (page,) = store.read_metrics(MetricQuery((t.id,), names=names))
        assert page.payloads == () and list(page.names) == list(names)
        return page

    page = read("loss", "acc")
    assert list(page.steps) == [0, 1, 2]
    loss, acc = page.values
    assert loss[0] == 1.0 and loss[1] is None and math.isnan(loss[2])  # type: ignore[arg-type]
    assert list(acc) == [0.5, 0.25, None]
    assert page.metrics()[:2] == [{"loss": 1.0, "acc": 0.5}, {"acc": 0.25}]
    up, down = read("up", "down").values
    assert (list(up), list(down)) == ([math.inf], [-math.inf])
    # Names the database cannot take as keys (SQLite reads "$..." as a path) still work.
    for name, value in odd.items():
        assert read(name).metrics() == [{name: value}]
    assert read("$.x", "acc").metrics() == [{"acc": 0.5}, {"acc": 0.25}, {"$.x": 3.0}]


def test_read_metrics_columns_filters_and_follow_positions(store: SQLStore) -> None:
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    assert store.last_metric_id() == 0
    store.add_metrics(
        t1.id,
        "b1",
        [rep("training", s, loss=float(s), acc=s / 10) for s in range(10)]
        + [rep("validation", 5, loss=0.5, nan=math.nan), rep("user", 3, other=1.0)],
    )
    store.add_metrics(t2.id, "b1", [rep("training", s, loss=-float(s)) for s in range(3)])

    pages = list(store.read_metrics(MetricQuery((t2.id, t1.id), page_size=5)))
    assert [len(p) for p in pages] == [5, 5, 5]
    assert pages[0].trial_ids == [t1.id] and pages[0].trial_counts == [5]
    assert pages[2].trial_ids == [t1.id, t2.id] and pages[2].trial_counts == [2, 3]
    points = [p for page in pages for p in page.points()]
    assert points == all_points(store, [t1.id, t2.id])
    assert [p.group[0] for p in points[:8]] == list("ttttuttv")
    val = next(p for p in points if p.group == "validation")
    assert val.metrics["loss"] == 0.5 and math.isnan(val.metrics["nan"])

    # Names: points without any are left out, the others keep only those names.
    named = [
        p
        for page in store.read_metrics(MetricQuery((t1.id,), names=("acc", "nan")))
        for p in page.points()
    ]
    assert [(p.group, p.steps_completed, sorted(p.metrics)) for p in named][5:8] == [
        ("training", 5, ["acc"]),
        ("validation", 5, ["nan"]),
        ("training", 6, ["acc"]),
    ]
    assert len(named) == 11
    # Steps range (inclusive) with a group.
    ranged = [
        (p.group, p.steps_completed)
        for page in store.read_metrics(
            MetricQuery((t1.id,), group="training", min_steps=4, max_steps=6)
        )
        for p in page.points()
    ]
    assert ranged == [("training", 4), ("training", 5), ("training", 6)]

    # Follow positions: only what was stored after each trial's last seen id.
    upto = store.last_metric_id()
    assert upto > 0
    backlog = list(store.read_metrics(MetricQuery((t1.id, t2.id), until_id=upto)))
    seen = dict(zip(backlog[0].trial_ids, backlog[0].last_ids, strict=True))
    assert seen[t2.id] == upto and seen[t1.id] < upto
    store.add_metrics(t2.id, "b2", [rep("training", 1, loss=9.0)])
    store.add_metrics(t1.id, "b2", [rep("validation", 0, loss=8.0)])
    assert sum(len(p) for p in store.read_metrics(MetricQuery((t1.id,), until_id=upto))) == 12
    new = [
        (p.trial_id, p.steps_completed, p.metrics["loss"])
        for page in store.read_metrics(MetricQuery((t1.id, t2.id), after_ids=tuple(seen.items())))
        for p in page.points()
    ]
    assert new == [(t1.id, 0, 8.0), (t2.id, 1, 9.0)]

    for bad, field in (
        (MetricQuery((t1.id,), page_size=0), "page_size"),
        (MetricQuery((t1.id,), names=("",)), "names"),
        (MetricQuery((t1.id,), min_steps=5, max_steps=4), "min_steps"),
    ):
        with pytest.raises(InvalidArgumentError, match=field):
            next(store.read_metrics(bad))
    with pytest.raises(NotFoundError, match="trial 4242 not found"):
        next(store.read_metrics(MetricQuery((t1.id, 4242))))


def test_read_metrics_gives_back_exactly_what_was_stored(store: SQLStore) -> None:
    """Every column comes back bit for bit, whichever way the store reads a page (SQLite
    gathers a backlog's columns in the database and sends timestamps as integers of 2**-22 s
    where that is exact, rows otherwise)."""
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    now = time.time()
    stamps = [now + i / 7 for i in range(30)]  # every bit of the double in use
    stamps[5] = 0.1  # before 2**30 s: not a multiple of 2**-22
    stamps[6] = 2.0**41 + 0.5  # past 2**40 s
    reports = [
        MetricReport(
            "validation" if i % 3 == 0 else "training",
            i // 2,  # two reports per step: the order within a step is the storage order
            {"loss": 1 / (i + 3), "big": 1e300 * i, "odd": math.inf if i == 4 else i / 3},
            ts,
        )
        for i, ts in enumerate(stamps)
    ]
    store.add_metrics(t1.id, "b1", reports[:20], run_id=1)
    store.add_metrics(t1.id, "b2", reports[20:], run_id=2)
    store.add_metrics(t2.id, "b1", reports[:10], run_id=7)
    want = [
        MetricPoint(t1.id, r.group, r.steps_completed, r.metrics, r.timestamp, run_id=1 + (i >= 20))
        for i, r in enumerate(reports)
    ] + [
        MetricPoint(t2.id, r.group, r.steps_completed, r.metrics, r.timestamp, run_id=7)
        for r in reports[:10]
    ]

    def same(got: list[MetricPoint], expected: list[MetricPoint]) -> None:
        assert [dataclasses.replace(p, metrics={}) for p in got] == [
            dataclasses.replace(p, metrics={}) for p in expected
        ]
        assert [json.dumps(p.metrics) for p in got] == [json.dumps(p.metrics) for p in expected]

    for page_size in (1, 4, 29, 30, 31, 100):
        pages = list(store.read_metrics(MetricQuery((t2.id, t1.id), page_size=page_size)))
        assert all(len(p) == page_size for p in pages[:-1])
        same([p for page in pages for p in page.points()], want)
    training = [p for p in want if p.group == "training" and 3 <= p.steps_completed <= 12]
    q = MetricQuery((t1.id, t2.id), group="training", min_steps=3, max_steps=12, page_size=3)
    same([p for page in store.read_metrics(q) for p in page.points()], training)
    named = [
        dataclasses.replace(p, metrics={"odd": p.metrics["odd"], "loss": p.metrics["loss"]})
        for p in want
    ]
    q = MetricQuery((t1.id, t2.id), names=("odd", "loss", "absent"), page_size=7)
    same([p for page in store.read_metrics(q) for p in page.points()], named)

    # A restart of t1 at step 4 supersedes the later reports of runs 1 and 2.
    store.supersede_metrics(t1.id, 3, 4)
    t1_points = [p for p in want if p.trial_id == t1.id]
    kept = [p for p in t1_points if p.steps_completed <= 4]
    same([p for page in store.read_metrics(MetricQuery((t1.id,))) for p in page.points()], kept)
    every = [dataclasses.replace(p, superseded=p.steps_completed > 4) for p in t1_points]
    q = MetricQuery((t1.id,), include_superseded=True, page_size=6)
    same([p for page in store.read_metrics(q) for p in page.points()], every)


def test_concurrent_add_metrics(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    threads_n, batches_n, reports_n = 6, 8, 25
    errors: list[BaseException] = []
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for b in range(batches_n):
                base = (k * batches_n + b) * reports_n
                batch = [
                    rep("training", base + i, loss=float(base + i), n=NAN if i == 0 else 1.0)
                    for i in range(reports_n)
                ]
                ok = store.add_metrics(trial.id, f"t{k}-b{b}", batch)
                # Every thread also retries one shared batch id: exactly one wins.
                dup = store.add_metrics(trial.id, "shared", [rep("validation", 1, v=1.0)])
                with lock:
                    results.extend([ok, dup])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    total = threads_n * batches_n * reports_n
    assert results.count(True) == threads_n * batches_n + 1
    got = store.get_trial(trial.id)
    assert got.steps_completed == total - 1
    assert_stats(
        got.summary_metrics["avg_metrics"]["loss"],
        min=0.0,
        max=float(total - 1),
        count=total,
        mean=(total - 1) / 2,
    )
    assert_stats(
        got.summary_metrics["avg_metrics"]["n"],
        min=1.0,
        max=1.0,
        count=total,
        mean=1.0,
    )
    assert got.summary_metrics["validation_metrics"]["v"]["count"] == 1
    steps = [p.steps_completed for p in all_points(store, [trial.id], group="training")]
    assert steps == list(range(total))


def test_concurrent_creates_one_winner(store: SQLStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        try:
            store.create_workspace("race")
            res = "ok"
        except AlreadyExistsError:
            res = "dup"
        with lock:
            outcomes.append(res)

    workers = [threading.Thread(target=work) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(outcomes) == ["dup"] * 5 + ["ok"]
    assert [w.name for w in store.list_workspaces(name="race")] == ["race"]


# -- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_metrics_are_filled_in(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_metrics(
        trial.id,
        "b1",
        [
            rep("training", 10, loss=1.0),
            rep("training", 20, loss=2.0, acc=0.2),
            rep("validation", 15, vloss=1.5),
            rep("training", 30, loss=3.0),
        ],
    )
    store.add_metrics(
        trial.id,
        "b2",
        [rep("training", 20, loss=2.5, lr=0.1), rep("validation", 30, vloss=3.0)],
    )
    c = store.add_checkpoint(ckpt("at-25", trial, 25))
    # Several reports at the last step: merged, later ones win.
    assert c.training_metrics == {"loss": 2.5, "acc": 0.2, "lr": 0.1}
    assert c.validation_metrics == {"vloss": 1.5}
    c = store.add_checkpoint(ckpt("at-30", trial, 30))
    assert (c.training_metrics, c.validation_metrics) == ({"loss": 3.0}, {"vloss": 3.0})
    c = store.add_checkpoint(ckpt("at-5", trial, 5))
    assert (c.training_metrics, c.validation_metrics) == ({}, {})
    assert store.get_checkpoint("at-25").training_metrics == {"loss": 2.5, "acc": 0.2, "lr": 0.1}


def test_reports_after_a_checkpoint_fill_it_in_across_trials(store: SQLStore) -> None:
    # One group commit of several trials: only checkpoints at or after a new report change.
    exp = new_exp(store)
    a, b, c = (new_trial(store, exp.id, f"r{i}") for i in range(3))
    store.add_checkpoint(ckpt("a-10", a, 10))
    store.add_checkpoint(ckpt("b-50", b, 50))
    out = store.add_metrics_many(
        [
            (a.id, "a1", [rep("training", 10, loss=1.0), rep("validation", 8, vloss=0.8)], 1),
            (b.id, "b1", [rep("training", 60, loss=6.0)], 1),
            (c.id, "c1", [rep("validation", 1, vloss=0.1)], 1),
            (a.id, "a1", [rep("training", 10, loss=9.0)], 1),  # a retry in the same commit
        ]
    )
    assert out == [True, True, True, False]
    got = store.get_checkpoint("a-10")
    assert (got.training_metrics, got.validation_metrics) == ({"loss": 1.0}, {"vloss": 0.8})
    got = store.get_checkpoint("b-50")
    assert (got.training_metrics, got.validation_metrics) == ({}, {})


def test_checkpoint_fields_and_errors(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    c = store.add_checkpoint(
        ckpt(
            "abc",
            trial,
            7,
            CheckpointState.ACTIVE,
            resources={"a.bin": 3},
            metadata={"k": [1]},
            report_time=99.5,
        )
    )
    assert c == Checkpoint(
        uuid="abc",
        trial_id=trial.id,
        experiment_id=exp.id,
        state=CheckpointState.ACTIVE,
        steps_completed=7,
        resources={"a.bin": 3},
        metadata={"k": [1]},
        storage={"type": "shared_fs", "path": "/ckpts"},
        report_time=99.5,
    )
    assert store.get_checkpoint("abc") == c
    with pytest.raises(NotFoundError, match="checkpoint 'zzz' not found"):
        store.get_checkpoint("zzz")
    with pytest.raises(NotFoundError, match="trial 77 not found"):
        store.add_checkpoint(
            Checkpoint("x", 77, exp.id, CheckpointState.ACTIVE, 1, {}, {}, {}, 0.0)
        )
    other_exp = new_exp(store)
    with pytest.raises(InvalidArgumentError):
        store.add_checkpoint(
            Checkpoint("x", trial.id, other_exp.id, CheckpointState.ACTIVE, 1, {}, {}, {}, 0.0)
        )
    got = store.update_checkpoint("abc", metadata={"k": 2}, resources={})
    assert (got.metadata, got.resources, got.state) == ({"k": 2}, {}, CheckpointState.ACTIVE)
    with pytest.raises(NotFoundError, match="checkpoint 'zzz' not found"):
        store.update_checkpoint("zzz", state=CheckpointState.DELETED)


def test_latest_checkpoint(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    other = new_trial(store, exp.id, "r2")

    def latest() -> str | None:
        return store.get_trial(trial.id).latest_checkpoint_uuid

    store.add_checkpoint(ckpt("c10", trial, 10))
    assert latest() == "c10"
    store.add_checkpoint(ckpt("a20", trial, 20, CheckpointState.ACTIVE))
    assert latest() == "c10"  # not COMPLETED
    store.add_checkpoint(ckpt("c5", trial, 5))
    assert latest() == "c10"  # fewer steps
    store.add_checkpoint(ckpt("o50", other, 50))
    assert latest() == "c10"  # another trial's
    assert store.get_trial(other.id).latest_checkpoint_uuid == "o50"
    store.add_checkpoint(ckpt("c10b", trial, 10))
    assert latest() == "c10b"  # same steps: the newer one
    store.update_checkpoint("a20", state=CheckpointState.COMPLETED)
    assert latest() == "a20"
    store.update_checkpoint("a20", state=CheckpointState.DELETED)
    assert latest() in ("c10", "c10b")  # falls back to the best COMPLETED one left
    store.update_checkpoint("c10", state=CheckpointState.DELETED)
    store.update_checkpoint("c10b", state=CheckpointState.DELETED)
    assert latest() == "c5"
    store.update_checkpoint("c5", state=CheckpointState.ERROR)
    assert latest() is None


def test_checkpoint_retry_is_idempotent(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_metrics(trial.id, "b", [rep("training", 10, loss=1.0)])
    first = store.add_checkpoint(ckpt("u", trial, 10, CheckpointState.ACTIVE, resources={}))
    assert store.get_trial(trial.id).latest_checkpoint_uuid is None
    again = store.add_checkpoint(ckpt("u", trial, 10, resources={"w": 5}, metadata={"retry": True}))
    assert again.state is CheckpointState.COMPLETED
    assert (again.resources, again.metadata) == ({"w": 5}, {"retry": True})
    assert again.training_metrics == first.training_metrics == {"loss": 1.0}
    assert (
        store.add_checkpoint(ckpt("u", trial, 10, resources={"w": 5}, metadata={"retry": True}))
        == again
    )
    assert [c.uuid for c in store.list_checkpoints(trial_id=trial.id)] == ["u"]
    assert store.get_trial(trial.id).latest_checkpoint_uuid == "u"
    other = new_trial(store, exp.id, "r2")
    with pytest.raises(AlreadyExistsError, match="checkpoint 'u' already exists"):
        store.add_checkpoint(ckpt("u", other, 10))
    assert store.get_checkpoint("u").trial_id == trial.id


def test_list_checkpoints(store: SQLStore) -> None:
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    store.add_checkpoint(ckpt("t2-5", t2, 5))
    store.add_checkpoint(ckpt("t1-20", t1, 20))
    store.add_checkpoint(ckpt("t1-10", t1, 10, CheckpointState.ACTIVE))
    store.add_checkpoint(ckpt("t1-30", t1, 30))
    store.update_checkpoint("t1-30", state=CheckpointState.DELETED)
    store.add_checkpoint(ckpt("t1-40", t1, 40, CheckpointState.ERROR))

    def run(**kw: Any) -> list[str]:
        return [c.uuid for c in store.list_checkpoints(**kw)]

    assert run(experiment_id=exp.id) == ["t1-10", "t1-20", "t1-40", "t2-5"]
    assert run(trial_id=t1.id) == ["t1-10", "t1-20", "t1-40"]
    assert run(trial_id=t1.id, states=[CheckpointState.DELETED]) == ["t1-30"]
    assert run(
        experiment_id=exp.id, states=[CheckpointState.COMPLETED, CheckpointState.DELETED]
    ) == ["t1-20", "t1-30", "t2-5"]
    assert run(experiment_id=new_exp(store).id) == []
    with pytest.raises(InvalidArgumentError):
        store.list_checkpoints()
    with pytest.raises(InvalidArgumentError):
        store.list_checkpoints(experiment_id=exp.id, trial_id=t1.id)
    with pytest.raises(NotFoundError, match="trial 99 not found"):
        store.list_checkpoints(trial_id=99)
    with pytest.raises(NotFoundError, match="experiment 99 not found"):
        store.list_checkpoints(experiment_id=99)


# -- logs --------------------------------------------------------------------------------------


def test_logs(store: SQLStore) -> None:
    exp = new_exp(store)
    t1 = new_trial(store, exp.id, "r1")
    t2 = new_trial(store, exp.id, "r2")
    lines = [
        LogLine(t1.id, 1.0, "starting up"),
        LogLine(t1.id, 2.0, "Loss is 0.5", rank=1),
        LogLine(t2.id, 2.5, "other trial"),
        LogLine(t1.id, 3.0, "warning: loss spiked", level="WARNING", stream="stderr"),
        LogLine(t1.id, 4.0, "loss is 0.1", rank=1, run_id=2),
        LogLine(t1.id, 5.0, "100% done", level="ERROR", stream="stderr", rank=2),
    ]
    store.add_logs(lines)
    store.add_logs([])
    got = store.query_logs(LogQuery(t1.id))
    assert [ln.message for ln in got] == [ln.message for ln in lines if ln.trial_id == t1.id]
    assert [ln.id for ln in got] == sorted(ln.id for ln in got)
    assert got[0].id >= 1
    assert got[3] == LogLine(t1.id, 4.0, "loss is 0.1", rank=1, run_id=2, id=got[3].id)
    ids = [ln.id for ln in got]

    def run(**kw: Any) -> list[str]:
        return [ln.message for ln in store.query_logs(LogQuery(t1.id, **kw))]

    assert run(search="loss") == ["warning: loss spiked", "loss is 0.1"]  # case-sensitive
    assert run(search="100%") == ["100% done"]
    assert run(regex=r"^[Ll]oss is 0\.[0-9]$") == ["Loss is 0.5", "loss is 0.1"]
    assert run(regex=r"(?i)LOSS", tail=1) == ["loss is 0.1"]
    assert run(regex="[0-9]+% done", levels=("ERROR",)) == ["100% done"]
    with pytest.raises(InvalidArgumentError, match="regex"):
        run(regex="(unclosed")
    assert run(levels=("WARNING", "ERROR")) == ["warning: loss spiked", "100% done"]
    assert run(ranks=(1,)) == ["Loss is 0.5", "loss is 0.1"]
    assert run(streams=("stderr",)) == ["warning: loss spiked", "100% done"]
    assert run(timestamp_after=2.0, timestamp_before=5.0) == ["warning: loss spiked", "loss is 0.1"]
    assert run(after_id=ids[2]) == ["loss is 0.1", "100% done"]
    assert run(head=2) == ["starting up", "Loss is 0.5"]
    assert run(tail=2) == ["loss is 0.1", "100% done"]
    assert run(tail=2, ranks=(1,)) == ["Loss is 0.5", "loss is 0.1"]
    assert run(head=1, after_id=ids[0], streams=("stderr",)) == ["warning: loss spiked"]
    assert run(tail=10) == run()
    assert run(head=0) == []
    assert [ln.message for ln in store.query_logs(LogQuery(t2.id))] == ["other trial"]
    # New lines get larger ids than everything before (a follower polls with after_id).
    store.add_logs([LogLine(t1.id, 6.0, "later")])
    assert run(after_id=ids[-1]) == ["later"]
    with pytest.raises(InvalidArgumentError):
        store.query_logs(LogQuery(t1.id, head=1, tail=1))
    with pytest.raises(NotFoundError, match="trial 99 not found"):
        store.query_logs(LogQuery(99))
    with pytest.raises(NotFoundError, match="trial 99 not found"):
        store.add_logs([LogLine(t1.id, 1.0, "ok"), LogLine(99, 1.0, "bad")])
    assert run(after_id=ids[-1]) == ["later"]  # the failed batch wrote nothing


# -- models ------------------------------------------------------------------------------------


def test_models(store: SQLStore) -> None:
    ws = store.create_workspace("w")
    before = time.time()
    m = store.create_model("Resnet", description="d", metadata={"k": 1}, labels=["cv", "prod"])
    assert m.id == 1
    assert (m.name, m.description, m.metadata, m.labels) == (
        "Resnet",
        "d",
        {"k": 1},
        ("cv", "prod"),
    )
    assert (m.archived, m.num_versions, m.workspace_id) == (False, 0, 1)
    assert before <= m.creation_time == m.last_updated_time <= time.time()
    assert store.get_model("Resnet") == m
    bert = store.create_model("bert", labels=["nlp", "prod"], workspace_id=ws.id)
    store.create_model("old-resnet", labels=["cv"])
    store.update_model("old-resnet", archived=True)
    with pytest.raises(AlreadyExistsError, match="model named 'bert' already exists"):
        store.create_model("bert")
    with pytest.raises(NotFoundError, match="model 'nope' not found"):
        store.get_model("nope")
    with pytest.raises(NotFoundError, match="workspace 99 not found"):
        store.create_model("x", workspace_id=99)

    def run(**kw: Any) -> list[str]:
        return [x.name for x in store.list_models(**kw)]

    assert run() == ["Resnet", "bert"]
    assert run(include_archived=True) == ["Resnet", "bert", "old-resnet"]
    assert run(name_contains="RESNET", include_archived=True) == ["Resnet", "old-resnet"]
    assert run(labels=["prod"]) == ["Resnet", "bert"]
    assert run(labels=["prod", "cv"]) == ["Resnet"]
    assert run(workspace_id=ws.id) == ["bert"]

    got = store.update_model("bert", new_name="bert-base", description="new", metadata={"a": 1})
    assert (got.name, got.description, got.metadata, got.labels) == (
        "bert-base",
        "new",
        {"a": 1},
        ("nlp", "prod"),
    )
    assert got.id == bert.id and got.last_updated_time >= bert.last_updated_time
    got = store.update_model("bert-base", labels=["x"])
    assert got.labels == ("x",)
    with pytest.raises(NotFoundError, match="model 'bert' not found"):
        store.get_model("bert")
    with pytest.raises(AlreadyExistsError, match="'Resnet'"):
        store.update_model("bert-base", new_name="Resnet")
    with pytest.raises(NotFoundError, match="model 'nope' not found"):
        store.update_model("nope", description="x")
    store.delete_model("bert-base")
    with pytest.raises(NotFoundError):
        store.get_model("bert-base")
    with pytest.raises(NotFoundError, match="model 'bert-base' not found"):
        store.delete_model("bert-base")
    with pytest.raises(FailedPreconditionError):
        store.delete_workspace(1)


def test_model_versions(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    for i in range(3):
        store.add_checkpoint(ckpt(f"c{i}", trial, i))
    store.create_model("m")
    store.create_model("n")
    v1 = store.create_model_version(
        "m", "c0", name="first", comment="hi", metadata={"a": 1}, labels=["x"]
    )
    assert (v1.id, v1.version, v1.model_id, v1.checkpoint_uuid) == (
        1,
        1,
        store.get_model("m").id,
        "c0",
    )
    assert (v1.name, v1.comment, v1.metadata, v1.labels) == ("first", "hi", {"a": 1}, ("x",))
    v2 = store.create_model_version("m", "c1")
    n1 = store.create_model_version("n", "c1")  # numbering is per model
    assert (v2.version, n1.version) == (2, 1)
    assert store.get_model_version("m", 1) == v1
    assert store.get_model_version("m") == v2
    assert store.get_model_version("m", None) == v2
    assert [v.version for v in store.list_model_versions("m")] == [1, 2]
    assert store.get_model("m").num_versions == 2
    with pytest.raises(NotFoundError, match="checkpoint 'missing' not found"):
        store.create_model_version("m", "missing")
    with pytest.raises(NotFoundError, match="model 'zz' not found"):
        store.create_model_version("zz", "c0")
    with pytest.raises(NotFoundError, match="model 'm' version 9 not found"):
        store.get_model_version("m", 9)
    with pytest.raises(NotFoundError, match="model 'zz' not found"):
        store.list_model_versions("zz")
    store.delete_model_version("m", 2)
    assert store.get_model_version("m") == v1
    with pytest.raises(NotFoundError, match="model 'm' version 2 not found"):
        store.delete_model_version("m", 2)
    v3 = store.create_model_version("m", "c2")
    assert v3.version == 3  # numbers are not reused
    assert store.get_model_version("m") == v3
    store.delete_model_version("m", 1)
    store.delete_model_version("m", 3)
    with pytest.raises(NotFoundError, match="model 'm'"):
        store.get_model_version("m")
    store.update_checkpoint("c0", state=CheckpointState.DELETED)
    with pytest.raises(FailedPreconditionError):
        store.create_model_version("m", "c0")
    store.delete_model("n")  # its versions go with it
    assert store.list_models(include_archived=True)[0].name == "m"


# -- pending jobs ---------------------------------------------------------------------------------
def test_jobs_are_recorded_once_per_key_and_finished(store: Store) -> None:
    a = store.add_job("remove_files", "k1", {"paths": ["/x"]})
    again = store.add_job("remove_files", "k1", {"paths": ["/other"]})
    b = store.add_job("gc_experiment", "k2", {"experiment_id": 3})
    assert again == a and a.payload == {"paths": ["/x"]}
    assert [j.key for j in store.list_jobs()] == ["k1", "k2"]
    store.finish_job(a.id)
    store.finish_job(a.id)  # finishing twice is a no-op
    assert store.list_jobs() == [b]
    with pytest.raises(InvalidArgumentError):
        store.add_job("", "k3", {})


def test_checkpoint_deletion_is_atomic_with_its_job(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_checkpoint(ckpt("c1", trial, 1))
    store.add_checkpoint(ckpt("c2", trial, 2))
    store.create_model("m")
    store.create_model_version("m", "c2")
    # Refused whole: the message names checkpoint, model and version; nothing is marked.
    with pytest.raises(FailedPreconditionError, match=r"'c2'.*version 1 of model 'm'"):
        store.begin_checkpoint_deletion(["c1", "c2"], ["/ckpts/c1", "/ckpts/c2"])
    with pytest.raises(NotFoundError, match="nope"):
        store.begin_checkpoint_deletion(["c1", "nope"], [])
    assert {c.state for c in store.list_checkpoints(experiment_id=exp.id)} == {
        CheckpointState.COMPLETED
    }
    assert store.list_jobs() == []
    job = store.begin_checkpoint_deletion(["c1"], ["/ckpts/c1"])
    assert (job.kind, job.payload) == ("remove_files", {"paths": ["/ckpts/c1"]})
    c1 = store.get_checkpoint("c1")
    assert (c1.state, c1.resources) == (CheckpointState.DELETED, {})
    assert store.get_trial(trial.id).latest_checkpoint_uuid == "c2"
    assert store.list_jobs() == [job]


def test_experiment_deletion_checks_then_marks_deleting(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_checkpoint(ckpt("c1", trial, 1))
    with pytest.raises(FailedPreconditionError, match="ACTIVE"):
        store.begin_experiment_deletion(exp.id, ["/runs/trial-1"])
    store.update_experiment(exp.id, state=ExperimentState.COMPLETED)
    store.create_model("m")
    store.create_model_version("m", "c1")
    with pytest.raises(FailedPreconditionError, match=r"version 1 of model 'm'"):
        store.begin_experiment_deletion(exp.id, ["/runs/trial-1"])
    assert store.get_experiment(exp.id).state == ExperimentState.COMPLETED
    assert store.list_jobs() == []
    store.delete_model_version("m", 1)
    job = store.begin_experiment_deletion(exp.id, ["/runs/trial-1"])
    assert job.payload == {"experiment_id": exp.id, "paths": ["/runs/trial-1"]}
    assert store.get_experiment(exp.id).state == ExperimentState.DELETING
    assert store.begin_experiment_deletion(exp.id, []) == job  # recorded once
    with pytest.raises(NotFoundError, match="experiment 999"):
        store.begin_experiment_deletion(999, [])


# -- runs and superseded reports ------------------------------------------------------------------
def test_restart_from_a_checkpoint_supersedes_later_steps_of_earlier_runs(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    assert store.add_metrics(trial.id, "a", [rep("training", s, loss=s) for s in (1, 2, 3)], 1)
    assert store.add_metrics(trial.id, "b", [rep("validation", 3, loss=3.0)], 1)
    # Run 2 restarts from the checkpoint at step 1.
    assert store.supersede_metrics(trial.id, 2, 1) == 3
    assert store.supersede_metrics(trial.id, 2, 1) == 0  # idempotent
    assert store.add_metrics(trial.id, "c", [rep("training", s, loss=s) for s in (2, 3)], 2)

    def points(**kw: Any) -> list[tuple[str, int, int, bool]]:
        return [
            (p.group, p.steps_completed, p.run_id, p.superseded)
            for page in store.iter_metrics([trial.id], **kw)
            for p in page
        ]

    assert points(group="training") == [
        ("training", 1, 1, False),
        ("training", 2, 2, False),
        ("training", 3, 2, False),
    ]
    assert points(group="training", include_superseded=True) == [
        ("training", 1, 1, False),
        ("training", 2, 1, True),
        ("training", 2, 2, False),
        ("training", 3, 1, True),
        ("training", 3, 2, False),
    ]
    assert points(group="validation") == []
    with pytest.raises(NotFoundError, match="trial 999"):
        store.supersede_metrics(999, 2, 0)


def test_summaries_leave_out_superseded_reports(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    # Run 1 reports steps 1..4 (the best loss, 0.1, at step 4) and a validation at 4.
    steps = ((1, 0.9), (2, 0.5), (3, math.nan), (4, 0.1))
    run1 = [rep("training", s, loss=v) for s, v in steps]
    assert store.add_metrics(trial.id, "a", run1, 1)
    assert store.add_metrics(trial.id, "b", [rep("validation", 4, acc=0.99)], 1)
    assert store.get_trial(trial.id).summary_metrics["avg_metrics"]["loss"]["min"] == 0.1
    # Run 2 restarts from the checkpoint at step 2 and reports worse values at 3 and 4.
    assert store.supersede_metrics(trial.id, 2, 2) == 3
    summary = store.get_trial(trial.id).summary_metrics
    assert summary == {
        "avg_metrics": {"loss": {"min": 0.5, "max": 0.9, "last": 0.5, "count": 2, "mean": 0.7}}
    }
    assert store.add_metrics(trial.id, "c", [rep("training", 3, loss=0.4)], 2)
    assert store.add_metrics(trial.id, "d", [rep("validation", 3, acc=0.5)], 2)
    summary = store.get_trial(trial.id).summary_metrics
    loss = summary["avg_metrics"]["loss"]
    assert (loss["min"], loss["max"], loss["last"], loss["count"]) == (0.4, 0.9, 0.4, 3)
    assert loss["mean"] == pytest.approx(0.6)
    assert summary["validation_metrics"]["acc"] == {
        "min": 0.5,
        "max": 0.5,
        "last": 0.5,
        "count": 1,
        "mean": 0.5,
    }
    # Nothing marked: the summary is left as it is.
    assert store.supersede_metrics(trial.id, 2, 2) == 0
    assert store.get_trial(trial.id).summary_metrics == summary


def test_validation_reported_after_its_checkpoint_belongs_to_it(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    store.add_metrics(trial.id, "v10", [rep("validation", 10, loss=0.9)])
    store.add_checkpoint(ckpt("c20", trial, 20))
    store.add_checkpoint(ckpt("c30", trial, 30))
    assert store.get_checkpoint("c20").validation_metrics == {"loss": 0.9}
    # The validation at step 20 comes after the checkpoint at 20: same result as before it.
    store.add_metrics(trial.id, "v20", [rep("validation", 20, loss=0.5), rep("training", 20, t=1)])
    assert store.get_checkpoint("c20").validation_metrics == {"loss": 0.5}
    assert store.get_checkpoint("c20").training_metrics == {"t": 1.0}
    assert store.get_checkpoint("c30").validation_metrics == {"loss": 0.5}
    store.add_metrics(trial.id, "v30", [rep("validation", 30, loss=0.7)])
    assert store.get_checkpoint("c30").validation_metrics == {"loss": 0.7}
    assert store.get_checkpoint("c20").validation_metrics == {"loss": 0.5}


def test_a_retried_log_batch_is_stored_once(store: Store) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    lines = [LogLine(trial_id=trial.id, timestamp=1.0, message=f"l{i}") for i in range(3)]
    assert store.add_logs(lines, "b1") is True
    assert store.add_logs(lines, "b1") is False
    assert store.add_logs(lines[:1]) is True  # no batch id: always stored
    got = [x.message for x in store.query_logs(LogQuery(trial_id=trial.id))]
    assert got == ["l0", "l1", "l2", "l0"]


def test_checkpoint_uuids_starting(store: SQLStore) -> None:
    exp = new_exp(store)
    trial = new_trial(store, exp.id)
    for u in ("abcd-1", "abcd-2", "abce-3", "a%c_-4"):
        store.add_checkpoint(ckpt(u, trial, 1))
    assert store.checkpoint_uuids_starting("abcd", 5) == ["abcd-1", "abcd-2"]
    assert store.checkpoint_uuids_starting("abc", 1) == ["abcd-1"]
    assert store.checkpoint_uuids_starting("abce-3", 5) == ["abce-3"]
    # LIKE's wildcards in a prefix are plain characters.
    assert store.checkpoint_uuids_starting("a%", 5) == ["a%c_-4"]
    assert store.checkpoint_uuids_starting("a_", 5) == []
    assert store.checkpoint_uuids_starting("zz", 5) == []


def test_update_project_and_notes(store: SQLStore) -> None:
    p = store.create_project(1, "notes-proj", "d")
    assert p.notes == ()
    p = store.update_project(p.id, notes=[("a", "first"), ("b", "second")])
    assert p.notes == (("a", "first"), ("b", "second"))
    p = store.update_project(p.id, name="renamed", description="new", archived=True)
    assert (p.name, p.description, p.archived) == ("renamed", "new", True)
    assert store.get_project(p.id).notes == (("a", "first"), ("b", "second"))
    store.create_project(1, "taken")
    with pytest.raises(AlreadyExistsError, match="taken"):
        store.update_project(p.id, name="taken")
    with pytest.raises(InvalidArgumentError, match="project name"):
        store.update_project(p.id, name=" ")
    with pytest.raises(NotFoundError, match="project 999"):
        store.update_project(999, archived=False)
    exp = new_exp(store, "with-notes")
    assert exp.notes == ""
    assert store.update_experiment(exp.id, notes="# results\nok").notes == "# results\nok"
    assert store.get_experiment(exp.id).notes == "# results\nok"


def test_move_model_to_workspace(store: SQLStore) -> None:
    ws = store.create_workspace("registry")
    store.create_model("m", description="", metadata={}, labels=())
    assert store.update_model("m", workspace_id=ws.id).workspace_id == ws.id
    assert store.get_model("m").workspace_id == ws.id
    with pytest.raises(NotFoundError, match="workspace 999"):
        store.update_model("m", workspace_id=999)


def test_update_model_version(store: SQLStore) -> None:
    exp = new_exp(store, "mv")
    trial = new_trial(store, exp.id)
    store.add_checkpoint(ckpt("mv-c", trial, 1))
    store.create_model("mv-model", description="", metadata={}, labels=())
    store.create_model_version("mv-model", "mv-c")
    v = store.update_model_version("mv-model", 1, name="best", notes="n", comment="c")
    assert (v.name, v.notes, v.comment) == ("best", "n", "c")
    assert store.get_model_version("mv-model", 1).notes == "n"
    with pytest.raises(NotFoundError, match="version 2"):
        store.update_model_version("mv-model", 2, notes="x")
