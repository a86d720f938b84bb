"""The master at scale: thousands of waiting trials cost no threads, and callers still get answers.

Each simulated trial is a real unmanaged trial of a real master holding the preemption long poll a
real trial holds. With a thread per waiting caller (the old synchronous server had 128), the SDK
call below would queue behind the polls until they time out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import determined_sdk
from determined_sdk import RetryPolicy
from determined_sdk._experiment import SummaryPage, _summary_message
from determined_sdk.errors import ResourceExhaustedError
from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import experiment_pb2, master_pb2, searcher_pb2, trial_pb2
from master_server.admission import RETRY_AFTER_KEY
from master_server.app import Master
from master_server.domain import MetricReport
from tests.support import REPO, Stubs, single_config, wait_for

WAITERS = 2000


# Run in a process of its own (as trials are): grpc.aio wants one event loop per process.
_WAITERS_SCRIPT = """
import asyncio, sys
import grpc
from determined_sdk.proto import searcher_pb2, searcher_pb2_grpc

async def main(address, token, ids):
    auth = (("authorization", "Bearer " + token),)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = searcher_pb2_grpc.SearcherServiceStub(ch)

        async def poll(tid):
            try:
                r = await stub.WatchPreemption(
                    searcher_pb2.WatchPreemptionRequest(trial_id=tid, timeout_seconds=120),
                    timeout=150,
                    metadata=auth,
                )
                out = str(r.preempt)
            except grpc.aio.AioRpcError as e:
                out = e.code().name + ":" + (e.details() or "").replace(" ", "_")
            print(tid, out, flush=True)

        await asyncio.gather(*(poll(t) for t in ids))

