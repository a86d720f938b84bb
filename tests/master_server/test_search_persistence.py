"""A search survives `kill -9` of its master exactly: snapshot + replayed searcher event log.

The master saves one small record per searcher event and a snapshot now and then
(:mod:`master_server.engine.search_log`). Here a real master process running an ASHA search is
killed twice at different points, each time with events logged after the last snapshot, and
restarted on the same data; the search must end exactly as the same search run without
interruption (one trial at a time, so the order of events is deterministic).
"""

from __future__ import annotations

import json
import pathlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from master_server.app import Master
from tests.master_server.test_adoption import _MasterProcess, master_proc  # noqa: F401
from tests.master_server.test_search_e2e import OPS_TRIAL, _config, _run_search
from tests.support import Stubs, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

SEARCHER = {
    "name": "adaptive_asha",
    "max_trials": 8,
    "max_length": 8,
    "max_rungs": 3,
    "divisor": 2,
    "max_concurrent_trials": 1,
}
HPARAMS = {"x": {"type": "double", "minval": -1.0, "maxval": 1.0}}


def _outcome(stubs: Stubs, exp_id: int) -> list[tuple[Any, ...]]:
    """What the search decided: every trial's hparams, length trained and end state."""
    return [
        (
            json.loads(t.hparams_json),
            t.steps_completed,
            trial_state(t),
            json.loads(t.summary_metrics_json or "{}")
            .get("validation_metrics", {})
            .get("loss", {})
            .get("count"),
        )
        for t in stubs.trials_of(exp_id)
    ]


def _logged_events(db_url: str) -> int:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM searcher_events")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_kill9_mid_search_resumes_the_search_exactly(
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
    ref_exp = stubs.create(cfg, md)
    assert _run_search(stubs, ref_exp.id, timeout=180) == "COMPLETED"
    want = _outcome(stubs, ref_exp.id)
    stubs.channel.close()
    reference.stop()
    assert len(want) == 8 and len({json.dumps(w[0]) for w in want}) == 8
    assert len({w[1] for w in want}) > 1, "ASHA stopped some trials early"

    if db == "postgresql":
        master_proc.db_url = request.getfixturevalue("pg_schema_url")
    db_url = master_proc.db_url or f"sqlite:///{master_proc.data_dir / 'master.db'}"
    stubs = master_proc.start()
    exp = stubs.create(cfg, md)
    progress: list[float] = []
    for at in (3, 6):
        wait_for(lambda s=stubs, n=at: len(s.trials_of(exp.id)) >= n, 120, f"{at} trials")
        stubs.channel.close()
        master_proc.signal(signal.SIGKILL)
        # The restart has searcher events to replay (not only a snapshot to load).
        assert _logged_events(db_url) > 0
        stubs = master_proc.start()
    assert _run_search(stubs, exp.id, timeout=180, progress=progress) == "COMPLETED"
    assert _outcome(stubs, exp.id) == want
    stubs.channel.close()
