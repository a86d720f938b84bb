"""Fixtures for the SDK tests: one real master per module, trials that are small scripts.

The trial scripts talk to the master with the raw generated stubs (no Core API), so these tests
depend on the master's wire behaviour only. Experiments that tests only read are shared; tests
that change an experiment make their own.
"""

from __future__ import annotations

import os
import pathlib
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from determined_sdk import Determined, Experiment, RetryPolicy
from master_server.app import Master

REPO = pathlib.Path(__file__).resolve().parents[2]

# A trial that logs, reports training/validation metrics and checkpoints through the raw stubs.
# hparams: steps, lr, ckpt_every, sleep, ckpt_bytes.
TRAINER = """
import json, os, pathlib, sys, time, uuid
import grpc
from determined_sdk._transport import channel_from_env
from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import checkpoint_pb2, checkpoint_pb2_grpc, trial_pb2_grpc

info = json.loads(pathlib.Path(os.environ["DET_CLUSTER_INFO"]).read_text())
hp = info["hparams"]
tid = int(os.environ["DET_TRIAL_ID"])
ch = channel_from_env()
trials = trial_pb2_grpc.TrialServiceStub(ch)
ckpts = checkpoint_pb2_grpc.CheckpointServiceStub(ch)
storage = pathlib.Path(info["checkpoint_storage"]["path"])
lr = float(hp.get("lr", 0.1))
print(f"starting trial {tid} lr={lr}")
for step in range(1, int(hp.get("steps", 4)) + 1):
    steps = step * 10
    loss = 1.0 / (1.0 + lr * step)
    acc = 1.0 - loss
    print(f"step {step} loss={loss:.4f}")
    if step == 2:
        print("WARNING: loss plateau suspected")
        print("ERROR something odd on stderr", file=sys.stderr)
    trials.ReportMetrics(pack_reports(tid, uuid.uuid4().hex, [
        ("training", steps, {"loss": loss * 1.1}, time.time()),
        ("validation", steps, {"loss": loss, "accuracy": acc}, time.time()),
    ]))
    if step % int(hp.get("ckpt_every", 2)) == 0:
        u = str(uuid.uuid4())
        d = storage / u
        (d / "sub").mkdir(parents=True)
        (d / "model.bin").write_bytes(os.urandom(int(hp.get("ckpt_bytes", 3000))))
        (d / "sub" / "state.json").write_text(json.dumps({"step": step}))
        (d / "empty.txt").write_bytes(b"")
        res = {str(p.relative_to(d)): p.stat().st_size for p in d.rglob("*") if p.is_file()}
        ckpts.ReportCheckpoint(checkpoint_pb2.ReportCheckpointRequest(
            trial_id=tid, uuid=u, steps_completed=steps, resources=res,
            metadata_json=json.dumps({"step": step, "lr": lr})))
    time.sleep(float(hp.get("sleep", 0)))
print("done")
"""


def write_model(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def config(name: str = "sdk-test", **over: Any) -> dict[str, Any]:
    """A single-trial config running trainer.py."""
    cfg: dict[str, Any] = {
        "name": name,
        "entrypoint": ["python", "trainer.py"],
        "searcher": {
            "name": "single",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": {"batches": 100},
        },
        "max_restarts": 0,
        # Keep every checkpoint: the tests count and sort them (the default GC keeps few).
        "checkpoint_storage": {"save_trial_latest": 1000, "save_trial_best": 1000},
        "hyperparameters": {"steps": 4, "lr": 0.1, "ckpt_every": 2, "sleep": 0},
    }
    cfg.update(over)
    return cfg


class CallCounter(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Counts calls by method name; signals ``unavailable`` when a call fails UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.unavailable = threading.Event()

    def _record(self, details: Any) -> None:
        with self.lock:
            self.calls.append(details.method.rsplit("/", 1)[-1])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._record(details)
        resp = continuation(details, request)
        if resp.code() == grpc.StatusCode.UNAVAILABLE:
            self.unavailable.set()
        return resp

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._record(details)
        return continuation(details, request)

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return len(self.calls) if method is None else self.calls.count(method)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()


@pytest.fixture(scope="module")
def sdk_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """A master shared by one test module (SQLite in a temp dir, 2 slots)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    m = Master(tmp_path_factory.mktemp("master"), slots=2, preempt_grace_s=5.0).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def det(sdk_master: Master) -> Iterator[Determined]:
    with Determined(sdk_master.address) as d:
        yield d


@pytest.fixture
def counter() -> CallCounter:
    return CallCounter()


@pytest.fixture
def counted(sdk_master: Master, counter: CallCounter) -> Iterator[Determined]:
    """A client whose calls ``counter`` counts."""
    # Logged in up front, so the counts hold no lazy login.
    with Determined(sdk_master.address, "admin", "", interceptors=[counter]) as d:
        counter.reset()
        yield d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_model(tmp_path_factory.mktemp("model"), {"trainer.py": TRAINER})


@pytest.fixture(scope="module")
def make_experiment(det: Determined, model_dir: pathlib.Path) -> Callable[..., Experiment]:
    def make(activate: bool = True, **over: Any) -> Experiment:
        return det.create_experiment(config(**over), model_dir, activate=activate)

    return make


@pytest.fixture(scope="module")
def finished(make_experiment: Callable[..., Experiment]) -> Experiment:
    """A COMPLETED grid experiment: 2 trials (lr 0.1 and 0.5), 6 steps, 3 checkpoints each."""
    exp = make_experiment(
        name="finished",
        searcher={
            "name": "grid",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": {"batches": 100},
        },
        hyperparameters={
            "steps": 6,
            "ckpt_every": 2,
            "sleep": 0.01,
            "lr": {"type": "categorical", "vals": [0.1, 0.5]},
        },
    )
    state = exp.wait(interval=0.1, timeout=120)
    assert state.value == "COMPLETED", (state, exp.error)
    return exp


FAST_RETRY = RetryPolicy(attempts=5, initial_wait=0.01, max_wait=0.05)