asyncio.run(main(sys.argv[1], sys.argv[2], [int(x) for x in sys.stdin.read().split()]))
"""


class _Waiters:
    """A process holding one preemption long poll per trial; collects how each one ended."""

    def __init__(self, address: str, token: str, trial_ids: list[int]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WAITERS_SCRIPT, address, token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, trial_ids)))
        self.proc.stdin.close()
        self.ended: dict[int, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            tid, how = line.split(maxsplit=1)
            self.ended[int(tid)] = how.strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.mark.slow
def test_2000_waiting_trials_leave_the_master_answering(master: Master, stubs: Stubs) -> None:
    exps = master.parts["experiments"]
    _, first = exps.create_unmanaged_trial("name: waiters", {}, 0, 0)
    trial_ids = [first.id]
    trial_ids += [
        exps.create_unmanaged_trial("", {}, first.experiment_id, 0)[1].id
        for _ in range(WAITERS - 1)
    ]
    token = stubs.master.Login(master_pb2.LoginRequest(username="admin", password="")).token
    waiters = _Waiters(master.address, token, trial_ids)
    try:
        _check_master_answers(master, stubs, waiters, first.experiment_id, trial_ids)
    finally:
        waiters.stop()


def _check_master_answers(
    master: Master, stubs: Stubs, waiters: _Waiters, exp_id: int, trial_ids: list[int]
) -> None:
    waker = master.parts["waker"]
    wait_for(lambda: waker.waiting >= WAITERS, 120, f"{WAITERS} long polls parked on the master")
    assert waiters.ended == {}

    # SDK calls and a metric report answer at once.
    client = determined_sdk.Determined(master=master.address)
    t0 = time.perf_counter()
    exp = client.get_experiment(exp_id)
    assert exp.id == exp_id
    listed = client.list_experiments()
    sdk_s = time.perf_counter() - t0
    assert sdk_s < 1.0, f"SDK calls took {sdk_s:.2f} s with {WAITERS} waiting trials"
    assert any(e.id == exp_id for e in listed)
    t0 = time.perf_counter()
    resp = stubs.trials.ReportMetrics(
        pack_reports(trial_ids[7], "b-1", [("training", 1, {"loss": 0.5}, time.time())]),
        timeout=5,
    )
    assert not resp.duplicate and time.perf_counter() - t0 < 1.0

    # A kill wakes that trial's poll (and only that one's answer says preempt).
    stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=trial_ids[3]))
    wait_for(lambda: trial_ids[3] in waiters.ended, 10, "the killed trial's poll to return")
    assert waiters.ended == {trial_ids[3]: "True"}

    # Stopping the master ends the rest: none is left hanging.
    master.stop()
    wait_for(lambda: len(waiters.ended) == WAITERS, 60, "every poll to end with the master")
    assert {how.split(":")[0] for how in waiters.ended.values()} <= {
        "True",
        "False",
        "UNAVAILABLE",
        "CANCELLED",
    }


def test_lists_send_summaries_and_the_sdk_fetches_a_config_when_read(
    master: Master, stubs: Stubs
) -> None:
    config = single_config("python main.py", name="listed")
    exp = stubs.create(config, activate=False)
    req = experiment_pb2.ListExperimentsRequest()
    (summary,) = stubs.experiments.ListExperiments(req).experiments
    assert summary.summary and summary.config_json == "" and summary.original_config == ""
    assert (summary.id, summary.name, summary.state) == (exp.id, "listed", exp.state)
    (full,) = stubs.experiments.ListExperiments(
        experiment_pb2.ListExperimentsRequest(full=True)
    ).experiments
    assert full == exp  # every field, configs included
    # A summary is the full message without its configs, every other field alike, including
    # the rarely set ones.
    other = stubs.create(single_config("python main.py", name="other"), activate=False)
    stubs.experiments.PatchExperiment(
        experiment_pb2.PatchExperimentRequest(
            experiment_id=other.id, description="d", notes="n", add_labels=["x", "y"]
        )
    )
    stubs.action(other.id, "cancel")
    stubs.wait_exp(other.id, "CANCELED")  # ended: an end_time, and it may be archived
    stubs.action(other.id, "archive")
    req = experiment_pb2.ListExperimentsRequest(include_archived=True, sort_by="name")
    summaries = stubs.experiments.ListExperiments(req).experiments
    req.full = True
    fulls = stubs.experiments.ListExperiments(req).experiments
    assert [e.name for e in fulls] == ["listed", "other"]
    assert fulls[1].archived and fulls[1].notes == "n" and list(fulls[1].labels) == ["x", "y"]
    assert fulls[1].end_time > 0 and fulls[1].description == "d" and fulls[1].username
    for s, f in zip(summaries, fulls, strict=True):
        stripped = experiment_pb2.Experiment()
        stripped.CopyFrom(f)
        stripped.config_json, stripped.original_config, stripped.summary = "", "", True
        assert s == stripped
    # Columns (what the SDK asks for) carry the same summaries; a field that every row has
    # at its default comes with no entries.
    req.full, req.columnar = False, True
    reply = stubs.experiments.ListExperiments(req)
    assert not reply.experiments and len(reply.columns.notes) == 2
    page = SummaryPage(reply.columns)
    assert [_summary_message(page.row(i)) for i in range(page.size)] == list(summaries)
    req.name = "listed"
    cols = stubs.experiments.ListExperiments(req).columns
    assert len(cols.id) == 1 and not (cols.notes or cols.description or cols.end_time)
    assert _summary_message(SummaryPage(cols).row(0)) == summaries[0]

    client = determined_sdk.Determined(master=master.address)
    (listed,) = client.list_experiments()
    assert listed.hydrated  # its message is built from its row when first read
    assert listed.name == "listed" and listed.labels == set() and listed.end_time is None
    assert listed.username == summaries[0].username and listed.state.value == "PAUSED"
    (again,) = client.list_experiments()
    again.set_description("new")  # a setter on a listed object updates what it reads next
    assert (again.description, again.name) == ("new", "listed")
    (third,) = client.list_experiments()
    stubs.experiments.PatchExperiment(
        experiment_pb2.PatchExperimentRequest(experiment_id=exp.id, description="changed")
    )
    assert third.description == "new"  # cached, as listed
    third.reload()
    assert third.description == "changed" and third.name == "listed"
    # Every attribute read from a listed row is what a fetched experiment says.
    attrs = (
        *("name", "username", "description", "labels", "notes", "state", "progress"),
        *("archived", "project_id", "workspace_id", "start_time", "end_time"),
        *("searcher_name", "num_trials", "unmanaged", "error"),
    )
    for e in client.list_experiments(include_archived=True):
        got = client.get_experiment(e.id)
        assert {a: getattr(e, a) for a in attrs} == {a: getattr(got, a) for a in attrs}
    assert listed.config["name"] == "listed"  # fetched on first read
    assert listed.original_config == exp.original_config
    assert client.get_experiment(exp.id).config == listed.config


def test_a_busy_master_refuses_with_a_retry_hint_and_still_answers_health(
    master_factory: Callable[..., Master],
) -> None:
    # A queue bound of 0 makes every ordinary call find the queue full: the refusal path.
    master = master_factory(max_queued_calls=0)
    stubs = Stubs.connect(master.address, token="")  # a login would be refused too
    try:
        with pytest.raises(grpc.RpcError) as e:
            stubs.experiments.GetExperiment(experiment_pb2.GetExperimentRequest(experiment_id=1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in e.value.details()
        assert dict(e.value.trailing_metadata())[RETRY_AFTER_KEY] == "500"
        health = health_pb2_grpc.HealthStub(stubs.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        # Long polls wait on the event loop, not in the queue: still admitted.
        resp = stubs.searcher.WatchPreemption(
            searcher_pb2.WatchPreemptionRequest(trial_id=424242, timeout_seconds=1)
        )
        pytest.fail(f"an anonymous poll answered {resp}")
    except grpc.RpcError as e:
        # Admitted, then refused by authentication (this channel carries no token).
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stubs.channel.close()
    assert master.parts["admission"].refused == 1

    # The SDK retries a refusal (nothing was done) and then says what happened.
    client = determined_sdk.Determined(
        master=master.address, retry=RetryPolicy(attempts=2, initial_wait=0.01)
    )
    with pytest.raises(ResourceExhaustedError, match="busy"):
        client.get_experiment(1)
    assert master.parts["admission"].refused == 3


def test_a_cancelled_report_does_not_stop_the_metric_writer(master: Master) -> None:
    exps = master.parts["experiments"]
    _, trial = exps.create_unmanaged_trial("name: cancelled", {}, 0, 0)
    ingest = master.parts["ingest"]
    rep = [MetricReport("training", 1, {"loss": 1.0}, 0.0)]
    # Holding the ingest's lock keeps the writer from taking the batch until it is cancelled
    # (as a ReportMetrics call whose deadline passed cancels its future).
    with ingest._cond:
        gone = ingest.submit(trial.id, "b-cancelled", rep, 1)
        assert gone.cancel()
    after = ingest.submit(trial.id, "b-after", [MetricReport("training", 2, {"loss": 0.5}, 0.0)], 1)
    assert after.result(timeout=30) is True  # the writer lives on
    steps = [
        p.steps_completed for page in master.parts["store"].iter_metrics([trial.id]) for p in page
    ]
    assert steps == [1, 2]  # the cancelled caller's batch is stored too (its retry is a no-op)


_FOLLOWERS_SCRIPT = """
import asyncio, sys
import grpc
from determined_sdk.proto import trial_pb2, trial_pb2_grpc

