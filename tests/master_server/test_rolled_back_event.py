"""A write the database refuses leaves the engine where the database is.

Handling a trial's exit changes the engine's memory (the trial ends, the searcher decides, new
trials are queued) inside one store transaction. When the database refuses a write of that
transaction (here: a trigger the test installs on the real SQLite file refuses every new trial
row, as a full disk or a lost connection would), the transaction is rolled back and the engine
must not carry on from a state that was never stored: the experiment's runtime is rebuilt
from the database, the trial whose exit was undone starts again from its checkpoint, a trial
still running keeps running with its run, and once the database accepts writes again the
search finishes with exactly the trials it asked for.
"""

from __future__ import annotations

import pathlib
import sqlite3
import textwrap
from collections.abc import Callable

import pytest

from master_server.app import Master
from tests.master_server.test_search_e2e import _config
from tests.support import Stubs, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

# Each trial waits until the test opens its gate (a file named after its trial id).
GATED_TRIAL = """
    import pathlib, time
    import core_api

    info = core_api.get_cluster_info()
    gate = pathlib.Path({gates!r}) / f"gate-{{info.trial.trial_id}}"
    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            ctx.train.report_validation_metrics(op.length, {{"loss": 1.0 / op.length}})
            op.report_completed(1.0 / op.length)
"""

REFUSE = {
    "sqlite": [
        "CREATE TRIGGER refuse_new_trials BEFORE INSERT ON trials "
        "BEGIN SELECT RAISE(ABORT, 'injected by the test: the database refuses new trials'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected by the test: the database refuses new trials'; END $$",
        "CREATE TRIGGER refuse_new_trials BEFORE INSERT ON trials "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}
ALLOW = {
    "sqlite": ["DROP TRIGGER refuse_new_trials"],
    "postgresql": ["DROP TRIGGER refuse_new_trials ON trials"],
}


def _sql(db: pathlib.Path | str, statement: str) -> None:
    """Run one statement on the master's database (a SQLite file or a PostgreSQL URL)."""
    if isinstance(db, str):
        import psycopg

        url = db.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(statement)  # type: ignore[arg-type]  # the test's own literal SQL
        return
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_rolled_back_exit_is_rebuilt_from_the_database(
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    db: str,
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    md = write_model_dir(
        tmp_path / "m", {"main.py": textwrap.dedent(GATED_TRIAL.format(gates=str(gates)))}
    )
    searcher = {"name": "random", "max_trials": 3, "max_length": 1, "max_concurrent_trials": 2}
    cfg = _config("python main.py", searcher, {"x": {"type": "double", "minval": 0, "maxval": 1}})
    where: pathlib.Path | str = tmp_path / "d" / "master.db"
    if db == "postgresql":
        where = request.getfixturevalue("pg_schema_url")
        master = master_factory(data_dir=tmp_path / "d", db_url=where)
    else:
        master = master_factory(data_dir=tmp_path / "d")
    stubs = Stubs.connect(master.address)
    exp = stubs.create(cfg, md)

    def running() -> list[int]:
        return [t.id for t in stubs.trials_of(exp.id) if trial_state(t) == "RUNNING"]

    first, second = wait_for(lambda: r if len(r := running()) == 2 else None, 60, "2 running")
    for statement in REFUSE[db]:
        _sql(where, statement)
    # The first trial ends; the searcher answers with a third trial, whose row is refused.
    (gates / f"gate-{first}").touch()

    # Its exit was rolled back: the trial starts again (a new run) instead of staying RUNNING
    # with a run that ended; the other trial's run was never interrupted.
    wait_for(lambda: stubs.trial(first).run_id >= 2, 60, f"trial {first} to start run 2")
    assert stubs.trial(second).run_id == 1
    assert trial_state(stubs.trial(second)) == "RUNNING"
    assert len(stubs.trials_of(exp.id)) == 2

    for statement in ALLOW[db]:
        _sql(where, statement)
    for i in range(1, 10):
        (gates / f"gate-{i}").touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120) == "COMPLETED"
    trials = {t.id: t for t in stubs.trials_of(exp.id)}
    assert len(trials) == 3  # the search asked for 3: the undone one was asked for again once
    assert all(trial_state(t) == "COMPLETED" for t in trials.values())
    assert trials[second].run_id == 1 and trials[first].run_id >= 2
    assert all(t.restarts == 0 for t in trials.values())  # not counted as failures
    stubs.channel.close()


def test_a_database_that_refuses_work_is_answered_unavailable(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    import grpc
    import httpx

    from determined_sdk.proto import workspace_pb2

    master = master_factory(data_dir=tmp_path / "d", http_port=0)
    db = tmp_path / "d" / "master.db"
    stubs = Stubs.connect(master.address)
    cfg = _config("true", {"name": "single", "max_length": 1}, {})
    exp = stubs.create(cfg, activate=False)
    # A trigger whose table is gone: every new workspace row and every experiment update
    # fails inside SQLite with an operational error, as a full disk would.
    for statement in (
        "CREATE TABLE gone (x)",
        "CREATE TRIGGER no_ws BEFORE INSERT ON workspaces BEGIN INSERT INTO gone VALUES (1); END",
        "CREATE TRIGGER no_exp BEFORE UPDATE ON experiments BEGIN INSERT INTO gone VALUES (1); END",
        "DROP TABLE gone",
    ):
        _sql(db, statement)
    with pytest.raises(grpc.RpcError) as err:
        stubs.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="w"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is unavailable, nothing was changed" in (err.value.details() or "")
    assert "no such table: main.gone" in (err.value.details() or "")

    assert master.http_url is not None
    token, _ = master.parts["users"].login("admin", "")
    with httpx.Client(
        base_url=master.http_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        r = http.post(f"/api/v1/experiments/{exp.id}/activate")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "UNAVAILABLE"

    _sql(db, "DROP TRIGGER no_ws")
    _sql(db, "DROP TRIGGER no_exp")
    stubs.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="w"))
    stubs.channel.close()
