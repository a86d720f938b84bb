"""A master killed while it handles a trial's exit loses and replays nothing.

Handling a run's exit writes the trial's end state, the trials the searcher creates on hearing
of it, and the search log record of that event. They are one transaction: here the master
process dies (``os._exit``, as a ``kill -9``) right before the search log record is written,
after everything else of the exit was handled, and the restarted master must finish the same
search as a master that never stopped: the same trials, each created once, none run twice.
"""

from __future__ import annotations

import json
import pathlib
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from master_server.app import Master
from tests.master_server.test_adoption import _MasterProcess, master_proc  # noqa: F401
from tests.master_server.test_search_e2e import OPS_TRIAL, _config, _run_search
from tests.support import Stubs, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

SEARCHER = {"name": "random", "max_trials": 3, "max_length": 2, "max_concurrent_trials": 1}
HPARAMS = {"x": {"type": "double", "minval": -1.0, "maxval": 1.0}}

# The master, dying at the first searcher save that records a trial's exit while GATE exists
# (GATE is removed first: the restarted master runs normally).
CRASHING_MASTER = """
    import os, pathlib, sys
    from master_server.engine import search_log

    GATE = pathlib.Path(sys.argv.pop(1))
    _save = search_log.SearchLog.save

    def save(self, store, rt):
        exits = [e for e, _ in rt.searcher._entries if e[0] in ("exited", "exited_early")]
        if exits and GATE.exists():
            GATE.unlink()
            print(f"crash-window: dying before the record of {exits}", file=sys.stderr, flush=True)
            os._exit(137)
        _save(self, store, rt)

    search_log.SearchLog.save = save
    from master_server.__main__ import main

    main(sys.argv[1:])
"""


def _outcome(stubs: Stubs, exp_id: int) -> list[tuple[Any, ...]]:
    return [
        (json.loads(t.hparams_json), t.steps_completed, trial_state(t))
        for t in stubs.trials_of(exp_id)
    ]


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_master_killed_between_trial_end_and_search_record_resumes_exactly(
    master_factory: Callable[..., Master],
    master_proc: _MasterProcess,  # noqa: F811
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    db: str,
) -> None:
    md = write_model_dir(tmp_path / "m", {"main.py": OPS_TRIAL})
    cfg = _config("python main.py", SEARCHER, HPARAMS)

    reference = master_factory(data_dir=tmp_path / "reference")
    stubs = Stubs.connect(reference.address)
    assert _run_search(stubs, stubs.create(cfg, md).id) == "COMPLETED"
    want = _outcome(stubs, 1)
    stubs.channel.close()
    reference.stop()
    assert len(want) == 3 and all(w[2] == "COMPLETED" for w in want)

    gate = tmp_path / "gate"
    gate.touch()
    wrapper = tmp_path / "crashing_master.py"
    wrapper.write_text(textwrap.dedent(CRASHING_MASTER))
    master_proc.main = [str(wrapper), str(gate)]
    if db == "postgresql":
        master_proc.db_url = request.getfixturevalue("pg_schema_url")
    stubs = master_proc.start()
    exp = stubs.create(cfg, md)
    assert master_proc.proc is not None
    wait_for(
        lambda: master_proc.proc is not None and master_proc.proc.poll() is not None,
        120,
        "the master to die in the crash window",
    )
    assert not gate.exists()
    stubs.channel.close()

    stubs = master_proc.start()
    assert _run_search(stubs, exp.id, timeout=120) == "COMPLETED"
    assert _outcome(stubs, exp.id) == want
    trials = stubs.trials_of(exp.id)
    # The exit was handled by the restarted master (the run was adopted, its exit reported
    # again): no trial ran twice or was created twice.
    assert [(t.run_id, t.restarts) for t in trials] == [(1, 0)] * 3
    log = master_proc.log.read_text()
    assert log.count("crash-window: dying") == 1
    assert "adopted its live run 1" in log
    stubs.channel.close()
