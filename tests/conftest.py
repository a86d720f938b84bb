"""Shared fixtures: a real master on loopback (port 0) with a real SQLite file."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from master_server.app import Master
from tests.support import Stubs


@pytest.fixture
def master_factory(tmp_path: pathlib.Path) -> Iterator[Callable[..., Master]]:
    """Start masters (stopped at teardown); kwargs go to :class:`Master`."""
    started: list[Master] = []

    def make(**kw: Any) -> Master:
        kw.setdefault("slots", 2)
        kw.setdefault("preempt_grace_s", 10.0)
        data_dir = kw.pop("data_dir", tmp_path / "master")
        m = Master(data_dir, **kw).start()
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def master(master_factory: Callable[..., Master]) -> Master:
    """A started master on 127.0.0.1:<free port>, SQLite in tmp_path, 2 slots."""
    return master_factory()


@pytest.fixture
def stubs(master: Master) -> Iterator[Stubs]:
    s = Stubs.connect(master.address)
    yield s
    s.channel.close()

