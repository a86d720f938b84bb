"""The master process: store + services + gRPC server + launcher, started and stopped as one.

Tests start it in-process on port 0 (:class:`Master`); ``python -m master_server`` wraps it in a
command line with signal handling.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import uuid
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from master_server.checkpoints import CheckpointService
from master_server.experiments import ExperimentService
from master_server.launcher import LocalLauncher, kill_stale_supervisors
from master_server.logs import LogService
from master_server.metrics import MetricService
from master_server.scheduler import Scheduler
from master_server.servicers import register_all
from master_server.store import open_store

logger = logging.getLogger(__name__)
VERSION = "0.1.0"
MAX_MESSAGE_BYTES = 128 * 2**20


class Master:
    """One master: a database, the services, a gRPC server and the local launcher.

    Args:
        data_dir: where the SQLite file, checkpoints and run directories live.
        host: interface to bind.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        db_url: SQLAlchemy URL; default ``sqlite:///DATA_DIR/master.db``.
        slots: number of slots (default: the CPU count).
        checkpoint_dir: default checkpoint storage (default ``DATA_DIR/checkpoints``).
        max_model_bytes: size limit of an experiment's model directory.
        preempt_grace_s: how long a trial may take to stop after a pause/cancel before it is killed.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        db_url: str | None = None,
        slots: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        max_model_bytes: int = 64 * 2**20,
        preempt_grace_s: float = 30.0,
        max_workers: int = 128,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.host = host
        self._requested_port = port
        self.db_url = db_url or f"sqlite:///{self.data_dir / 'master.db'}"
        self.slots = slots or os.cpu_count() or 1
        self.checkpoint_dir = pathlib.Path(
            checkpoint_dir or self.data_dir / "checkpoints"
        ).resolve()
        self.max_model_bytes = max_model_bytes
        self.preempt_grace_s = preempt_grace_s
        self.max_workers = max_workers
        self.port = 0
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self.parts: dict[str, Any] = {}

    @property
    def address(self) -> str:
        """``host:port`` to connect to."""
        return f"{self.host}:{self.port}"

    def start(self) -> Master:
        """Open the database (migrating it), recover unfinished work, and start serving."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        stale = kill_stale_supervisors(self.data_dir)
        if stale:
            logger.warning("killed %d trial supervisors left by a previous master", stale)
        store = open_store(self.db_url)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = server.add_insecure_port(f"{self.host}:{self._requested_port}")
        if self.port == 0:
            store.close()
            raise OSError(f"could not bind {self.host}:{self._requested_port}")
        launcher = LocalLauncher(self.data_dir, lambda: self.address)
        scheduler = Scheduler(self.slots)
        experiments = ExperimentService(
            store,
            launcher,
            scheduler,
            data_dir=self.data_dir,
            checkpoint_dir=self.checkpoint_dir,
            master_address=lambda: self.address,
            max_model_bytes=self.max_model_bytes,
            preempt_grace_s=self.preempt_grace_s,
        )
        logs = LogService(store)
        self.parts = {
            "store": store,
            "experiments": experiments,
            "checkpoints": CheckpointService(store, experiments),
            "logs": logs,
            "metrics": MetricService(store),
            "launcher": launcher,
            "version": VERSION,
            "cluster_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(self.data_dir))),
        }
        experiments.on_experiment_finished = self.parts["checkpoints"].garbage_collect
        register_all(server, self.parts)
        hs = health.HealthServicer()
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        launcher.start(experiments.on_trial_exit)
        server.start()
        self._server = server
        experiments.recover()
        logger.info(
            "master serving on %s (%s, %d slots, data in %s)",
            self.address,
            store.dialect,
            self.slots,
            self.data_dir,
        )
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop serving, stop trial supervisors, close the database. Safe to call twice."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.parts["experiments"].close()
        self.parts["logs"].close()
        self.parts["metrics"].close()
        server.stop(grace_s).wait()
        self.parts["launcher"].stop()
        self.parts["store"].close()
        self._stopped.set()
        logger.info("master stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` has run."""
        self._stopped.wait()

    def __enter__(self) -> Master:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
