"""DistributedContext collectives (TCP transport in threads, torch gloo in processes), sharded
checkpoints and rank-consistent preemption/searcher answers.

The preemption and searcher tests run the ranks (threads of this process) as the training code
of a real trial on a real master (``cluster_trial``); ``wire`` records the calls they make.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import core_api
from core_api import DistributedContext, PreemptMode
from core_api._checkpoint import CheckpointContext, SharedFSStorage
from core_api._preempt import PreemptContext
from tests.core_api.live_trial import LiveTrial
from tests.core_api.wire import Wire
from tests.support import Stubs, wait_for

Make = Callable[..., LiveTrial]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    size: int, fn: Callable[[DistributedContext], Any], local_size: int | None = None
) -> list[Any]:
    """Run ``fn`` on ``size`` ranks (threads over the TCP transport); results in rank order."""
    port = _free_port()
    local_size = local_size or size
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            dist = DistributedContext(
                rank=rank,
                size=size,
                local_rank=rank % local_size,
                local_size=local_size,
                cross_rank=rank // local_size,
                cross_size=size // local_size,
                chief_ip="127.0.0.1",
                port=port,
                connect_timeout=20,
            )
            try:
                results[rank] = fn(dist)
            finally:
                dist.close()
        except BaseException as exc:
            results[rank] = exc
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "rank hung"
    return results


def test_single_context() -> None:
    d = DistributedContext.single()
    assert (d.rank, d.size, d.local_rank, d.local_size, d.cross_rank, d.cross_size) == (
        0,
        1,
        0,
        1,
        0,
        1,
    )
    assert d.get_rank() == 0 and d.get_size() == 1 and d.is_chief
    assert d.broadcast(5) == 5 and d.gather(5) == [5] and d.allgather(5) == [5]
    assert d.broadcast_local(1) == 1 and d.gather_local(1) == [1] and d.allgather_local(1) == [1]


def test_bad_ranks_are_rejected() -> None:
    with pytest.raises(ValueError, match="rank"):
        DistributedContext(rank=2, size=2, local_rank=0, local_size=1, cross_rank=0, cross_size=1)


def test_tcp_collectives() -> None:
    def body(d: DistributedContext) -> Any:
        return {
            "bcast": d.broadcast(f"from {d.rank}"),
            "gather": d.gather(d.rank * 10),
            "allgather": d.allgather(d.rank),
            "bl": d.broadcast_local(d.rank),
            "gl": d.gather_local(d.rank),
            "al": d.allgather_local(d.rank),
        }

    out = run_ranks(4, body, local_size=2)
    for r, res in enumerate(out):
        assert not isinstance(res, BaseException), res
        assert res["bcast"] == "from 0"
        assert res["gather"] == ([0, 10, 20, 30] if r == 0 else None)
        assert res["allgather"] == [0, 1, 2, 3]
        node = r // 2
        assert res["bl"] == node * 2
        assert res["al"] == [node * 2, node * 2 + 1]
        assert res["gl"] == ([node * 2, node * 2 + 1] if r % 2 == 0 else None)


def test_sharded_checkpoint_merges_ranks(tmp_path: pathlib.Path) -> None:
    storage = SharedFSStorage(tmp_path)

    def body(d: DistributedContext) -> Any:
        ckpt = CheckpointContext(d, storage)
        with ckpt.store_path({"steps_completed": 7, f"rank{d.rank}": d.rank}, shard=True) as (
            p,
            sid,
        ):
            (p / f"shard-{d.rank}.bin").write_bytes(bytes([d.rank]) * (d.rank + 1))
            (p / "common.txt").write_text("same on every rank")
        return sid

    sids = run_ranks(3, body)
    assert len(set(sids)) == 1
    final = tmp_path / sids[0]
    files = sorted(p.name for p in final.iterdir())
    assert files == ["common.txt", "metadata.json", "shard-0.bin", "shard-1.bin", "shard-2.bin"]
    meta = json.loads((final / "metadata.json").read_text())
    assert meta == {"steps_completed": 7, "rank0": 0, "rank1": 1, "rank2": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_sharded_checkpoint_conflict_names_the_file(tmp_path: pathlib.Path) -> None:
    storage = SharedFSStorage(tmp_path)

    def body(d: DistributedContext) -> Any:
        ckpt = CheckpointContext(d, storage)
        with ckpt.store_path({"steps_completed": 1}, shard=True) as (p, _sid):
            (p / "model.pt").write_text(f"rank {d.rank}")

    out = run_ranks(2, body)
    for res in out:
        assert isinstance(res, ValueError)
        assert "'model.pt'" in str(res) and "different content" in str(res)


def test_sharded_metadata_conflict(tmp_path: pathlib.Path) -> None:
    storage = SharedFSStorage(tmp_path)

    def body(d: DistributedContext) -> Any:
        ckpt = CheckpointContext(d, storage)
        with ckpt.store_path({"steps_completed": d.rank}, shard=True):
            pass

    out = run_ranks(2, body)
    assert all(isinstance(r, ValueError) and "'steps_completed'" in str(r) for r in out)


def test_sharded_failure_on_one_rank_does_not_hang(tmp_path: pathlib.Path) -> None:
    storage = SharedFSStorage(tmp_path)

    def body(d: DistributedContext) -> Any:
        ckpt = CheckpointContext(d, storage)
        with ckpt.store_path({"steps_completed": 1}, shard=True):
            if d.rank == 1:
                raise OSError("disk full")

    out = run_ranks(2, body)
    assert isinstance(out[1], OSError)
    assert isinstance(out[0], RuntimeError) and "rank(s) [1]" in str(out[0])


def test_non_chief_unsharded_store_is_refused(tmp_path: pathlib.Path) -> None:
    storage = SharedFSStorage(tmp_path)

    def body(d: DistributedContext) -> Any:
        ckpt = CheckpointContext(d, storage)
        if d.rank == 1:
            with (
                pytest.raises(RuntimeError, match="chief"),
                ckpt.store_path({"steps_completed": 1}),
            ):
                pass
            return "refused"
        with ckpt.store_path({"steps_completed": 1}) as (_p, sid):
            pass
        return sid

    out = run_ranks(2, body)
    assert out[1] == "refused" and (tmp_path / out[0]).is_dir()


def test_preemption_answer_is_broadcast(cluster_trial: Make, stubs: Stubs, wire: Wire) -> None:
    t = cluster_trial()

    def body(d: DistributedContext) -> Any:
        with core_api.init(distributed=d) as ctx:
            # collective: every rank calls should_preempt() each time, and gets the same answer
            answers = [ctx.preempt.should_preempt()]  # nobody asked the trial to stop yet
            if d.is_chief:
                wire.wait_sent("WatchPreemption")  # the chief's watcher is in its long poll
                stubs.action(t.experiment_id, "pause")

            def ask() -> bool:
                answers.append(ctx.preempt.should_preempt())
                return answers[-1]

            wait_for(ask, 30, "the preemption signal")
            return answers

    out = run_ranks(3, body)
    assert out[0] == out[1] == out[2]
    assert out[0][0] is False and out[0][-1] is True
    # only the chief watches the master (one long poll, woken by the pause); it acknowledged once
    (watch,) = wire.requests("WatchPreemption")
    assert watch.trial_id == t.trial_id
    assert len(wire.calls("AckPreemption")) == 1
    assert wire.calls("AckPreemption")[0].code == grpc.StatusCode.OK
    # the master stopped the trial for a pause: its exit 0 leaves it PAUSED
    t.release()
    assert t.wait_settled() == "PAUSED"
    assert stubs.exp_state(t.experiment_id) == "PAUSED"


def test_chief_only_preempt_refuses_workers() -> None:
    def body(d: DistributedContext) -> Any:
        pre = PreemptContext(None, d, mode=PreemptMode.ChiefOnly)
        if d.rank == 0:
            return pre.should_preempt()
        with pytest.raises(RuntimeError, match="chief"):
            pre.should_preempt()
        return "refused"

    assert run_ranks(2, body) == [False, "refused"]


def test_searcher_ops_are_shared_with_workers(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[5, 9])

    def body(d: DistributedContext) -> Any:
        with core_api.init(distributed=d) as ctx:
            lengths = []
            for op in ctx.searcher.operations():
                lengths.append(op.length)
                ctx.train.report_training_metrics(op.length, {"rank": d.rank})
                if d.rank == 0:
                    op.report_completed(float(op.length))
                    if op.length == 9:
                        t.post({"type": "stop", "request_id": "r1"})  # the searcher is done
            return lengths

    assert run_ranks(2, body) == [[5, 9], [5, 9]]
    # only the chief reports: the master stored the chief's metrics and its two completions
    assert [(g, s, m) for g, s, m, _ in t.metrics()] == [
        ("training", 5, {"rank": 0.0}),
        ("training", 9, {"rank": 0.0}),
    ]
    completed = [(e["length"], e["metric"]) for e in t.events() if e["type"] == "validation"]
    assert completed == [(5, 5.0), (9, 9.0)]
    assert len(wire.calls("CompleteSearcherOperation")) == 2
    t.release()
    assert t.wait_settled() == "COMPLETED"  # stopped by the searcher, then exit 0


TORCH_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import torch.distributed as dist
    rank, size = int(sys.argv[1]), int(sys.argv[2])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(size))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    import core_api
    d = core_api.DistributedContext.from_torch_distributed()
    out = {
        "ranks": [d.rank, d.size, d.local_rank, d.local_size, d.cross_rank, d.cross_size],
        "bcast": d.broadcast({"v": rank}),
        "gather": d.gather(rank),
        "allgather": d.allgather(rank * 2),
        "al": d.allgather_local(rank),
    }
    print("RESULT " + json.dumps(out))
    d.close()
    dist.destroy_process_group()
    """
)


