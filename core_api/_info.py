"""What a trial knows about itself: :class:`ClusterInfo`, read from ``DET_CLUSTER_INFO``.

The launcher writes a JSON file and points ``DET_CLUSTER_INFO`` at it (see
``docs/trial-environment.md``). Off-cluster there is no such file and
:func:`get_cluster_info` returns ``None``.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
from dataclasses import dataclass, field
from typing import Any

JSONDict = dict[str, Any]

#: The environment variable naming the cluster-info JSON file.
CLUSTER_INFO_ENV = "DET_CLUSTER_INFO"


@dataclass(frozen=True)
class TrialInfo:
    """The trial this process runs.

    Attributes:
        trial_id: the trial's id.
        experiment_id: its experiment's id.
        hparams: the trial's hyperparameters.
        trial_seed: a seed the trial may use for reproducibility.
        user_data: the experiment config's free ``data`` dict (or ``{}``).
        run_id: 1 on the first run, +1 on every restart/resume.
        config: the full, validated experiment config.
    """

    trial_id: int
    experiment_id: int
    hparams: JSONDict = field(default_factory=dict)
    trial_seed: int = 0
    user_data: JSONDict = field(default_factory=dict)
    run_id: int = 1
    config: JSONDict = field(default_factory=dict)
    steps_completed: int = 0
    debug: bool = False

    @property
    def trial_run_id(self) -> int:
        """Determined's name for :attr:`run_id`."""
        return self.run_id


@dataclass(frozen=True)
class ClusterInfo:
    """Everything the launcher tells a trial process.

    Attributes:
        master_url: ``host:port`` of the master's gRPC endpoint.
        trial: the trial being run.
        latest_checkpoint: storage id of the checkpoint to resume from, or None.
        checkpoint_storage: the storage config, e.g. ``{"type": "shared_fs", "path": ...}``.
        slots_per_trial: how many ranks the trial runs as.
        container_rank: this container's index (the local launcher runs one container).
        container_addrs: the address of every container of the trial.
        slot_ids: the slots of this container.
        container_slot_counts: how many slots each container has.
        task_id: the task's id (``"<experiment>.<trial>"``).
        allocation_id: this run's id (``"<task_id>.<run>"``).
        cluster_id: the master's cluster id.
        agent_id: the agent (machine) this container runs on.
        session_token: the trial's token ("" when the master needs none).
        task_type: ``"TRIAL"`` for trials.
        gpu_uuids: the GPUs of this container (empty on CPU slots).
        user_data: the experiment config's ``data`` dict.
    """

    master_url: str
    trial: TrialInfo
    latest_checkpoint: str | None = None
    checkpoint_storage: JSONDict = field(default_factory=dict)
    slots_per_trial: int = 1
    container_rank: int = 0
    container_addrs: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    slot_ids: list[int] = field(default_factory=list)
    container_slot_counts: list[int] = field(default_factory=list)
    task_id: str = ""
    allocation_id: str = ""
    cluster_id: str = ""
    agent_id: str = ""
    session_token: str = ""
    task_type: str = "TRIAL"
    gpu_uuids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Fill the Determined-shaped fields a hand-built info leaves out.
        slots = self.slots_per_trial
        if not self.slot_ids:
            object.__setattr__(self, "slot_ids", list(range(slots)))
        if not self.container_slot_counts:
            object.__setattr__(self, "container_slot_counts", [slots])
        if not self.task_id:
            object.__setattr__(self, "task_id", f"{self.trial.experiment_id}.{self.trial.trial_id}")
        if not self.allocation_id:
            object.__setattr__(self, "allocation_id", f"{self.task_id}.{self.trial.run_id}")
        if not self.agent_id:
            object.__setattr__(self, "agent_id", socket.gethostname())

    @property
    def user_data(self) -> JSONDict:
        """The experiment config's free ``data`` dict."""
        return self.trial.user_data

    @property
    def trial_seed(self) -> int:
        """Shortcut for ``trial.trial_seed``."""
        return self.trial.trial_seed

    @classmethod
    def from_json(cls, data: JSONDict) -> ClusterInfo:
        """Build from the launcher's JSON document (``docs/trial-environment.md``)."""
        config = data.get("experiment_config") or {}
        user_data = data.get("user_data")
        if user_data is None:
            user_data = config.get("data") or {}
        trial = TrialInfo(
            trial_id=int(data["trial_id"]),
            experiment_id=int(data["experiment_id"]),
            hparams=dict(data.get("hparams") or {}),
            trial_seed=int(data.get("trial_seed") or 0),
            user_data=dict(user_data),
            run_id=int(data.get("run_id") or 1),
            config=dict(config),
            steps_completed=int(data.get("steps_completed") or 0),
        )
        return cls(
            master_url=str(data.get("master") or os.environ.get("DET_MASTER", "")),
            trial=trial,
            latest_checkpoint=data.get("latest_checkpoint") or None,
            checkpoint_storage=dict(data.get("checkpoint_storage") or {}),
            slots_per_trial=int(data.get("slots_per_trial") or 1),
            container_rank=int(data.get("container_rank") or 0),
            container_addrs=[str(a) for a in data.get("container_addrs") or ["127.0.0.1"]],
            container_slot_counts=[int(c) for c in data.get("container_slot_counts") or []],
            agent_id=str(data.get("agent_id") or ""),
            cluster_id=str(data.get("cluster_id") or ""),
            session_token=str(data.get("session_token") or ""),
            gpu_uuids=[str(g) for g in data.get("gpu_uuids") or []],
        )


def get_cluster_info() -> ClusterInfo | None:
    """The launcher's information about this trial, or None when not run by the master.

    Returns:
        A :class:`ClusterInfo` when ``DET_CLUSTER_INFO`` names a readable file, else None.

    Raises:
        ValueError: the file exists but is not valid cluster-info JSON.
    """
    where = os.environ.get(CLUSTER_INFO_ENV)
    if not where:
        return None
    text = where if where.lstrip().startswith("{") else pathlib.Path(where).read_text()
    try:
        return ClusterInfo.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{CLUSTER_INFO_ENV} ({where}) is not valid cluster info: {exc}") from exc
