"""Fixtures for the Determined compatibility cases: a real master (2 slots) and the SDK's
default client logged in to it, as a Determined user's script would be."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from determined_sdk import client
from master_server.app import Master

HERE = pathlib.Path(__file__).resolve().parent
TUTORIAL = HERE / "core_tutorial"


@pytest.fixture
def det_client(master: Master) -> Iterator[client.Determined]:
    """``client.login`` to the test's master; logged out (closed) at teardown."""
    d = client.login(master=master.address)
    yield d
    d.close()
