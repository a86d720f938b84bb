"""A real trial on a real master whose training code is the test process (``cluster_trial``).

The trial's own process (:data:`GATE_MAIN`) only holds its slot until the test opens the gate
file; the test process, pointed at the launcher's cluster info, makes the Core API calls.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from determined_sdk.proto import experiment_pb2, trial_pb2
from master_server.app import Master
from tests.support import Stubs, trial_state, wait_for

GATE_ENV = "CORE_API_TEST_GATE"

# The trial process: it holds the trial RUNNING until the test creates the gate file.
GATE_MAIN = f"""
    import os, pathlib, sys, time

    gate = pathlib.Path(os.environ["{GATE_ENV}"])
    deadline = time.monotonic() + 280
    while not gate.exists():
        if time.monotonic() > deadline:
            sys.exit("the test never opened the gate")
        time.sleep(0.05)  # polling a file, bounded by the deadline
"""

_SETTLED = ("COMPLETED", "PAUSED", "CANCELED", "ERROR")


@dataclass
class LiveTrial:
    """A RUNNING trial on the real master whose training code is the test process."""

    master: Master
    stubs: Stubs
    experiment_id: int
    trial_id: int
    info: dict[str, Any]  # what DET_CLUSTER_INFO holds: the launcher's info plus overrides
    gate: pathlib.Path

    def release(self) -> None:
        """Let the trial's process exit 0."""
        self.gate.touch()

    def trial(self) -> trial_pb2.Trial:
        return self.stubs.trial(self.trial_id)

    def state(self) -> str:
        return trial_state(self.trial())

    def wait_settled(self, timeout: float = 60.0) -> str:
        """Wait until the trial's process has exited and the master recorded it."""

        def settled() -> str:
            s = self.state()
            return s if s in _SETTLED else ""

        return wait_for(settled, timeout, f"trial {self.trial_id} to end")

    def metrics(self, group: str = "") -> list[tuple[str, int, dict[str, float], float]]:
        """What the master stored, as (group, steps_completed, metrics, timestamp), by steps."""
        out: list[tuple[str, int, dict[str, float], float]] = []
        for page in self.stubs.trials.StreamMetrics(
            trial_pb2.StreamMetricsRequest(trial_ids=[self.trial_id], group=group)
        ):
            out.extend(
                (p.group, p.steps_completed, dict(p.metrics), p.timestamp) for p in page.points
            )
        return out

    def summary(self) -> dict[str, Any]:
        text = self.trial().summary_metrics_json
        return dict(json.loads(text)) if text else {}

    # -- the custom searcher (the test is its driver) ----------------------------------------
    def post(self, *actions: dict[str, Any]) -> None:
        """Post custom-searcher actions for this experiment (the trial's request id is r1)."""
        self.stubs.experiments.PostSearcherActions(
            experiment_pb2.PostSearcherActionsRequest(
                experiment_id=self.experiment_id, actions_json=[json.dumps(a) for a in actions]
            )
        )

    def validate_after(self, length: int) -> None:
        self.post({"type": "validate_after", "request_id": "r1", "length": length})

    def events(self) -> list[dict[str, Any]]:
        """The custom searcher's events so far (validations the trial completed, ...)."""
        resp = self.stubs.experiments.GetSearcherEvents(
            experiment_pb2.GetSearcherEventsRequest(
                experiment_id=self.experiment_id, after_event_id=0, timeout_seconds=0
            )
        )
        return [json.loads(e) for e in resp.events_json]
