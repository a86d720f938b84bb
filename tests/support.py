"""Test helpers: raw stubs for a real master, model dirs, configs, and deadline-bounded waits.

Helpers wait on conditions with deadlines; none of them sleeps as synchronization.
"""

from __future__ import annotations

import pathlib
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import yaml

from determined_sdk._transport import BearerToken, make_channel, parse_master
from determined_sdk.model_dir import pack_model_dir
from determined_sdk.proto import (
    checkpoint_pb2_grpc,
    common_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    logs_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    model_pb2_grpc,
    searcher_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
    workspace_pb2_grpc,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``cond`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last: T | None = None
    while time.monotonic() < deadline:
        got = last = cond()
        if got:
            return got
        time.sleep(delay)  # polling interval of a deadline-bounded wait, not synchronization
        delay = min(delay * 2, 0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Stubs:
    """Raw gRPC stubs for one master."""

    channel: grpc.Channel
    experiments: experiment_pb2_grpc.ExperimentServiceStub
    trials: trial_pb2_grpc.TrialServiceStub
    checkpoints: checkpoint_pb2_grpc.CheckpointServiceStub
    searcher: searcher_pb2_grpc.SearcherServiceStub
    logs: logs_pb2_grpc.LogServiceStub
    workspaces: workspace_pb2_grpc.WorkspaceServiceStub
    models: model_pb2_grpc.ModelServiceStub
    master: master_pb2_grpc.MasterServiceStub

    @classmethod
    def connect(
        cls, address: str, *, username: str = "admin", password: str = "", token: str | None = None
    ) -> Stubs:
        """Raw stubs logged in as ``username`` (default: the test master's admin), or with
        ``token`` as given ("" sends none)."""
        raw = make_channel(parse_master(address))
        if token is None:
            token = (
                master_pb2_grpc.MasterServiceStub(raw)
                .Login(
                    master_pb2.LoginRequest(username=username, password=password),
                    timeout=60,
                    wait_for_ready=True,  # a master that is still starting
                )
                .token
            )
        ch = grpc.intercept_channel(raw, BearerToken(lambda: token or None))
        return cls(
            ch,
            experiment_pb2_grpc.ExperimentServiceStub(ch),
            trial_pb2_grpc.TrialServiceStub(ch),
            checkpoint_pb2_grpc.CheckpointServiceStub(ch),
            searcher_pb2_grpc.SearcherServiceStub(ch),
            logs_pb2_grpc.LogServiceStub(ch),
            workspace_pb2_grpc.WorkspaceServiceStub(ch),
            model_pb2_grpc.ModelServiceStub(ch),
            master_pb2_grpc.MasterServiceStub(ch),
        )

    # -- conveniences --------------------------------------------------------------------------
    def create(
        self,
        config: dict[str, Any] | str,
        model_dir: pathlib.Path | None = None,
        activate: bool = True,
    ) -> experiment_pb2.Experiment:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        data = pack_model_dir(model_dir) if model_dir is not None else b""
        exp: experiment_pb2.Experiment = self.experiments.CreateExperiment(
            experiment_pb2.CreateExperimentRequest(
                config=text, model_definition=data, activate=activate
            )
        ).experiment
        return exp

    def experiment(self, exp_id: int) -> experiment_pb2.Experiment:
        exp: experiment_pb2.Experiment = self.experiments.GetExperiment(
            experiment_pb2.GetExperimentRequest(experiment_id=exp_id)
        ).experiment
        return exp

    def exp_state(self, exp_id: int) -> str:
        return common_pb2.ExperimentState.Name(self.experiment(exp_id).state).removeprefix(
            "EXPERIMENT_STATE_"
        )

    def trials_of(self, exp_id: int) -> list[trial_pb2.Trial]:
        return list(
            self.experiments.ListExperimentTrials(
                experiment_pb2.ListExperimentTrialsRequest(experiment_id=exp_id)
            ).trials
        )

    def trial(self, trial_id: int) -> trial_pb2.Trial:
        t: trial_pb2.Trial = self.trials.GetTrial(
            trial_pb2.GetTrialRequest(trial_id=trial_id)
        ).trial
        return t

    def action(self, exp_id: int, action: str) -> experiment_pb2.Experiment:
        a = experiment_pb2.ExperimentAction.Value(f"EXPERIMENT_ACTION_{action.upper()}")
        exp: experiment_pb2.Experiment = self.experiments.ExperimentAction(
            experiment_pb2.ExperimentActionRequest(experiment_id=exp_id, action=a)
        ).experiment
        return exp

    def wait_exp(self, exp_id: int, *states: str, timeout: float = 120.0) -> str:
        def reached() -> str | None:
            s = self.exp_state(exp_id)
            return s if s in states else None

        state = wait_for(reached, timeout, f"experiment {exp_id} to reach {states}")
        assert state is not None  # wait_for returns only a truthy value
        return state


def trial_state(t: trial_pb2.Trial) -> str:
    return common_pb2.TrialState.Name(t.state).removeprefix("TRIAL_STATE_")


def write_model_dir(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """Create a model directory with dedented file contents."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip())
    return root


def single_config(entrypoint: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "test",
        "entrypoint": entrypoint,
        "searcher": {"name": "single", "metric": "loss", "max_length": {"batches": 10}},
        "max_restarts": 0,
        "hyperparameters": {"x": 1},
    }
    cfg.update(over)
    return cfg


PYTHON = sys.executable