def test_from_torch_distributed(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "t.py"
    script.write_text(TORCH_SCRIPT)
    port = str(_free_port())
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", port],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    results = []
    for p, text in zip(procs, outs, strict=True):
        assert p.returncode == 0, text
        line = next(x for x in text.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    assert results[0]["ranks"] == [0, 2, 0, 2, 0, 1]
    assert results[1]["ranks"] == [1, 2, 1, 2, 0, 1]
    assert results[0]["bcast"] == results[1]["bcast"] == {"v": 0}
    assert results[0]["gather"] == [0, 1] and results[1]["gather"] is None
    assert results[0]["allgather"] == results[1]["allgather"] == [0, 2]
    assert results[0]["al"] == [0, 1]


def test_from_torch_distributed_requires_init() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedContext.from_torch_distributed()


def test_a_chief_searcher_failure_reaches_the_workers(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[5])

    def body(d: DistributedContext) -> Any:
        with core_api.init(distributed=d) as ctx:
            with pytest.raises(RuntimeError, match="report_completed"):
                for _op in ctx.searcher.operations():
                    pass  # never completed: the chief refuses to go on, and says so
            return "raised"

    assert run_ranks(2, body) == ["raised", "raised"]
    # the chief asked the master once (for the op of length 5), and never completed it
    (poll,) = wire.calls("GetSearcherOperation")
    assert poll.code == grpc.StatusCode.OK and poll.response.op.length == 5
    assert wire.calls("CompleteSearcherOperation") == []
    assert [e for e in t.events() if e["type"] == "validation"] == []
    assert t.state() == "RUNNING"
