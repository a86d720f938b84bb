"""Determined's Core API module surface on ``core_api``: names, arguments and bad input."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import core_api
import core_api as det
from core_api.launch import torch_distributed, wrap_rank
from master_server import supervisor
from tests.support import REPO


def test_determined_names_are_there() -> None:
    assert det.LOG_FORMAT == "%(levelname)s: [%(process)s] %(name)s: %(message)s"
    assert det.core.init is core_api.init
    assert det.core.DistributedContext is core_api.DistributedContext
    assert det.core.PreemptMode.WorkersAskChief is core_api.PreemptMode.WorkersAskChief
    assert {m.name for m in det.core.PreemptMode} == {
        "WorkersAskChief",
        "ChiefOnly",
        "WorkersAskMaster",
    }
    assert det.get_cluster_info() is None  # not in a trial
    assert det.core.DummyDistributedContext().size == 1


def test_init_takes_determineds_arguments(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DET_MASTER", raising=False)
    monkeypatch.delenv("DET_CLUSTER_INFO", raising=False)
    with det.core.init(
        distributed=det.core.DummyDistributedContext(),
        preempt_mode=det.core.PreemptMode.ChiefOnly,
        checkpoint_storage=str(tmp_path),
        tensorboard_mode=det.core.TensorboardMode.MANUAL,
        async_checkpointing=False,
    ) as ctx:
        assert ctx.mode == "off-cluster"


@pytest.mark.parametrize(
    ("kw", "word"),
    [({"preempt_mode": "chief"}, "preempt_mode"), ({"tensorboard_mode": 1}, "tensorboard_mode")],
)
def test_init_rejects_bad_modes(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        det.core.init(**kw)


def test_from_deepspeed_and_horovod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK"):
        det.core.DistributedContext.from_deepspeed()
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    ctx = det.core.DistributedContext.from_deepspeed()
    assert (ctx.rank, ctx.size, ctx.local_size, ctx.cross_size) == (0, 1, 1, 1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(RuntimeError, match="RANK must be an integer"):
        det.core.DistributedContext.from_deepspeed()
    hvd = types.SimpleNamespace(
        rank=lambda: 0,
        size=lambda: 1,
        local_rank=lambda: 0,
        local_size=lambda: 1,
        cross_rank=lambda: 0,
        cross_size=lambda: 1,
    )
    assert det.core.DistributedContext.from_horovod(hvd).is_chief


def test_from_torch_distributed_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        det.core.DistributedContext.from_torch_distributed()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert det.core.DistributedContext.from_torch_distributed().size == 1


def _py(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_wrap_rank_prefixes_lines_and_keeps_the_exit_code() -> None:
    done = _py(
        "-m", "core_api.launch.wrap_rank", "3", "--", sys.executable, "-c",
        "import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)",
    )  # fmt: skip
    assert done.returncode == 4
    assert done.stdout == "[rank=3] out\n" and done.stderr == "[rank=3] err\n"


def test_wrap_rank_bad_input() -> None:
    done = _py("-m", "core_api.launch.wrap_rank", "NO_SUCH_VAR_X", "true")
    assert done.returncode == 2 and "NO_SUCH_VAR_X" in done.stderr
    assert wrap_rank.main(["0"]) == 2


def test_torch_distributed_launcher_starts_one_rank_per_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"DET_SLOTS_PER_TRIAL": "2", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    code = (
        "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_PORT'])"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core_api.launch.torch_distributed",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert [x.split()[:3] for x in lines] == [["[rank=0]", "0", "2"], ["[rank=1]", "1", "2"]]
    monkeypatch.setenv("DET_SLOTS_PER_TRIAL", "zero")
    with pytest.raises(ValueError, match="DET_SLOTS_PER_TRIAL"):
        torch_distributed.slots()
    assert torch_distributed.main([]) == 2


def test_supervisor_runs_launchers_once_and_reads_rank_prefixes() -> None:
    argv = ["python3", "-m", "determined.launch.torch_distributed", "python3", "t.py"]
    assert supervisor.launcher_argv(argv) == [
        "python3",
        "-m",
        "core_api.launch.torch_distributed",
        "python3",
        "t.py",
    ]
    assert supervisor.launcher_argv(["python3", "t.py"]) is None
    assert supervisor.split_rank("[rank=7] hello", 0) == (7, "hello")
    assert supervisor.split_rank("[rank=x] hello", 0) == (0, "[rank=x] hello")


def test_packages_load_their_names_on_first_use_and_keep_every_name() -> None:
    """``import core_api`` / ``import determined_sdk`` load neither gRPC nor protobuf; every
    public name still resolves (to the object its module defines), and ``dir()`` lists it."""
    code = """
import sys
import core_api, determined_sdk, master_server.supervisor
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "google"))
assert not heavy, heavy
assert "determined_sdk._client" not in sys.modules
for pkg in (core_api, determined_sdk):
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
        assert name in dir(pkg), name
import core_api._context, determined_sdk._client
assert core_api.init is core_api._context.init
assert core_api.core.init is core_api.init
assert determined_sdk.Determined is determined_sdk._client.Determined
assert determined_sdk.client.__name__ == "determined_sdk.client"
try:
    core_api.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
