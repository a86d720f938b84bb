"""Users, sessions, trial tokens and ownership through a real master (issue 10)."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

import determined_sdk.proto as proto_pkg
from determined_sdk import Determined
from determined_sdk.errors import (
    PermissionDeniedError,
    UnauthenticatedError,
)
from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import (
    auth_pb2,
    checkpoint_pb2,
    experiment_pb2,
    logs_pb2,
    master_pb2,
    searcher_pb2,
    trial_pb2,
    workspace_pb2,
)
from master_server.app import Master
from master_server.auth.core import PUBLIC_METHODS
from master_server.auth.policy import RULES
from tests.support import PYTHON, Stubs, single_config, trial_state, wait_for, write_model_dir


def _all_methods() -> list[tuple[str, Any, bool]]:
    """(full method name, request class, server-streaming) of every RPC in the generated code."""
    import importlib
    import pkgutil

    out = []
    names = [m.name for m in pkgutil.iter_modules(proto_pkg.__path__) if m.name.endswith("_pb2")]
    assert "auth_pb2" in names and "trial_pb2" in names
    for name in names:
        mod = importlib.import_module(f"{proto_pkg.__name__}.{name}")
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                req = message_factory.GetMessageClass(m.input_type)
                out.append((f"/{svc.full_name}/{m.name}", req, m.server_streaming))
    return out


def _call(ch: grpc.Channel, method: str, req: Any, streaming: bool, token: str | None) -> Any:
    md = [("authorization", f"Bearer {token}")] if token is not None else None
    if streaming:
        fn = ch.unary_stream(method, request_serializer=type(req).SerializeToString)
        return list(fn(req, metadata=md, timeout=30))
    fn = ch.unary_unary(method, request_serializer=type(req).SerializeToString)
    return fn(req, metadata=md, timeout=30)


def test_every_rpc_has_a_rule() -> None:
    methods = {m for m, _, _ in _all_methods()}
    assert len(methods) >= 57
    assert methods - set(RULES) == set(), "an RPC without an access rule"
    assert set(RULES) - methods == set(), "a rule for an RPC that does not exist"


@pytest.mark.parametrize("token", [None, "garbage", "dettrial.1.1.00ff", "x" * 5000])
def test_anonymous_and_bad_tokens_are_refused_on_every_rpc(
    master: Master, token: str | None
) -> None:
    with grpc.insecure_channel(master.address) as ch:
        for method, req_cls, streaming in _all_methods():
            if method in PUBLIC_METHODS:
                continue
            with pytest.raises(grpc.RpcError) as info:
                _call(ch, method, req_cls(), streaming, token)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert info.value.details(), method
        # Login and health answer without a token.
        with pytest.raises(grpc.RpcError) as info:
            _call(ch, "/detsdk.v1.MasterService/Login", master_pb2.LoginRequest(), False, None)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_password_unknown_user_and_deactivated_user_are_refused(master: Master) -> None:
    with pytest.raises(UnauthenticatedError, match="invalid username or password"):
        Determined(master.address, "mallory", "definitely-wrong")
    admin = Determined(master.address, "admin", "")
    admin.create_user("bob", "s3cret")
    with pytest.raises(UnauthenticatedError, match="invalid username or password"):
        Determined(master.address, "bob", "wrong")
    bob = Determined(master.address, "bob", "s3cret")
    assert bob.whoami().username == "bob" and not bob.whoami().admin
    with pytest.raises(PermissionDeniedError):
        bob.create_user("eve", "x")
    admin.set_user_active("bob", False)
    with pytest.raises(UnauthenticatedError, match="deactivated"):
        bob.list_workspaces()  # the session ended with the deactivation
    with pytest.raises(UnauthenticatedError, match="deactivated"):
        Determined(master.address, "bob", "s3cret")
    admin.set_user_active("bob", True)
    assert Determined(master.address, "bob", "s3cret").whoami().active
    users = {u.username: u for u in admin.list_users()}
    assert users["admin"].admin and not users["bob"].admin


def test_change_password_and_logout(master: Master) -> None:
    admin = Determined(master.address, "admin", "")
    admin.create_user("carol", "one")
    carol = Determined(master.address, "carol", "one")
    with pytest.raises(PermissionDeniedError, match="old_password"):
        carol.change_password("two", old_password="wrong")
    carol.change_password("two", old_password="one")
    with pytest.raises(UnauthenticatedError):
        Determined(master.address, "carol", "one")
    Determined(master.address, "carol", "two").logout()
    with pytest.raises(PermissionDeniedError):
        carol.change_password("three", old_password="two", username="admin")
    token = carol.session.token
    carol.logout()
    with grpc.insecure_channel(master.address) as ch, pytest.raises(grpc.RpcError) as info:
        _call(ch, "/detsdk.v1.UserService/GetMe", auth_pb2.GetMeRequest(), False, token)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_session_expiry_relogs_in_with_credentials(master_factory: Callable[..., Master]) -> None:
    m = master_factory(session_ttl_s=1.0)
    d = Determined(m.address, "admin", "")
    first = d.session.token
    with grpc.insecure_channel(m.address) as ch:

        def expired() -> bool:
            try:
                _call(ch, "/detsdk.v1.UserService/GetMe", auth_pb2.GetMeRequest(), False, first)
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in e.details()
            return False

        wait_for(expired, 30, "the session to expire")
    assert d.list_workspaces()  # logged in again from its credentials
    assert d.session.token != first


@pytest.fixture
def two_users(master: Master) -> Iterator[tuple[Determined, Determined, Determined]]:
    admin = Determined(master.address, "admin", "")
    admin.create_user("alice", "a")
    admin.create_user("mallory", "m")
    a, m = Determined(master.address, "alice", "a"), Determined(master.address, "mallory", "m")
    yield admin, a, m
    for d in (admin, a, m):
        d.close()


def test_owners_and_who_may_change_what(
    two_users: tuple[Determined, Determined, Determined], tmp_path: pathlib.Path
) -> None:
    admin, alice, mallory = two_users
    cfg = single_config("sleep 60", environment={"environment_variables": {"TOKEN": "hunter2"}})
    exp = alice.create_experiment(cfg, None, activate=False)
    ws = alice.create_workspace("alices")
    model = alice.create_model("alices-model")
    assert (exp.username, ws.username, model.username) == ("alice", "alice", "alice")
    assert mallory.get_experiment(exp.id).username == "alice"
    assert ws.create_project("p").username == "alice"
    # Everyone logged in reads; only the owner (or an admin) changes.
    seen = mallory.get_experiment(exp.id)
    assert seen.id == exp.id
    with pytest.raises(PermissionDeniedError, match=r"mallory.*experiment"):
        mallory.get_experiment(exp.id).kill()
    with pytest.raises(PermissionDeniedError):
        mallory.get_experiment(exp.id).set_name("pwned")
    with pytest.raises(PermissionDeniedError):
        mallory.get_workspace("alices").delete()
    with pytest.raises(PermissionDeniedError):
        mallory.get_model("alices-model").delete()
    with pytest.raises(PermissionDeniedError):
        mallory.get_workspace("alices").create_project("inside")
    alice.get_experiment(exp.id).set_name("renamed")
    admin.get_experiment(exp.id).kill()
    admin.get_model("alices-model").delete()
    with pytest.raises(PermissionDeniedError):
        mallory.get_workspace("alices").delete()
    alice.get_workspace("alices").list_projects()[0].delete()
    ws.delete()


def test_owner_name_shown_and_environment_hidden(two_users: Any, master: Master) -> None:
    _admin, alice, _mallory = two_users
    cfg = single_config("sleep 60", environment={"environment_variables": {"TOKEN": "hunter2"}})
    exp = alice.create_experiment(cfg, None, activate=False)
    a = Stubs.connect(master.address, username="alice", password="a")
    m = Stubs.connect(master.address, username="mallory", password="m")
    try:
        for who, stubs in (("alice", a), ("mallory", m)):
            got = stubs.experiment(exp.id)
            assert got.username == "alice", who
            if who == "alice":
                assert "hunter2" in got.config_json and "hunter2" in got.original_config
            else:
                assert "hunter2" not in got.config_json + got.original_config
                assert "TOKEN" in got.config_json  # the names stay, the values go
        listed = m.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
        assert all("hunter2" not in e.config_json for e in listed.experiments)
        assert {e.id: e.username for e in listed.experiments}[exp.id] == "alice"
        for who, stubs in (("alice", a), ("mallory", m)):
            full = stubs.experiments.ListExperiments(
                experiment_pb2.ListExperimentsRequest(full=True)
            )
            (got,) = [e for e in full.experiments if e.id == exp.id]
            assert got.username == "alice", who
            shown = "hunter2" in got.config_json and "hunter2" in got.original_config
            assert shown == (who == "alice"), who
        ws = a.workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(name="shown")
        ).workspace
        assert ws.username == "alice"
    finally:
        a.channel.close()
        m.channel.close()


TRIAL = """
import json, os, pathlib, time
import core_api
from determined_sdk._transport import channel_from_env
pathlib.Path(os.environ["OUT"]).write_text(json.dumps(dict(os.environ)))
gate = pathlib.Path(os.environ["GATE"])
deadline = time.time() + 120
while not gate.exists() and time.time() < deadline:
    time.sleep(0.05)
