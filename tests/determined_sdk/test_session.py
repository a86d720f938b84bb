"""The session: retries of reads across a master restart, writes sent once, error mapping."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest

from determined_sdk import (
    AlreadyExistsError,
    Determined,
    FailedPreconditionError,
    MasterUnavailableError,
    RetryPolicy,
    Session,
)
from determined_sdk._session import normalize_master
from master_server.app import Master

from .conftest import FAST_RETRY, CallCounter


@pytest.fixture
def own_master(tmp_path: pathlib.Path) -> Iterator[list[Master]]:
    """Masters a test starts itself (all stopped at teardown)."""
    masters: list[Master] = []
    yield masters
    for m in masters:
        m.stop()


def test_read_is_retried_across_a_master_restart(
    tmp_path: pathlib.Path, own_master: list[Master]
) -> None:
    data = tmp_path / "data"
    first = Master(data, slots=1).start()
    own_master.append(first)
    port = first.port
    counter = CallCounter()
    with Determined(first.address, interceptors=[counter]) as d:
        ws = d.create_workspace("survives-restart")
        first.stop()
        counter.unavailable.clear()

        def bring_back() -> None:
            # Start the new master only once the client has seen the first attempt fail.
            assert counter.unavailable.wait(timeout=30)
            own_master.append(Master(data, port=port, slots=1).start())

        t = threading.Thread(target=bring_back)
        t.start()
        counter.reset()
        got = d.get_workspace("survives-restart")  # a read: retried until the master is back
        t.join(timeout=30)
        assert got.id == ws.id
        assert counter.count("GetWorkspace") >= 2


def test_writes_are_not_retried_and_reads_give_up(tmp_path: pathlib.Path) -> None:
    counter = CallCounter()
    # Nothing listens on this port (bound, then released by a master that stopped).
    m = Master(tmp_path / "gone", slots=1).start()
    address = m.address
    m.stop()
    with Determined(address, retry=FAST_RETRY, interceptors=[counter]) as d:
        with pytest.raises(MasterUnavailableError, match="cannot reach the master"):
            d.create_workspace("never")
        assert counter.count("CreateWorkspace") == 1
        with pytest.raises(MasterUnavailableError):
            d.list_workspaces()
        assert counter.count("ListWorkspaces") == FAST_RETRY.attempts
        with pytest.raises(MasterUnavailableError):
            list(d.iter_trials_metrics([1]))
        assert counter.count("StreamMetrics") == FAST_RETRY.attempts


def test_errors_are_determined_errors_not_rpc_errors(det: Determined) -> None:
    import grpc

    det.create_workspace("dup-ws")
    with pytest.raises(AlreadyExistsError) as info:
        det.create_workspace("dup-ws")
    assert not isinstance(info.value, grpc.RpcError)
    assert info.value.__cause__ is None
    assert "dup-ws" in str(info.value)


def test_closed_client_and_context_manager(sdk_master: Master) -> None:
    with Determined(sdk_master.address) as d:
        assert d.get_master_info().total_slots == 2
    assert d.session.closed
    d.close()  # twice is fine
    with pytest.raises(FailedPreconditionError, match="closed"):
        d.list_workspaces()
    with pytest.raises(FailedPreconditionError, match="closed"):
        list(d.iter_trials_metrics([1]))


def test_master_address_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DET_MASTER", raising=False)
    assert normalize_master(None) == "localhost:8080"
    monkeypatch.setenv("DET_MASTER", "http://example:9000/")
    assert normalize_master(None) == "example:9000"
    assert normalize_master("grpc://1.2.3.4:5") == "1.2.3.4:5"
    s = Session(None)
    assert s.master == "example:9000"
    s.close()


def test_retry_policy_waits_grow() -> None:
    p = RetryPolicy(attempts=5, initial_wait=0.5, max_wait=3.0)
    assert [p.wait(i) for i in range(1, 5)] == [0.5, 1.0, 2.0, 3.0]


def test_login_sets_a_token(sdk_master: Master, det: Determined) -> None:
    if "alice" not in [u.username for u in det.list_users()]:
        det.create_user("alice", "pw")
    with Determined(sdk_master.address, user="alice", password="pw") as d:
        assert d.session._metadata and d.session._metadata[0][0] == "authorization"
        assert d.list_workspaces()
