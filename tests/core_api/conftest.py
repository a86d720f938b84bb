"""Fixtures for the Core API tests: a clean environment, a real trial on a real master that this
test process plays the training code of, and a recording / fault-injecting wire.

``cluster_trial`` creates an experiment on the real master (``tests/conftest.py``'s ``master``)
whose entrypoint holds its slot until the test opens a gate file, so the trial stays RUNNING
with a real process. It then points ``DET_CLUSTER_INFO`` at (a copy of) the cluster info that
the master's launcher wrote for that process, so ``core_api.init()`` in the test process is
on-cluster for that trial: every call it makes reaches the real master.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from core_api import _channel
from determined_sdk.errors import NotFoundError
from master_server.app import Master
from tests.core_api.live_trial import GATE_ENV, GATE_MAIN, LiveTrial
from tests.core_api.wire import Wire
from tests.support import Stubs, single_config, wait_for, write_model_dir

_ENV = (
    "DET_CLUSTER_INFO",
    "DET_MASTER",
    "DET_TRIAL_ID",
    "DET_EXPERIMENT_ID",
    "DET_RUN_ID",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "DET_SESSION_TOKEN",
    "DET_USER",
    "DET_PASS",
    "DET_MASTER_CERT_FILE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's (or an outer trial's) Determined environment."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Records (and can fail) every call of the core_api sessions made during the test."""
    w = Wire()
    monkeypatch.setattr(_channel, "_TEST_INTERCEPTORS", [w])
    return w


@pytest.fixture
def cluster_trial(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., LiveTrial]]:
    """Make this process the training code of a real trial on ``master``.

    ``make(custom=False, ops=(), hyperparameters=None, data=None, **info_over)``: with
    ``custom=True`` the experiment uses the custom searcher, the trial is created by the test
    (request id ``r1``) and ``ops`` are its first ``validate_after`` lengths; otherwise it is a
    ``single`` search of 10 batches. ``info_over`` overrides keys of the cluster info.
    At teardown the gate opens and the trial's end is awaited (unless the master is stopped).
    """
    made: list[LiveTrial] = []

    def make(
        *,
        custom: bool = False,
        ops: Sequence[int] = (),
        hyperparameters: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        **info_over: Any,
    ) -> LiveTrial:
        n = len(made)
        gate = tmp_path / f"gate-{n}"
        model = write_model_dir(tmp_path / f"model-{n}", {"main.py": GATE_MAIN})
        cfg = single_config(
            "python main.py", environment={"environment_variables": {GATE_ENV: str(gate)}}
        )
        if hyperparameters is not None:
            cfg["hyperparameters"] = hyperparameters
        if data is not None:
            cfg["data"] = data
        if custom:
            cfg["searcher"] = {"name": "custom", "metric": "loss"}
        exp = stubs.create(cfg, model)
        live = LiveTrial(master, stubs, exp.id, 0, {}, gate)
        if custom:
            live.post(
                {"type": "create", "request_id": "r1", "hparams": cfg["hyperparameters"]},
                *({"type": "validate_after", "request_id": "r1", "length": x} for x in ops),
            )
        trials = wait_for(lambda: stubs.trials_of(exp.id), 60, "the trial to be created")
        live.trial_id = trials[0].id
        made.append(live)
        det = master.data_dir / "runs" / f"trial-{live.trial_id}" / "run-1" / ".det"
        # supervisor.pid is written once cluster_info.json is complete and the process runs.
        wait_for((det / "supervisor.pid").is_file, 60, f"trial {live.trial_id} to be launched")
        info = json.loads((det / "cluster_info.json").read_text())
        info.update(info_over)
        live.info = info
        path = tmp_path / f"cluster_info-{n}.json"
        path.write_text(json.dumps(info))
        monkeypatch.setenv("DET_CLUSTER_INFO", str(path))
        # Act with the run's own trial-scoped token, as the real trial process does.
        launch = json.loads((det / "launch.json").read_text())
        monkeypatch.setenv("DET_SESSION_TOKEN", launch["env"]["DET_SESSION_TOKEN"])
        return live

    yield make
    for live in made:
        live.release()
    for live in made:
        if master._server is not None and _exists(master, live.trial_id):  # not stopped or
            live.wait_settled()  # deleted by the test


def _exists(master: Master, trial_id: int) -> bool:
    try:
        master.parts["store"].get_trial(trial_id)
    except NotFoundError:
        return False
    return True
