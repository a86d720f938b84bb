"""Fixtures for the REST API and web UI tests: one real master per module with HTTP on port 0.

Trials are the SDK tests' small trainer script (raw gRPC stubs: metrics, checkpoints, logs), so
everything the HTTP side shows was stored by real trial processes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from determined_sdk import Determined, Experiment
from master_server.app import Master
from tests.determined_sdk.conftest import TRAINER, config, write_model

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def web_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    m = Master(tmp_path_factory.mktemp("master"), slots=2, preempt_grace_s=5.0, http_port=0).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def http(web_master: Master) -> Iterator[httpx.Client]:
    assert web_master.http_url is not None
    with httpx.Client(base_url=web_master.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def det(web_master: Master) -> Iterator[Determined]:
    with Determined(web_master.address) as d:
        yield d


@pytest.fixture(scope="module")
def make_experiment(
    det: Determined, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Experiment]:
    model_dir = write_model(tmp_path_factory.mktemp("model"), {"trainer.py": TRAINER})

    def make(activate: bool = True, **over: Any) -> Experiment:
        return det.create_experiment(config(**over), model_dir, activate=activate)

    return make


@pytest.fixture(scope="module")
def finished(make_experiment: Callable[..., Experiment]) -> Experiment:
    """A COMPLETED grid experiment: 2 trials (lr 0.1 and 0.5), 6 steps, 3 checkpoints each."""
    exp = make_experiment(
        name="finished",
        labels=["web", "grid"],
        searcher={
            "name": "grid",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": {"batches": 100},
        },
        hyperparameters={
            "steps": 6,
            "ckpt_every": 2,
            "sleep": 0.01,
            "lr": {"type": "categorical", "vals": [0.1, 0.5]},
        },
    )
    state = exp.wait(interval=0.1, timeout=180)
    assert state.value == "COMPLETED", (state, exp.error)
    return exp


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON error body of ``r``, after checking its status and shape."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"code", "status", "message", "field"}, err
    assert err["status"] == status and err["message"], err
    return dict(err)
