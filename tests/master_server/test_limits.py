"""Bounded work per request through a real master: alias bombs, depth, digits, NUL, enums, pages."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from determined_sdk import Determined
from determined_sdk.proto import checkpoint_pb2, experiment_pb2, workspace_pb2
from master_server import servicers
from master_server.app import Master
from tests.support import Stubs, single_config

# 9 levels of 9 aliases: ~387 million strings once expanded, a few hundred bytes as text.
BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "\n".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
)


def _refused(fn: object, *, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def _create(stubs: Stubs, text: str) -> experiment_pb2.Experiment:
    return stubs.experiments.CreateExperiment(
        experiment_pb2.CreateExperimentRequest(config=text, activate=False)
    ).experiment


def test_hostile_configs_are_refused_quickly(stubs: Stubs) -> None:
    assert len(BOMB) < 600
    t0 = time.monotonic()
    assert "expands to more than" in _refused(lambda: _create(stubs, BOMB))
    assert time.monotonic() - t0 < 10  # refused while parsing, not after minutes
    assert "nested more than" in _refused(lambda: _create(stubs, "a: " + "[" * 100 + "]" * 100))
    assert "nested" in _refused(lambda: _create(stubs, "[" * 100_000))
    assert "refers to itself" in _refused(lambda: _create(stubs, "a: &a [*a]"))
    assert "larger than" in _refused(lambda: _create(stubs, "a: " + "x" * (2 << 20)))
    huge = "{" + '"name": "x", "max_restarts": ' + "9" * 5001 + "}"
    assert "config" in _refused(lambda: _create(stubs, huge))
    # The master is fine and a normal config still works.
    assert _create(stubs, json.dumps(single_config("true"))).id > 0


def test_json_fields_nul_and_enums_are_named(stubs: Stubs) -> None:
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    msg = _refused(
        lambda: stubs.experiments.CreateUnmanagedTrial(
            experiment_pb2.CreateUnmanagedTrialRequest(config="name: x", hparams_json=deep)
        )
    )
    assert "hparams_json" in msg
    msg = _refused(
        lambda: stubs.experiments.CreateUnmanagedTrial(
            experiment_pb2.CreateUnmanagedTrialRequest(
                config="name: x", hparams_json='{"n": ' + "1" * 5001 + "}"
            )
        )
    )
    assert "hparams_json" in msg and "digits" in msg
    msg = _refused(
        lambda: stubs.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="a\0b"))
    )
    assert msg.startswith("name: ") and "NUL" in msg
    msg = _refused(
        lambda: stubs.experiments.ListExperiments(
            experiment_pb2.ListExperimentsRequest(states=[1, 999])
        )
    )
    assert "states[1]" in msg and "999" in msg
    msg = _refused(
        lambda: stubs.checkpoints.ListCheckpoints(
            checkpoint_pb2.ListCheckpointsRequest(trial_id=1, order_by=77)
        )
    )
    assert "order_by" in msg
    # Bytes that are not the method's message: INVALID_ARGUMENT, not INTERNAL.
    call = stubs.channel.unary_unary(
        "/detsdk.v1.ExperimentService/GetExperiment", request_serializer=lambda b: b
    )
    assert "not a valid message" in _refused(lambda: call(b"\xff\xff\xff\xff"))


def test_lists_are_paged_by_the_server(
    master: Master, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        _create(stubs, json.dumps(single_config("true")))
    monkeypatch.setattr(servicers, "MAX_PAGE", 2)
    monkeypatch.setattr(servicers, "MAX_SUMMARY_PAGE", 3)
    resp = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert len(resp.experiments) == 3 and resp.pagination.total == 5  # summaries
    resp = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest(full=True))
    assert len(resp.experiments) == 2 and resp.pagination.total == 5  # with configs
    with Determined(master.address, "admin", "") as d:
        assert len(d.list_experiments()) == 5  # the SDK pages on
    # Columns of summaries too big for one reply come as rows, cut by size (at least one).
    resp = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest(columnar=True))
    assert resp.HasField("columns") and len(resp.columns.id) == 3
    monkeypatch.setattr(servicers, "MAX_PAGE_BYTES", 1)
    resp = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest(columnar=True))
    assert not resp.HasField("columns") and len(resp.experiments) == 1
    assert resp.pagination.total == 5
    with Determined(master.address, "admin", "") as d:
        listed = d.list_experiments()
    assert [e.id for e in listed] == sorted(e.id for e in listed) and len(listed) == 5
