"""The Ray backend end to end: a real master on a real two-node Ray cluster on loopback.

Trials are real processes placed by Ray (one rank actor per slot). The node-loss test keeps its
checkpoints on a real S3-compatible server on loopback (moto), as a multi-node cluster would;
the others use the master's shared directory (every node of the test cluster is on this
machine). Where a rank ran is read from what it printed: its cluster info names its Ray node
(``agent_id``).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from determined_sdk import checkpoint_storage as cs
from determined_sdk.proto import checkpoint_pb2, logs_pb2, trial_pb2
from master_server.app import Master, RaySettings
from tests.master_server.rm.conftest import RayCluster
from tests.s3_server import MotoServer
from tests.support import Stubs, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

# Prints its Ray node, waits (deadline-bounded) until BARRIER trials have started, then
# reports a tiny objective. Four trials at once on two nodes of two CPUs use both nodes.
SEARCH_TRIAL = """
    import os, pathlib, time
    import core_api

    info = core_api.get_cluster_info()
    print(f"node {info.agent_id}", flush=True)
    d = pathlib.Path(BARRIER_DIR)
    (d / str(info.trial.trial_id)).touch()
    deadline = time.monotonic() + 120
    while len(list(d.iterdir())) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    x = float(info.trial.hparams["x"])
    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            ctx.train.report_validation_metrics(op.length, {"loss": (x - 0.3) ** 2})
            op.report_completed((x - 0.3) ** 2)
"""

# Two ranks: torch.distributed over gloo, one all-reduce of (rank + 1).
ALLREDUCE_TRIAL = """
    import os
    import torch
    import torch.distributed as dist
    import core_api

    info = core_api.get_cluster_info()
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    print(f"rank {dist.get_rank()} of {dist.get_world_size()} node {info.agent_id} "
          f"sum {t.item()}", flush=True)
    with core_api.init(distributed=core_api.DistributedContext.from_torch_distributed()) as ctx:
        for op in ctx.searcher.operations():
            if ctx.distributed.rank == 0:
                ctx.train.report_validation_metrics(op.length, {"loss": t.item()})
                op.report_completed(t.item())
    dist.destroy_process_group()
"""

# Trains 6 steps with a checkpoint after each; run 1 stops after step 3 and waits for a gate
# that never comes (its node is removed meanwhile).
RESUME_TRIAL = """
    import json, pathlib, time
    import core_api

    info = core_api.get_cluster_info()
    print(f"node {info.agent_id} run {info.trial.run_id}", flush=True)
    with core_api.init() as ctx:
        start = 0
        if info.latest_checkpoint:
            with ctx.checkpoint.restore_path(info.latest_checkpoint) as path:
                start = json.loads((path / "state.json").read_text())["step"]
            print(f"resumed at step {start}", flush=True)
        for step in range(start + 1, 7):
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
            with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _):
                (path / "state.json").write_text(json.dumps({"step": step}))
            if step == 3 and info.trial.run_id == 1:
                print("waiting at step 3", flush=True)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    time.sleep(0.05)
                raise SystemExit("the node was never removed")
        ctx.train.report_validation_metrics(6, {"loss": 1.0 / 6})
        for op in ctx.searcher.operations():
            op.report_completed(1.0 / 6)
"""

# Trains until a gate file exists (the master restarts meanwhile).
GATED_TRIAL = """
    import pathlib, time
    import core_api

    gate = pathlib.Path(GATE)
    with core_api.init() as ctx:
        step = 0
        deadline = time.monotonic() + 300
        while not gate.exists() and time.monotonic() < deadline:
            step += 1
            print(f"step {step}", flush=True)
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
            time.sleep(0.1)
        for op in ctx.searcher.operations():
            ctx.train.report_validation_metrics(step, {"loss": 1.0})
            op.report_completed(1.0)