with core_api.init() as ctx:
    ctx.train.report_validation_metrics(steps_completed=10, metrics={"loss": 0.5})
"""


def _start_gated(
    stubs: Stubs, tmp_path: pathlib.Path, name: str
) -> tuple[int, int, pathlib.Path, pathlib.Path]:
    out, gate = tmp_path / f"{name}.env.json", tmp_path / f"{name}.gate"
    md = write_model_dir(tmp_path / f"model-{name}", {"main.py": TRIAL})
    cfg = single_config(
        f"{PYTHON} main.py",
        environment={"environment_variables": {"OUT": str(out), "GATE": str(gate)}},
    )
    exp = stubs.create(cfg, md)
    trial = wait_for(
        lambda: next(
            (t for t in stubs.trials_of(exp.id) if trial_state(t) == "RUNNING" and out.exists()),
            None,
        ),
        120,
        "the trial to run",
    )
    return exp.id, trial.id, out, gate


def test_trial_token_is_scoped_and_exit_reports_need_their_run(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETSDK_MASTER_SECRET_FOR_TEST", "do-not-leak")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # kept for trials
    exp1, t1, out1, gate1 = _start_gated(stubs, tmp_path, "one")
    exp2, t2, _out2, gate2 = _start_gated(stubs, tmp_path, "two")
    env = json.loads(out1.read_text())
    # The master's environment did not reach the trial; the platform's and config's did.
    assert "DETSDK_MASTER_SECRET_FOR_TEST" not in env
    assert env["PYTHONPATH"] == os.environ["PYTHONPATH"]
    assert env["OUT"] == str(out1) and env["DET_TRIAL_ID"] == str(t1)
    run_dir = master.data_dir / "runs" / f"trial-{t1}" / "run-1" / ".det"
    for f in ("launch.json", "cluster_info.json"):
        assert stat.S_IMODE((run_dir / f).stat().st_mode) == 0o600, f
    token1 = env["DET_SESSION_TOKEN"]
    bad = Stubs.connect(master.address, token=token1)
    try:
        # Its own trial: fine. Another trial: PERMISSION_DENIED, for every kind of call.
        bad.trials.GetTrialContext(trial_pb2.GetTrialContextRequest(trial_id=t1))
        bad.trials.ReportMetrics(pack_reports(t1, "b-1", [("training", 1, {"loss": 0.5}, 1.0)]))
        series = trial_pb2.StreamMetricSeriesRequest(
            trial_ids=[t1], group="training", names=["loss"]
        )
        (own,) = [s for r in bad.trials.StreamMetricSeries(series) for s in r.series]
        assert (own.trial_id, own.name, own.total_points) == (t1, "loss", 1)
        series.trial_ids.append(t2)
        attempts = [
            lambda: list(bad.trials.StreamMetricSeries(series)),
            lambda: bad.trials.GetTrialContext(trial_pb2.GetTrialContextRequest(trial_id=t2)),
            lambda: bad.trials.ReportProgress(
                trial_pb2.ReportProgressRequest(trial_id=t2, progress=0.5)
            ),
            # Calls a running trial's token passes on the event loop, without the database.
            lambda: bad.trials.ReportMetrics(
                pack_reports(t2, "b-1", [("training", 1, {"loss": 0.5}, 1.0)])
            ),
            lambda: bad.searcher.WatchPreemption(
                searcher_pb2.WatchPreemptionRequest(trial_id=t2, timeout_seconds=0.1)
            ),
            lambda: bad.searcher.GetSearcherOperation(
                searcher_pb2.GetSearcherOperationRequest(trial_id=t2, timeout_seconds=0.1)
            ),
            lambda: bad.logs.ShipLogs(
                logs_pb2.ShipLogsRequest(lines=[logs_pb2.LogLine(trial_id=t2, message="x")])
            ),
            lambda: bad.checkpoints.ReportCheckpoint(
                checkpoint_pb2.ReportCheckpointRequest(trial_id=t2, uuid="u", steps_completed=1)
            ),
            lambda: bad.master.ReportTrialExit(
                master_pb2.ReportTrialExitRequest(trial_id=t2, run_id=1, exit_code=0)
            ),
            # Its own trial, but a run it is not: a forged exit.
            lambda: bad.master.ReportTrialExit(
                master_pb2.ReportTrialExitRequest(trial_id=t1, run_id=2, exit_code=0)
            ),
            lambda: bad.experiments.ExperimentAction(
                experiment_pb2.ExperimentActionRequest(
                    experiment_id=exp2, action=experiment_pb2.EXPERIMENT_ACTION_KILL
                )
            ),
            lambda: bad.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest()),
        ]
        for i, attempt in enumerate(attempts):
            with pytest.raises(grpc.RpcError) as info:
                attempt()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (i, info.value)
        assert trial_state(stubs.trial(t2)) == "RUNNING"
    finally:
        bad.channel.close()
    gate1.touch()
    gate2.touch()
    stubs.wait_exp(exp1, "COMPLETED")
    stubs.wait_exp(exp2, "COMPLETED")
    # The run is over: its token is dead.
    dead = Stubs.connect(master.address, token=token1)
    try:
        with pytest.raises(grpc.RpcError) as info:
            dead.trials.GetTrialContext(trial_pb2.GetTrialContextRequest(trial_id=t1))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        dead.channel.close()


def test_expired_user_session_does_not_stop_a_trial(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    m = master_factory(session_ttl_s=3.0)
    stubs = Stubs.connect(m.address)
    out, gate = tmp_path / "long.env.json", tmp_path / "long.gate"
    md = write_model_dir(tmp_path / "model-long", {"main.py": TRIAL})
    cfg = single_config(
        f"{PYTHON} main.py",
        environment={"environment_variables": {"OUT": str(out), "GATE": str(gate)}},
    )
    try:
        exp = stubs.create(cfg, md).id
        wait_for(out.exists, 120, "the trial to start")
        wait_for(lambda: _expired(stubs), 30, "the creator's session to expire")
    finally:
        stubs.channel.close()
    gate.touch()  # the trial now reports metrics and finishes with its own token
    fresh = Stubs.connect(m.address)
    try:
        fresh.wait_exp(exp, "COMPLETED")
        (trial,) = fresh.trials_of(exp)
        assert trial_state(trial) == "COMPLETED" and trial.restarts == 0
    finally:
        fresh.channel.close()


def _expired(stubs: Stubs) -> bool:
    try:
        stubs.master.GetMasterInfo(master_pb2.GetMasterInfoRequest(), timeout=10)
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_initial_admin_password_and_non_loopback_refusal(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PermissionError, match="initial-admin-password"):
        Master(tmp_path / "a", host="0.0.0.0", slots=1).start()
    m = Master(tmp_path / "b", host="0.0.0.0", slots=1, initial_admin_password="pw").start()
    try:
        addr = f"127.0.0.1:{m.port}"
        with pytest.raises(UnauthenticatedError):
            Determined(addr, "admin", "")
        with Determined(addr, "admin", "pw") as d:
            assert d.whoami().admin
    finally:
        m.stop()
    # A loopback master made with the empty password refuses to move onto the network.
    m = Master(tmp_path / "c", slots=1).start()
    m.stop()
    with pytest.raises(PermissionError, match="empty password"):
        Master(tmp_path / "c", host="0.0.0.0", slots=1, initial_admin_password="late").start()


def test_a_runs_token_works_while_it_runs_and_never_after(
    master: Master, tmp_path: pathlib.Path
) -> None:
    """The engine vouches for a running run (no database read per call); once the run ended,
    or a newer run of the trial started, its token is refused."""
    gate = tmp_path / "gate"
    trial = (
        "import pathlib, time\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "deadline = time.monotonic() + 120\n"
        "while not gate.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
    )
    md = write_model_dir(tmp_path / "m", {"main.py": trial})
    stubs = Stubs.connect(master.address)
    exp = stubs.create(single_config(f"{PYTHON} main.py", max_restarts=0), md)
    wait_for(lambda: trial_state(stubs.trial(1)) == "RUNNING", 60, "the trial to run")
    auth = master.parts["auth"]
    run1 = auth.trial_token(1, 1)

    def get_trial(token: str) -> Any:
        with grpc.insecure_channel(master.address) as ch:
            req = trial_pb2.GetTrialRequest(trial_id=1)
            return _call(ch, "/detsdk.v1.TrialService/GetTrial", req, False, token)

    assert trial_pb2.GetTrialResponse.FromString(get_trial(run1)).trial.id == 1
    with pytest.raises(grpc.RpcError) as info:
        get_trial(auth.trial_token(1, 2))  # not started yet
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "run 2 of trial 1 has ended (current run 1" in (info.value.details() or "")

    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    with pytest.raises(grpc.RpcError) as info:
        get_trial(run1)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "run 1 of trial 1 has ended (current run 1, state COMPLETED)" in (
        info.value.details() or ""
    )
    stubs.channel.close()
