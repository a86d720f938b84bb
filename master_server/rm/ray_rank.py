"""The part of the Ray backend that lives on a Ray node: one actor per rank of a trial run.

A :class:`RankHost` is created by :class:`~master_server.rm.ray.RayResourceManager` in one
bundle of the run's placement group, as a detached named actor (it outlives the master, which
adopts it again after a restart). It makes the rank's run directory on its node, unpacks the
model code, writes the cluster info and starts the same supervisor a local run has
(``python -m master_server.supervisor``): logs are shipped from there, signals are forwarded
from there. The supervisor does not report the exit itself (the resource manager reports the
gang's exit once every rank has ended) and stops when this actor's process dies (a lost node
takes its ranks with it).

This module imports nothing from Ray at import time: the actor class is wrapped with
``ray.remote`` by the resource manager, and Ray workers import this module by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from determined_sdk.model_dir import extract_archive
from master_server.launcher import trial_environment


def _write_private(path: pathlib.Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class RankHost:
    """One rank of one trial run on one Ray node (a threaded actor: ``wait`` blocks).

    Args:
        meta: ``trial_id``, ``run_id``, ``rank``, ``world_size``, ``pool``, ``secret`` (the
            master's, so a restarted master adopts only its own runs) and ``run_root`` (where
            run directories live on the node).
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self._meta = dict(meta)
        self._proc: subprocess.Popen[bytes] | None = None
        self._done = threading.Event()
        self._code: int | None = None
        self._run_dir = (
            pathlib.Path(str(meta["run_root"]))
            / f"trial-{meta['trial_id']}"
            / f"run-{meta['run_id']}"
            / f"rank-{meta['rank']}"
        )

    def info(self) -> dict[str, Any]:
        """The metadata this actor was made with (the master checks the secret)."""
        return dict(self._meta)

    def where(self) -> dict[str, Any]:
        """This node: its address, Ray node id, and a free port for the gang's rendezvous."""
        import ray  # the actor runs inside Ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return {
            "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "node_id": ray.get_runtime_context().get_node_id(),
            "port": port,
            "hostname": socket.gethostname(),
        }

    def start(self, launch: dict[str, Any], model: bytes, cluster_info: dict[str, Any]) -> int:
        """Prepare the run directory and start the supervisor; returns its pid.

        Args:
            launch: the supervisor's ``launch.json`` less ``env`` and ``run_dir``; carries
                ``env_args`` for :func:`~master_server.launcher.trial_environment` (the
                environment is built here, from this node's own variables).
            model: the experiment's packed model directory.
            cluster_info: this rank's cluster info document.
        """
        run_dir = self._run_dir
        shutil.rmtree(run_dir, ignore_errors=True)
        extract_archive(model, run_dir)
        det = run_dir / ".det"
        det.mkdir(parents=True, exist_ok=True)
        info_path = det / "cluster_info.json"
        _write_private(info_path, json.dumps(cluster_info, indent=1))
        args = dict(launch.pop("env_args"))
        env = trial_environment(base=dict(os.environ), cluster_info_path=str(info_path), **args)
        spec = {**launch, "env": env, "run_dir": str(run_dir)}
        launch_path = det / "launch.json"
        _write_private(launch_path, json.dumps(spec))
        with open(det / "supervisor.log", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "master_server.supervisor", str(launch_path)],
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        threading.Thread(target=self._reap, name="rank-reaper", daemon=True).start()
        return self._proc.pid

    def _reap(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        # Leftovers of the rank's process group (ranks of a SIGKILLed supervisor).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._code = code if code >= 0 else 128 - code
        self._done.set()

    def wait(self) -> int:
        """Block until the supervisor has exited; its exit code (signals as 128+n)."""
        self._done.wait()
        assert self._code is not None
        return self._code

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the supervisor (which forwards it); False if it has exited."""
        if self._proc is None or self._done.is_set():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signum)
            return True
        return False

    def kill(self) -> None:
        """Kill the supervisor's whole process group at once."""
        if self._proc is not None and not self._done.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Kill what is left and remove the rank's run directory (its logs were shipped)."""
        self.kill()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        shutil.rmtree(self._run_dir, ignore_errors=True)
