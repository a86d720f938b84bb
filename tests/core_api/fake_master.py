"""A small in-memory gRPC master for the Core API's unit tests.

It speaks the real wire (the generated servicers) on 127.0.0.1:<port 0>. Deprecated: only
``test_distributed.py`` and ``test_lightning.py`` still use it; the other Core API tests run
against the real master (the ``cluster_trial`` fixture) and inject faults with a client
interceptor (``tests/core_api/wire.py``). Delete this module once those two move too.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from determined_sdk.metrics_wire import unpack_reports
from determined_sdk.proto import (
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
)


@dataclass
class Fault:
    """Make the next ``count`` calls of ``method`` fail with ``code``.

    ``after=True`` runs the call first and then fails it (a lost reply).
    """

    method: str
    code: grpc.StatusCode
    count: int = 1
    after: bool = False


@dataclass
class FakeState:
    storage_path: str
    trial_id: int = 7
    experiment_id: int = 3
    batches: dict[str, list[tuple[str, int, dict[str, float], float]]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)
    early_exit: list[str] = field(default_factory=list)
    checkpoints: dict[str, checkpoint_pb2.Checkpoint] = field(default_factory=dict)
    ops: list[int] = field(default_factory=list)
    completed: list[tuple[int, float]] = field(default_factory=list)
    searcher_done: bool = False
    preempt: bool = False
    acks: int = 0
    exits: list[tuple[int, int, int]] = field(default_factory=list)
    unmanaged: list[tuple[str, str]] = field(default_factory=list)
    best: float | None = None
    faults: list[Fault] = field(default_factory=list)
    stopping: bool = False


class FakeMaster:
    """Start with :meth:`start`; ``state`` is what the trial reported; ``changed`` wakes waiters."""

    def __init__(self, storage_path: str) -> None:
        self.state = FakeState(storage_path=storage_path)
        self.lock = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        s = self
        trial_pb2_grpc.add_TrialServiceServicer_to_server(_Trials(s), self.server)
        checkpoint_pb2_grpc.add_CheckpointServiceServicer_to_server(_Ckpts(s), self.server)
        searcher_pb2_grpc.add_SearcherServiceServicer_to_server(_Searcher(s), self.server)
        experiment_pb2_grpc.add_ExperimentServiceServicer_to_server(_Exps(s), self.server)
        master_pb2_grpc.add_MasterServiceServicer_to_server(_Master(s), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeMaster:
        self.server.start()
        return self

    def stop(self) -> None:
        self.set(lambda st: setattr(st, "stopping", True))
        self.server.stop(0).wait()

    # -- helpers for tests ----------------------------------------------------------------
    def cluster_info(self, **over: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "master": self.address,
            "trial_id": self.state.trial_id,
            "experiment_id": self.state.experiment_id,
            "run_id": 1,
            "hparams": {"lr": 0.1},
            "latest_checkpoint": None,
            "checkpoint_storage": {"type": "shared_fs", "path": self.state.storage_path},
            "user_data": {},
            "trial_seed": 5,
            "slots_per_trial": 1,
            "experiment_config": {"searcher": {"max_length": {"unit": "batches", "value": 10}}},
        }
        info.update(over)
        return info

    def reports(self) -> list[tuple[str, int, dict[str, float], float]]:
        with self.lock:
            return [r for b in self.state.batches.values() for r in b]

    def set(self, fn: Callable[[FakeState], None]) -> None:
        with self.lock:
            fn(self.state)
            self.lock.notify_all()

    def wait(self, cond: Callable[[FakeState], bool], timeout: float = 10.0) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: cond(self.state), timeout):
                raise AssertionError("fake master: condition not reached")

    def handle(
        self, name: str, request: Any, context: grpc.ServicerContext, fn: Callable[[], Any]
    ) -> Any:
        with self.lock:
            self.state.calls.append((name, request))
            fault = next((f for f in self.state.faults if f.method == name and f.count > 0), None)
            if fault is not None:
                fault.count -= 1
            self.lock.notify_all()
        if fault is not None and not fault.after:
            context.abort(fault.code, f"injected {fault.code.name}")
        out = fn()
        with self.lock:
            self.lock.notify_all()
        if fault is not None:
            context.abort(fault.code, f"injected {fault.code.name} (after the call)")
        return out


class _Base:
    def __init__(self, m: FakeMaster) -> None:
        self.m = m


class _Trials(_Base, trial_pb2_grpc.TrialServiceServicer):
    def ReportMetrics(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                dup = request.batch_id in self.m.state.batches
                if not dup:
                    self.m.state.batches[request.batch_id] = [
                        (group, steps, dict(metrics), ts)
                        for group, steps, metrics, ts in unpack_reports(request)
                    ]
            return trial_pb2.ReportMetricsResponse(duplicate=dup)

        return self.m.handle("ReportMetrics", request, context, run)

    def ReportProgress(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.state.progress.append(request.progress)
            return trial_pb2.ReportProgressResponse()

        return self.m.handle("ReportProgress", request, context, run)

    def ReportEarlyExit(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.state.early_exit.append(request.reason)
            return trial_pb2.ReportEarlyExitResponse()

        return self.m.handle("ReportEarlyExit", request, context, run)

    def GetTrialContext(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            st = self.m.state
            return trial_pb2.GetTrialContextResponse(
                trial=trial_pb2.Trial(id=st.trial_id, experiment_id=st.experiment_id),
                experiment_config_json=json.dumps({"name": "x"}),
                checkpoint_storage_json=json.dumps({"type": "shared_fs", "path": st.storage_path}),
            )

        return self.m.handle("GetTrialContext", request, context, run)


class _Ckpts(_Base, checkpoint_pb2_grpc.CheckpointServiceServicer):
    def ReportCheckpoint(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            c = checkpoint_pb2.Checkpoint(
                uuid=request.uuid,
                trial_id=request.trial_id,
                steps_completed=request.steps_completed,
                resources=dict(request.resources),
                metadata_json=request.metadata_json,
                storage_json=json.dumps({"type": "shared_fs", "path": self.m.state.storage_path}),
            )
            with self.m.lock:
                self.m.state.checkpoints[request.uuid] = c
            return checkpoint_pb2.ReportCheckpointResponse(checkpoint=c)

        return self.m.handle("ReportCheckpoint", request, context, run)

    def GetCheckpoint(self, request: Any, context: Any) -> Any:
        with self.m.lock:
            c = self.m.state.checkpoints.get(request.uuid)
        if c is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"checkpoint {request.uuid} not found")
        return checkpoint_pb2.GetCheckpointResponse(checkpoint=c)

    def DeleteCheckpoints(self, request: Any, context: Any) -> Any:
        with self.m.lock:
            missing = [u for u in request.uuids if u not in self.m.state.checkpoints]
            if missing:
                context.abort(grpc.StatusCode.NOT_FOUND, f"checkpoint {missing[0]} not found")
            out = [self.m.state.checkpoints.pop(u) for u in request.uuids]
        return checkpoint_pb2.DeleteCheckpointsResponse(checkpoints=out)


class _Searcher(_Base, searcher_pb2_grpc.SearcherServiceServicer):
    def GetSearcherOperation(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                done_len = max((length for length, _ in self.m.state.completed), default=0)

                def ready() -> bool:
                    st = self.m.state
                    return st.stopping or st.searcher_done or any(op > done_len for op in st.ops)

                self.m.lock.wait_for(ready, request.timeout_seconds)
                st = self.m.state
                pending = [op for op in st.ops if op > done_len]
                if pending:
                    return searcher_pb2.GetSearcherOperationResponse(
                        has_op=True,
                        op=searcher_pb2.SearcherOperation(length=pending[0], unit="batches"),
                    )
                return searcher_pb2.GetSearcherOperationResponse(completed=st.searcher_done)

        return self.m.handle("GetSearcherOperation", request, context, run)

    def CompleteSearcherOperation(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.state.completed.append((request.length, request.searcher_metric))
            return searcher_pb2.CompleteSearcherOperationResponse()

        return self.m.handle("CompleteSearcherOperation", request, context, run)

    def WatchPreemption(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.lock.wait_for(
                    lambda: self.m.state.preempt or self.m.state.stopping,
                    request.timeout_seconds,
                )
                return searcher_pb2.WatchPreemptionResponse(preempt=self.m.state.preempt)

        return self.m.handle("WatchPreemption", request, context, run)

    def AckPreemption(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.state.acks += 1
            return searcher_pb2.AckPreemptionResponse()

        return self.m.handle("AckPreemption", request, context, run)


class _Exps(_Base, experiment_pb2_grpc.ExperimentServiceServicer):
    def CreateUnmanagedTrial(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            st = self.m.state
            with self.m.lock:
                st.unmanaged.append((request.config, request.hparams_json))
            return experiment_pb2.CreateUnmanagedTrialResponse(
                experiment=experiment_pb2.Experiment(id=st.experiment_id, unmanaged=True),
                trial=trial_pb2.Trial(
                    id=st.trial_id,
                    experiment_id=st.experiment_id,
                    hparams_json=request.hparams_json,
                    run_id=1,
                ),
            )

        return self.m.handle("CreateUnmanagedTrial", request, context, run)

    def GetBestSearcherValidation(self, request: Any, context: Any) -> Any:
        best = self.m.state.best
        return experiment_pb2.GetBestSearcherValidationResponse(
            has_value=best is not None, value=best or 0.0
        )


class _Master(_Base, master_pb2_grpc.MasterServiceServicer):
    def ReportTrialExit(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            with self.m.lock:
                self.m.state.exits.append((request.trial_id, request.run_id, request.exit_code))
            return master_pb2.ReportTrialExitResponse()

        return self.m.handle("ReportTrialExit", request, context, run)


def new_batch_id() -> str:
    return uuid.uuid4().hex
