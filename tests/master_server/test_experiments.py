"""Experiments through a real master: create/get/list/patch, lifecycle, queue, gang, restarts,
logs, and bad input (each with a clear error and the master still serving)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile
import threading
from typing import Any

import grpc
import pytest

from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import (
    common_pb2,
    experiment_pb2,
    logs_pb2,
    master_pb2,
    trial_pb2,
)
from master_server.app import Master
from tests.support import Stubs, single_config, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow


def _ok_dir(tmp_path: pathlib.Path, body: str = "print('hello from the trial')\n") -> pathlib.Path:
    return write_model_dir(tmp_path / "model", {"main.py": body})


def _assert_serving(stubs: Stubs) -> None:
    info = stubs.master.GetMasterInfo(master_pb2.GetMasterInfoRequest())
    assert info.total_slots >= 1


def test_create_runs_to_completion_and_lists(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    exp = stubs.create(single_config("python main.py", labels=["a", "b"]), _ok_dir(tmp_path))
    assert exp.id == 1 and exp.name == "test" and list(exp.labels) == ["a", "b"]
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (trial,) = stubs.trials_of(exp.id)
    assert trial_state(trial) == "COMPLETED" and trial.id == 1
    assert json.loads(trial.hparams_json) == {"x": 1}
    got = stubs.experiment(exp.id)
    assert got.progress == 1.0 and got.end_time >= got.start_time > 0
    cfg = json.loads(got.config_json)
    assert cfg["searcher"]["name"] == "single"

    stubs.create(single_config("python main.py", name="other"), _ok_dir(tmp_path), activate=False)
    listed = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert [e.id for e in listed.experiments] == [1, 2] and listed.pagination.total == 2
    by_name = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest(name="oth"))
    assert [e.id for e in by_name.experiments] == [2]
    by_label = stubs.experiments.ListExperiments(
        experiment_pb2.ListExperimentsRequest(labels=["a"])
    )
    assert [e.id for e in by_label.experiments] == [1]

    patched = stubs.experiments.PatchExperiment(
        experiment_pb2.PatchExperimentRequest(
            experiment_id=1, name="renamed", add_labels=["c"], remove_labels=["a"]
        )
    ).experiment
    assert patched.name == "renamed" and list(patched.labels) == ["b", "c"]
    assert stubs.experiment(1).name == "renamed"


def test_logs_are_captured_with_stream_rank_and_level(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    body = """
        import logging, sys
        import core_api
        for i in range(50):
            print(f"line {i}")
        print("WARNING something odd", file=sys.stderr)
        print("ERROR it broke", file=sys.stderr)
        sys.stderr.flush()
        logging.basicConfig(format=core_api.LOG_FORMAT, level=logging.DEBUG, stream=sys.stdout)
        logging.getLogger("train").debug("a detail")
        logging.getLogger("train").warning("loss is %s", "nan")
        sys.stdout.flush()
        print("no level here, on stderr", file=sys.stderr)
        try:
            raise ValueError("bad value")
        except ValueError:
            import traceback
            traceback.print_exc()
        print("after the traceback", file=sys.stderr)
    """
    exp = stubs.create(single_config("python main.py"), _ok_dir(tmp_path, body))
    stubs.wait_exp(exp.id, "COMPLETED")
    (trial,) = stubs.trials_of(exp.id)

    def read(**kw: Any) -> list[logs_pb2.LogLine]:
        req = logs_pb2.TrialLogsRequest(trial_id=trial.id, **kw)
        return [x for page in stubs.logs.TrialLogs(req) for x in page.lines]

    lines = read()
    stdout = [x.message for x in lines if x.stream == "stdout"]
    pid = stdout[50].split("[")[1].split("]")[0]
    assert stdout == [f"line {i}" for i in range(50)] + [
        f"DEBUG: [{pid}] train: a detail",
        f"WARNING: [{pid}] train: loss is nan",
    ]
    levels = {x.message: x.level for x in lines}
    assert levels[stdout[0]] == logs_pb2.LOG_LEVEL_INFO
    assert levels[stdout[50]] == logs_pb2.LOG_LEVEL_DEBUG
    assert levels[stdout[51]] == logs_pb2.LOG_LEVEL_WARNING
    err = [(x.message, x.level) for x in lines if x.stream == "stderr"]
    assert err[:3] == [
        ("WARNING something odd", logs_pb2.LOG_LEVEL_WARNING),
        ("ERROR it broke", logs_pb2.LOG_LEVEL_ERROR),
        ("no level here, on stderr", logs_pb2.LOG_LEVEL_INFO),  # the stream is no level
    ]
    tb = err[3:-1]
    assert tb[0][0] == "Traceback (most recent call last):"
    assert tb[-1][0] == "ValueError: bad value"
    assert {lv for _, lv in tb} == {logs_pb2.LOG_LEVEL_ERROR}  # the whole traceback
    assert err[-1] == ("after the traceback", logs_pb2.LOG_LEVEL_INFO)
    assert all(x.rank == 0 and x.timestamp > 0 and x.run_id == 1 for x in lines)
    # stdout and stderr are separate pipes: order is defined within a stream, not across them.
    assert [x.message for x in read(head=2, streams=["stdout"])] == ["line 0", "line 1"]
    assert [x.message for x in read(tail=1, streams=["stderr"])] == ["after the traceback"]
    assert [x.message for x in read(tail=1, streams=["stdout"])] == [stdout[-1]]
    assert [x.message for x in read(search="line 4")][:2] == ["line 4", "line 40"]
    errors = [x.message for x in read(levels=[logs_pb2.LOG_LEVEL_ERROR])]
    assert errors == ["ERROR it broke"] + [m for m, _ in tb]
    assert [x.message for x in read(regex=r"^line [0-9]$")] == [f"line {i}" for i in range(10)]
    assert [x.message for x in read(regex=r"(?i)VALUE(Error)?:")] == ["ValueError: bad value"]
    followed = [x.message for x in read(follow=True)]
    assert followed == [x.message for x in lines]
    run_dir = master.data_dir / "runs" / f"trial-{trial.id}" / "run-1"
    assert (run_dir / "rank-0.stdout.log").read_text().splitlines() == stdout
    assert "ERROR it broke" in (run_dir / "rank-0.stderr.log").read_text()


def test_queue_runs_experiments_one_after_another_and_a_failure_does_not_stop_others(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory(slots=1)
    stubs = Stubs.connect(master.address)
    record = tmp_path / "record.txt"
    body = f"""
        import os, time
        with open({str(record)!r}, "a") as f:
            f.write(f"start {{os.environ['DET_EXPERIMENT_ID']}} {{time.time()}}\\n")
        time.sleep(0.3)
        with open({str(record)!r}, "a") as f:
            f.write(f"end {{os.environ['DET_EXPERIMENT_ID']}} {{time.time()}}\\n")
        raise SystemExit(3 if os.environ["DET_EXPERIMENT_ID"] == "2" else 0)
    """
    md = _ok_dir(tmp_path, body)
    ids = [stubs.create(single_config("python main.py", name=f"e{i}"), md).id for i in range(4)]
    states = [stubs.wait_exp(i, "COMPLETED", "ERROR") for i in ids]
    assert states == ["COMPLETED", "ERROR", "COMPLETED", "COMPLETED"]
    events = [line.split() for line in record.read_text().splitlines()]
    # One slot: strictly start, end, start, end ... in submission order.
    assert [(e[0], int(e[1])) for e in events] == [
        (kind, i) for i in ids for kind in ("start", "end")
    ]
    stubs.channel.close()


def test_gang_scheduling_waits_for_all_slots_and_sets_ranks(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory(slots=2)
    stubs = Stubs.connect(master.address)
    gate = tmp_path / "gate"
    hold = _ok_dir(
        tmp_path,
        f"""
        import os, pathlib, time
        while not pathlib.Path({str(gate)!r}).exists():
            time.sleep(0.02)
        """,
    )
    gang_dir = write_model_dir(
        tmp_path / "gang",
        {
            "main.py": """
            import os
            env = os.environ
            print("rank", env["RANK"], "of", env["WORLD_SIZE"], env["MASTER_PORT"])
        """
        },
    )
    one = stubs.create(single_config("python main.py", name="one-slot"), hold)
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(one.id)] == ["RUNNING"],
        30,
        "1-slot trial running",
    )
    gang = stubs.create(
        single_config("python main.py", name="gang", resources={"slots_per_trial": 2}), gang_dir
    )
    wait_for(lambda: stubs.trials_of(gang.id), 10, "gang trial created")
    # One slot is taken: the 2-slot trial must wait, all ranks together.
    assert [trial_state(t) for t in stubs.trials_of(gang.id)] == ["QUEUED"]
    gate.touch()
    assert stubs.wait_exp(gang.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(gang.id)
    lines = [
        x.message
        for p in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=t.id))
        for x in p.lines
    ]
    assert sorted(x.split()[:4] for x in lines) == [
        ["rank", "0", "of", "2"],
        ["rank", "1", "of", "2"],
    ]
    assert len({x.split()[4] for x in lines}) == 1  # both ranks got the same MASTER_PORT
    stubs.channel.close()


def test_gang_fails_together_when_one_rank_fails(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory(slots=2)
    stubs = Stubs.connect(master.address)
    md = _ok_dir(
        tmp_path,
        """
        import os, time
        if os.environ["RANK"] == "1":
            raise SystemExit(5)
        time.sleep(120)  # rank 0 would hang; the supervisor must stop it
        """,
    )
    exp = stubs.create(single_config("python main.py", resources={"slots_per_trial": 2}), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=60) == "ERROR"
    (t,) = stubs.trials_of(exp.id)
    assert trial_state(t) == "ERROR"
    assert t.exit_reason == "crashed with exit code 5; no restarts allowed (max_restarts: 0)"
    stubs.channel.close()


def test_crash_restarts_up_to_max_restarts(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = _ok_dir(
        tmp_path,
        """
        import os, json
        info = json.load(open(os.environ["DET_CLUSTER_INFO"]))
        print("run", os.environ["DET_RUN_ID"], "latest", info["latest_checkpoint"])
        raise SystemExit(0 if os.environ["DET_RUN_ID"] == "3" else 1)
        """,
    )
    ok = stubs.create(single_config("python main.py", max_restarts=2), md)
    assert stubs.wait_exp(ok.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(ok.id)
    assert t.restarts == 2 and t.run_id == 3 and trial_state(t) == "COMPLETED"
    # Not the exit code of an earlier crash: why it ended, this time.
    assert t.exit_reason == "finished training after 2 restarts", t.exit_reason

    bad = stubs.create(single_config("python main.py", max_restarts=1), md)
    assert stubs.wait_exp(bad.id, "COMPLETED", "ERROR") == "ERROR"
    (t,) = stubs.trials_of(bad.id)
    assert t.restarts == 1 and trial_state(t) == "ERROR"
    assert t.exit_reason == "crashed with exit code 1; no restarts left, 1 used", t.exit_reason


def test_restart_resumes_from_latest_checkpoint(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    """Run 1 reports a checkpoint and crashes; run 2 is handed that checkpoint."""
    md = _ok_dir(
        tmp_path,
        """
        import json, os, pathlib, uuid
        import grpc
        from determined_sdk._transport import channel_from_env
        from determined_sdk.proto import checkpoint_pb2, checkpoint_pb2_grpc
        info = json.load(open(os.environ["DET_CLUSTER_INFO"]))
        if os.environ["DET_RUN_ID"] == "1":
            u = str(uuid.uuid4())
            d = pathlib.Path(info["checkpoint_storage"]["path"]) / u
            d.mkdir(parents=True)
            (d / "state.txt").write_text("7")
            channel = channel_from_env()
            stub = checkpoint_pb2_grpc.CheckpointServiceStub(channel)
            stub.ReportCheckpoint(checkpoint_pb2.ReportCheckpointRequest(
                trial_id=info["trial_id"], uuid=u, steps_completed=7, resources={"state.txt": 1},
                metadata_json=json.dumps({"steps_completed": 7})))
            raise SystemExit(1)
        d = pathlib.Path(info["checkpoint_storage"]["path"]) / info["latest_checkpoint"]
        print("resumed at", (d / "state.txt").read_text())
        """,
    )
    exp = stubs.create(single_config("python main.py", max_restarts=1), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    lines = [
        x.message
        for p in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=t.id))
        for x in p.lines
    ]
    assert "resumed at 7" in lines
    assert t.latest_checkpoint_uuid and t.restarts == 1


def test_kill_cancel_pause_activate_archive_delete(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory(preempt_grace_s=1.0)
    stubs = Stubs.connect(master.address)
    body = """
        import os, time
        print("run", os.environ["DET_RUN_ID"], flush=True)
        if os.environ["DET_RUN_ID"] == "1":
            time.sleep(300)  # ignores preemption: the master kills it after the grace period
    """
    md = _ok_dir(tmp_path, body)
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(exp.id)] == ["RUNNING"], 30, "running"
    )
    assert stubs.exp_state(exp.id) == "ACTIVE"
    stubs.action(exp.id, "pause")
    assert stubs.exp_state(exp.id) == "PAUSED"
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(exp.id)] == ["PAUSED"], 30, "trial paused"
    )
    stubs.action(exp.id, "activate")
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    assert t.run_id == 2 and t.restarts == 0  # a pause is not a failure

    # Misuse is FAILED_PRECONDITION naming the state; the master keeps serving.
    for action in ("pause", "activate"):
        with pytest.raises(grpc.RpcError) as ei:
            stubs.action(exp.id, action)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "COMPLETED" in ei.value.details()
    stubs.action(exp.id, "archive")
    assert stubs.experiment(exp.id).archived
    listed = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert exp.id not in [e.id for e in listed.experiments]
    stubs.action(exp.id, "unarchive")
    assert not stubs.experiment(exp.id).archived

    killed = stubs.create(single_config("python main.py"), md)
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(killed.id)] == ["RUNNING"], 30, "running"
    )
    with pytest.raises(grpc.RpcError) as ei:
        stubs.action(killed.id, "delete")
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ACTIVE" in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        stubs.action(killed.id, "archive")
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stubs.action(killed.id, "kill")
    assert stubs.wait_exp(killed.id, "CANCELED", timeout=30) == "CANCELED"
    assert [trial_state(t) for t in stubs.trials_of(killed.id)] == ["CANCELED"]

    canceled = stubs.create(single_config("python main.py"), md, activate=False)
    stubs.action(canceled.id, "cancel")
    assert stubs.exp_state(canceled.id) == "CANCELED"

    stubs.action(killed.id, "delete")
    with pytest.raises(grpc.RpcError) as ei:
        stubs.experiment(killed.id)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and str(killed.id) in ei.value.details()
    assert not (master.data_dir / "runs" / f"trial-{t.id + 1}").exists()
    _assert_serving(stubs)
    stubs.channel.close()


def test_trial_kill_lets_the_search_go_on(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    md = _ok_dir(
        tmp_path, "import time, os\nif os.environ['DET_TRIAL_ID'] == '1': time.sleep(300)\n"
    )
    cfg = single_config("python main.py")
    cfg["searcher"] = {
        "name": "random",
        "metric": "loss",
        "max_trials": 2,
        "max_concurrent_trials": 1,
        "max_length": 10,
    }
    cfg["hyperparameters"] = {"x": {"type": "int", "minval": 1, "maxval": 9}}
    exp = stubs.create(cfg, md)
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(exp.id)] == ["RUNNING"], 30, "first trial"
    )
    stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=1))
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    assert [trial_state(t) for t in stubs.trials_of(exp.id)] == ["CANCELED", "COMPLETED"]
    # Killing a trial that already ended is a no-op that answers its unchanged state.
    again = stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=1))
    assert trial_state(again.trial) == "CANCELED"
    assert [trial_state(t) for t in stubs.trials_of(exp.id)] == ["CANCELED", "COMPLETED"]


def test_master_restart_relaunches_running_trials(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    data_dir = tmp_path / "data"
    m1 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m1.address)
    md = _ok_dir(tmp_path, "import os, time\nif os.environ['DET_RUN_ID'] == '1': time.sleep(300)\n")
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(exp.id)] == ["RUNNING"], 30, "running"
    )
    stubs.channel.close()
    m1.stop()
    m2 = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(m2.address)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    assert t.run_id == 2 and t.restarts == 0
    stubs.channel.close()


# -- bad input -----------------------------------------------------------------------------------


def _tar(entries: list[tuple[str, bytes, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD = (
    "name: t\nentrypoint: python main.py\nsearcher: {name: single, metric: loss, max_length: 5}\n"
)


@pytest.mark.parametrize(
    ("config", "model", "code", "needle"),
    [
        ("", b"", grpc.StatusCode.INVALID_ARGUMENT, "config"),
        ("name: [unclosed", b"", grpc.StatusCode.INVALID_ARGUMENT, ""),
        ("- a\n- b\n", b"", grpc.StatusCode.INVALID_ARGUMENT, ""),
        (GOOD.replace("single", "bogus"), b"", grpc.StatusCode.INVALID_ARGUMENT, "searcher.name"),
        (
            "entrypoint: x\n"
            "searcher: {name: random, metric: loss, max_trials: -3, max_length: 5}\n",
            b"",
            grpc.StatusCode.INVALID_ARGUMENT,
            "searcher.max_trials",
        ),
        (
            GOOD + "resources: {slots_per_trial: 0}\n",
            b"",
            grpc.StatusCode.INVALID_ARGUMENT,
            "resources.slots_per_trial",
        ),
        (
            GOOD + "environment: {environment_variables: [FOO]}\n",
            b"",
            grpc.StatusCode.INVALID_ARGUMENT,
            "environment.environment_variables",
        ),
        (GOOD, b"not a tarball", grpc.StatusCode.INVALID_ARGUMENT, "model_definition"),
        (GOOD, _tar([("../evil.py", b"x", None)]), grpc.StatusCode.INVALID_ARGUMENT, "../evil.py"),
        (GOOD, _tar([("/etc/evil", b"x", None)]), grpc.StatusCode.INVALID_ARGUMENT, "/etc/evil"),
        (GOOD, _tar([("link", b"", b"/etc/passwd")]), grpc.StatusCode.INVALID_ARGUMENT, "link"),
        (
            GOOD,
            _tar([("big.bin", os.urandom(2048), None)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "model_definition",
        ),
    ],
)
def test_bad_create_requests_get_clear_errors(
    master_factory: Any, config: str, model: bytes, code: grpc.StatusCode, needle: str
) -> None:
    master = master_factory(max_model_bytes=1024)
    stubs = Stubs.connect(master.address)
    with pytest.raises(grpc.RpcError) as ei:
        stubs.experiments.CreateExperiment(
            experiment_pb2.CreateExperimentRequest(
                config=config, model_definition=model, activate=True
            )
        )
    assert ei.value.code() == code, ei.value.details()
    assert needle in ei.value.details()
    _assert_serving(stubs)
    listed = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest())
    assert list(listed.experiments) == []  # nothing half-created
    stubs.channel.close()


@pytest.mark.parametrize("exp_id", [0, 999])
def test_unknown_ids_are_not_found(stubs: Stubs, exp_id: int) -> None:
    calls = [
        lambda: stubs.experiment(exp_id),
        lambda: stubs.action(exp_id, "pause"),
        lambda: stubs.trial(exp_id),
        lambda: stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=exp_id)),
        lambda: stubs.experiments.ListExperimentTrials(
            experiment_pb2.ListExperimentTrialsRequest(experiment_id=exp_id)
        ),
        lambda: list(stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=exp_id))),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        assert str(exp_id) in ei.value.details()
    _assert_serving(stubs)


def test_bad_metric_and_log_requests(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    stubs.create(single_config("python main.py"), _ok_dir(tmp_path), activate=False)
    cases = [
        (
            pack_reports(999, "b", [("training", 1, {"a": 1.0}, 0.0)]),
            grpc.StatusCode.NOT_FOUND,
            "999",
        ),
        (
            trial_pb2.ReportMetricsRequest(trial_id=1, batch_id=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch_id",
        ),
        (
            pack_reports(1, "b", [("", 1, {}, 0.0)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "groups[0]",
        ),
        (
            pack_reports(1, "b", [("training", -1, {}, 0.0)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "steps_completed[0]",
        ),
        (
            trial_pb2.ReportMetricsRequest(
                trial_id=1, batch_id="b", groups=["training"], steps_completed=[1, 2]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "steps_completed: 2 entries for 1 reports",
        ),
        (
            trial_pb2.ReportMetricsRequest(
                trial_id=1,
                batch_id="b",
                groups=["training"],
                steps_completed=[1],
                timestamps=[0.0],
                metric_counts=[2],
                names=["a", "b"],
                values=[1.0],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "values: 1 entries for 2 names",
        ),
        (
            trial_pb2.ReportMetricsRequest(
                trial_id=1,
                batch_id="b",
                groups=["training"],
                steps_completed=[1],
                timestamps=[0.0],
                metric_counts=[2],
                names=["a", "a"],
                values=[1.0, 2.0],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "names a metric twice",
        ),
    ]
    for req, code, needle in cases:
        with pytest.raises(grpc.RpcError) as ei:
            stubs.trials.ReportMetrics(req)
        assert ei.value.code() == code and needle in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        list(stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=1, head=1, tail=1)))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_serving(stubs)


@pytest.mark.postgres
def test_experiment_runs_on_postgresql(
    master_factory: Any, pg_schema_url: str, tmp_path: pathlib.Path
) -> None:
    master = master_factory(db_url=pg_schema_url)
    stubs = Stubs.connect(master.address)
    info = stubs.master.GetMasterInfo(master_pb2.GetMasterInfoRequest())
    assert info.database == "postgresql"
    exp = stubs.create(single_config("python main.py"), _ok_dir(tmp_path))
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (t,) = stubs.trials_of(exp.id)
    lines = [
        x.message
        for p in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=t.id))
        for x in p.lines
    ]
    assert lines == ["hello from the trial"]
    stubs.channel.close()


def test_pause_while_the_last_trial_finishes_completes_the_experiment(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    """The searcher stops the trial; the user pauses; the trial then exits 0: COMPLETED."""
    master = master_factory(preempt_grace_s=30.0)
    stubs = Stubs.connect(master.address)
    gate = tmp_path / "gate"
    md = _ok_dir(
        tmp_path,
        f"""
        import pathlib, time
        import core_api
        with core_api.init() as ctx:
            for op in ctx.searcher.operations():
                ctx.train.report_validation_metrics(op.length, {{"loss": 1.0}})
                op.report_completed(1.0)
            while not pathlib.Path({str(gate)!r}).exists():
                time.sleep(0.02)
        """,
    )
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(lambda: stubs.trials_of(exp.id)[0].has_searcher_metric, 60, "op completed")
    stubs.action(exp.id, "pause")
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", "PAUSED") in ("COMPLETED", "PAUSED")
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    _assert_serving(stubs)
    stubs.channel.close()


def test_an_action_on_an_experiment_being_created_waits_for_its_registration(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    """A create stores its row outside the engine lock and registers the runtime after; an
    action that reaches the row in between waits for the registration (no INTERNAL, no lost
    action)."""
    store = master.parts["experiments"].state.store
    real_create = store.create_experiment
    seen: dict[str, Any] = {}

    def create_then_activate_at_once(new: Any) -> Any:
        exp = real_create(new)
        act = threading.Thread(
            target=lambda: seen.setdefault("activated", stubs.action(exp.id, "activate"))
        )
        act.start()
        act.join(timeout=1.0)  # bounded: it must still be waiting for the runtime
        seen["waited"] = act.is_alive()
        seen["thread"] = act
        return exp

    store.create_experiment = create_then_activate_at_once
    try:
        exp = stubs.create(single_config("python main.py"), _ok_dir(tmp_path), activate=False)
    finally:
        del store.create_experiment  # the instance attribute; the class method again
    seen["thread"].join(timeout=60)
    assert seen["waited"] is True
    assert common_pb2.ExperimentState.Name(seen["activated"].state) == "EXPERIMENT_STATE_ACTIVE"
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
