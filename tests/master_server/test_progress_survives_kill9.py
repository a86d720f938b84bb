"""Progress reported by trials survives a `kill -9` of the master.

A trial's progress and steps are stored as they come; the search's own account of it (the
progress inputs its method counts, which make the experiment's progress) is saved in batches,
at most a second after the report, without waiting for the next searcher event. Here trial 1
reports half of its work and then waits; the master is killed and restarted; when trial 2 then
reports a fifth of its work, the experiment's progress counts both (as a master that never
stopped would), and it never went back.
"""

from __future__ import annotations

import pathlib
import signal

import pytest
import sqlalchemy as sa

from tests.master_server.test_adoption import _MasterProcess, master_proc  # noqa: F401
from tests.master_server.test_search_e2e import _config, _run_search
from tests.support import trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

# Trial 1 reports half its operation, trial 2 (after go-2) a fifth; each waits for its gate.
TRIAL = """
    import os, pathlib, time
    import core_api

    gates = pathlib.Path(os.environ["GATES"])
    tid = core_api.get_cluster_info().trial.trial_id

    def wait(name):
        while not (gates / name).exists():
            time.sleep(0.05)

    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            ctx.train.report_training_metrics(3, {"loss": 1.0})
            if tid == 1:
                op.report_progress(op.length / 2)
            ctx.train.flush()
            (gates / f"ready-{tid}").touch()
            wait(f"go-{tid}")
            if tid == 2:
                op.report_progress(op.length / 5)
                wait("finish")
            ctx.train.report_validation_metrics(op.length, {"loss": 1.0})
            op.report_completed(1.0)
"""


def _progress_logged(db_url: str) -> bool:
    """Whether the search log holds a progress input (a record, not only memory)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT event FROM searcher_events")).scalars().all()
    finally:
        engine.dispose()
    return any('["progress",' in r for r in rows)


def test_progress_reported_before_a_kill9_counts_after_the_restart(
    master_proc: _MasterProcess,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    md = write_model_dir(tmp_path / "m", {"main.py": TRIAL})
    searcher = {"name": "random", "max_trials": 2, "max_length": 10, "max_concurrent_trials": 2}
    cfg = _config("python main.py", searcher, {"x": 1})
    cfg["environment"] = {"environment_variables": {"GATES": str(gates)}}
    db_url = f"sqlite:///{master_proc.data_dir / 'master.db'}"

    stubs = master_proc.start()
    exp = stubs.create(cfg, md)
    wait_for(
        lambda: (gates / "ready-1").exists() and (gates / "ready-2").exists(), 60, "both trials"
    )
    wait_for(lambda: stubs.trial(1).progress == 0.5, 30, "trial 1's progress")
    before = stubs.experiment(exp.id).progress
    assert before == pytest.approx(0.25)  # 5 of 2 x 10 units
    wait_for(lambda: _progress_logged(db_url), 30, "the progress input to be saved")
    stubs.channel.close()
    master_proc.signal(signal.SIGKILL)

    stubs = master_proc.start()
    t1 = stubs.trial(1)
    assert (t1.progress, t1.steps_completed, trial_state(t1)) == (0.5, 3, "RUNNING")
    assert stubs.experiment(exp.id).progress >= before
    (gates / "go-2").touch()
    wait_for(lambda: stubs.trial(2).progress == pytest.approx(0.2), 60, "trial 2's progress")
    # Both trials' work: trial 1's report was not lost with the master.
    assert stubs.experiment(exp.id).progress == pytest.approx(0.35)
    for name in ("go-1", "finish"):
        (gates / name).touch()
    progress: list[float] = []
    assert _run_search(stubs, exp.id, timeout=120, progress=progress) == "COMPLETED"
    assert [trial_state(t) for t in stubs.trials_of(exp.id)] == ["COMPLETED"] * 2
    assert [t.run_id for t in stubs.trials_of(exp.id)] == [1, 1]
    stubs.channel.close()
