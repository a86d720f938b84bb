"""Fixtures for the Core API tests: a clean environment, a fake master, cluster info files."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.core_api.fake_master import FakeMaster

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
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's (or an outer trial's) Determined environment."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake(tmp_path: pathlib.Path) -> Iterator[FakeMaster]:
    """An in-memory fake master on a free port, with checkpoint storage in tmp_path."""
    storage = tmp_path / "storage"
    storage.mkdir()
    m = FakeMaster(str(storage)).start()
    yield m
    m.stop()


@pytest.fixture
def on_cluster(
    fake: FakeMaster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, Any]]:
    """Make this process look like a trial launched by ``fake`` (kwargs override the info)."""

    def make(**over: Any) -> dict[str, Any]:
        info = fake.cluster_info(**over)
        path = tmp_path / "cluster_info.json"
        path.write_text(json.dumps(info))
        monkeypatch.setenv("DET_CLUSTER_INFO", str(path))
        monkeypatch.setenv("DET_MASTER", fake.address)
        return info

    return make