async def main(address, token, trial_id, n):
    auth = (("authorization", "Bearer " + token),)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = trial_pb2_grpc.TrialServiceStub(ch)

        async def follow():
            req = trial_pb2.StreamMetricsRequest(
                trial_ids=[trial_id], follow=True, columnar=True, page_size=1
            )
            steps = []
            async for page in stub.StreamMetrics(req, timeout=120, metadata=auth):
                steps.extend(page.columns.steps_completed)
            return steps

        for steps in await asyncio.gather(*(follow() for _ in range(n))):
            print(",".join(map(str, steps)), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def test_metric_followers_hold_no_thread(master_factory: Callable[..., Master]) -> None:
    # Four threads for ordinary calls and four times as many followers of a live trial: with a
    # thread per follower, the SDK call below would wait for the trial to end.
    master = master_factory(max_workers=4)
    followers = 16
    stubs = Stubs.connect(master.address)
    try:
        exps = master.parts["experiments"]
        _, trial = exps.create_unmanaged_trial("name: followed", {}, 0, 0)
        stubs.trials.ReportMetrics(
            pack_reports(trial.id, "b-1", [("training", 1, {"loss": 1.0}, time.time())])
        )
        token = stubs.master.Login(master_pb2.LoginRequest(username="admin", password="")).token
        args = [master.address, token, str(trial.id), str(followers)]
        proc = subprocess.Popen(
            [sys.executable, "-c", _FOLLOWERS_SCRIPT, *args],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        try:
            waker = master.parts["metrics"].waker
            wait_for(lambda: waker.waiting >= followers, 60, f"{followers} followers parked")
            t0 = time.perf_counter()
            got = stubs.trials.GetTrial(trial_pb2.GetTrialRequest(trial_id=trial.id), timeout=5)
            assert got.trial.id == trial.id
            assert time.perf_counter() - t0 < 1.0, "a call waited behind the followers"

            # New points reach every follower (a page of one point each: the page size is
            # 1); the trial's end ends every stream.
            stubs.trials.ReportMetrics(
                pack_reports(
                    trial.id,
                    "b-2",
                    [("training", s, {"loss": 1.0 / s}, time.time()) for s in (2, 3, 4)],
                )
            )
            stubs.master.ReportTrialExit(
                master_pb2.ReportTrialExitRequest(trial_id=trial.id, run_id=1, exit_code=0)
            )
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(30)
        assert proc.returncode == 0
        assert out.splitlines() == ["1,2,3,4"] * followers
        assert waker.waiting == 0
    finally:
        stubs.channel.close()