"""


def _config(searcher: dict[str, Any], **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "ray",
        "entrypoint": "python3 train.py",
        "searcher": searcher,
        "max_restarts": 0,
        "hyperparameters": {"x": 0.5},
    }
    cfg.update(over)
    return cfg


def _single(**over: Any) -> dict[str, Any]:
    return _config({"name": "single", "metric": "loss", "max_length": {"batches": 2}}, **over)


def _lines(stubs: Stubs, trial_id: int) -> list[str]:
    req = logs_pb2.TrialLogsRequest(trial_id=trial_id)
    return [x.message for page in stubs.logs.TrialLogs(req) for x in page.lines]


def _node_ids(cluster: RayCluster) -> dict[str, str]:
    head, worker = cluster.cluster.head_node, cluster.worker
    return {head.node_id: "head", worker.node_id: "worker"}


@pytest.fixture
def ray_master(ray_cluster: RayCluster, tmp_path: pathlib.Path) -> Iterator[Callable[..., Master]]:
    """Start in-process masters with the Ray backend (stopped, runs and all, at teardown)."""
    started: list[Master] = []

    def make(**ray_kw: Any) -> Master:
        ray_kw.setdefault("placement_strategy", "SPREAD")
        settings = RaySettings(
            address=ray_cluster.address, run_root=str(tmp_path / "runs"), **ray_kw
        )
        m = Master(tmp_path / "data", resource_manager="ray", ray=settings).start()
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


def test_random_search_of_8_trials_runs_on_both_nodes(
    ray_master: Callable[..., Master], ray_cluster: RayCluster, tmp_path: pathlib.Path
) -> None:
    master = ray_master()
    # Two nodes of two CPUs (nodes other tests added may take a moment to be seen gone).
    wait_for(lambda: master.parts["rm"].total_slots == 4, 120, "the two nodes' four slots")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    md = write_model_dir(
        tmp_path / "model",
        {"train.py": SEARCH_TRIAL.replace("BARRIER_DIR", repr(str(barrier)))},
    )
    stubs = Stubs.connect(master.address)
    searcher = {
        "name": "random",
        "metric": "loss",
        "max_trials": 8,
        "max_length": {"batches": 2},
        "max_concurrent_trials": 8,
    }
    hp = {"x": {"type": "double", "minval": 0.0, "maxval": 1.0}}
    exp = stubs.create(_config(searcher, hyperparameters=hp), md)
    stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=300)
    trials = stubs.trials_of(exp.id)
    failed = {t.id: _lines(stubs, t.id) for t in trials if trial_state(t) != "COMPLETED"}
    assert not failed
    names = _node_ids(ray_cluster)
    nodes = set()
    for t in trials:
        (line,) = [x for x in _lines(stubs, t.id) if x.startswith("node ")]
        nodes.add(names[line.split()[1]])
    assert nodes == {"head", "worker"}


def test_a_two_slot_trial_has_one_rank_on_each_node_and_its_all_reduce_is_right(
    ray_master: Callable[..., Master], ray_cluster: RayCluster, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("torch")
    master = ray_master()
    md = write_model_dir(tmp_path / "model", {"train.py": ALLREDUCE_TRIAL})
    stubs = Stubs.connect(master.address)
    exp = stubs.create(_single(resources={"slots_per_trial": 2}), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=300) == "COMPLETED"
    (trial,) = stubs.trials_of(exp.id)
    lines = sorted(x for x in _lines(stubs, trial.id) if x.startswith("rank "))
    assert len(lines) == 2, lines
    names = _node_ids(ray_cluster)
    placed = {int(x.split()[1]): names[x.split()[5]] for x in lines}
    assert sorted(placed.values()) == ["head", "worker"]
    assert all(x.split()[3] == "2" and x.split()[7] == "3.0" for x in lines), lines


def test_losing_the_node_restarts_the_trial_from_its_latest_checkpoint(
    ray_master: Callable[..., Master],
    ray_cluster: RayCluster,
    tmp_path: pathlib.Path,
    s3_server: MotoServer,
    s3_bucket: str,
) -> None:
    # Its own worker nodes in pool "flaky", so the session's two nodes stay as they are.
    doomed = ray_cluster.add_node(**{"det-pool-flaky": 1})
    spare = None
    try:
        master = ray_master()
        md = write_model_dir(tmp_path / "model", {"train.py": RESUME_TRIAL})
        stubs = Stubs.connect(master.address)
        storage = {"type": "s3", "bucket": s3_bucket, "endpoint_url": s3_server.endpoint_url}
        exp = stubs.create(
            _single(
                resources={"resource_pool": "flaky"}, max_restarts=2, checkpoint_storage=storage
            ),
            md,
        )
        (trial,) = wait_for(lambda: stubs.trials_of(exp.id), 60, "the trial")
        wait_for(lambda: "waiting at step 3" in _lines(stubs, trial.id), 180, "three steps trained")
        assert f"node {doomed.node_id} run 1" in _lines(stubs, trial.id)
        spare = ray_cluster.add_node(**{"det-pool-flaky": 1})
        ray_cluster.remove_node(doomed)
        doomed = None
        assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=300) == "COMPLETED"
        t = stubs.trial(trial.id)
        assert (trial_state(t), t.run_id, t.restarts) == ("COMPLETED", 2, 1)
        lines = _lines(stubs, trial.id)
        assert f"node {spare.node_id} run 2" in lines
        assert "resumed at step 3" in lines
        # The checkpoint it resumed from came from the bucket, where every checkpoint is.
        ckpts = stubs.checkpoints.ListCheckpoints(
            checkpoint_pb2.ListCheckpointsRequest(trial_id=trial.id)
        ).checkpoints
        assert ckpts
        for c in ckpts:
            assert json.loads(c.storage_json)["type"] == "s3", c.storage_json
            assert "state.json" in cs.from_config(json.loads(c.storage_json)).list_files(c.uuid)
    finally:
        for node in (doomed, spare):
            if node is not None:
                ray_cluster.remove_node(node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(stubs: Stubs) -> bool:
    try:
        stubs.trial(1)
        return True
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.NOT_FOUND


def test_a_restarted_master_adopts_the_ray_placed_runs(
    ray_cluster: RayCluster, tmp_path: pathlib.Path
) -> None:
    port, data = _free_port(), tmp_path / "data"
    argv = [
        sys.executable,
        "-m",
        "master_server",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--resource-manager",
        "ray",
        "--ray-address",
        ray_cluster.address,
        "--ray-placement-strategy",
        "SPREAD",
        "--ray-run-root",
        str(tmp_path / "runs"),
    ]
    log = (tmp_path / "master.log").open("ab")
    procs: list[subprocess.Popen[bytes]] = []

    def connect() -> Stubs | None:
        assert procs[-1].poll() is None, "the master exited; see master.log"
        try:
            return Stubs.connect(f"127.0.0.1:{port}")
        except grpc.RpcError as e:
            # Just after a kill -9 a connection can land on the dead master's closing socket.
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None

    def start() -> Stubs:
        procs.append(subprocess.Popen(argv, stderr=log))
        stubs: Stubs = wait_for(connect, 120, "the master to accept a login")
        wait_for(lambda: _serving(stubs), 120, "the master to serve")
        return stubs

    gate = tmp_path / "gate"
    md = write_model_dir(
        tmp_path / "model", {"train.py": GATED_TRIAL.replace("GATE", repr(str(gate)))}
    )
    try:
        stubs = start()
        exp = stubs.create(_single(resources={"slots_per_trial": 2}), md)
        wait_for(lambda: "step 5" in _lines(stubs, 1), 180, "the trial to train")
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(timeout=60)
        stubs = start()
        t = stubs.trial(1)
        assert (trial_state(t), t.run_id, t.restarts) == ("RUNNING", 1, 0)
        seen = len(_lines(stubs, 1))
        wait_for(lambda: len(_lines(stubs, 1)) > seen + 5, 120, "log lines after adoption")
        gate.touch()
        assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=180) == "COMPLETED"
        t = stubs.trial(1)
        assert (t.run_id, t.restarts) == (1, 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=60)
            if p.poll() is None:
                p.kill()
        log.close()


def test_a_trial_queued_for_a_pool_starts_when_a_node_of_that_pool_joins(
    ray_master: Callable[..., Master], ray_cluster: RayCluster, tmp_path: pathlib.Path
) -> None:
    master = ray_master()
    md = write_model_dir(tmp_path / "model", {"train.py": RESUME_TRIAL})
    stubs = Stubs.connect(master.address)
    exp = stubs.create(_single(resources={"resource_pool": "late"}), md)
    (trial,) = wait_for(lambda: stubs.trials_of(exp.id), 60, "the trial")
    assert trial_state(stubs.trial(trial.id)) == "QUEUED"  # no node is in pool "late" yet
    node = ray_cluster.add_node(**{"det-pool-late": 1})
    try:
        wait_for(lambda: "waiting at step 3" in _lines(stubs, trial.id), 180, "the trial to run")
        assert f"node {node.node_id} run 1" in _lines(stubs, trial.id)
        stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=trial.id))
        assert stubs.wait_exp(exp.id, "CANCELED", "COMPLETED", "ERROR", timeout=120)
    finally:
        ray_cluster.cluster.remove_node(node)
