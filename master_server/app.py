"""The master process: store + services + gRPC server + launcher, started and stopped as one.

Tests start it in-process on port 0 (:class:`Master`); ``python -m master_server`` wraps it in a
command line with signal handling.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import threading
import uuid
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from master_server.auth.core import DEFAULT_SESSION_TTL_S, Authenticator
from master_server.auth.interceptor import AuthInterceptor
from master_server.auth.passwords import verify_password
from master_server.auth.users import UserService
from master_server.checkpoints import CheckpointService
from master_server.containment import StorageRoots
from master_server.experiments import ExperimentService
from master_server.launcher import LocalLauncher, kill_stale_supervisors
from master_server.logs import LogService
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
        initial_admin_password: password of the ``admin`` user made on the first start (default
            ``$DET_INITIAL_ADMIN_PASSWORD``; none at all gives it the empty password, which only
            a loopback master accepts).
        session_ttl_s: how long a login session lasts (default 7 days).
        tls_cert: PEM certificate file; with ``tls_key`` the master serves TLS only.
        tls_key: PEM private key file of that certificate.
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
        initial_admin_password: str | None = None,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        checkpoint_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key: give both or neither")
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.host = host
        self._requested_port = port
        self.db_url = db_url or f"sqlite:///{self.data_dir / 'master.db'}"
        self.slots = slots or os.cpu_count() or 1
        self.checkpoint_dir = pathlib.Path(
            checkpoint_dir or self.data_dir / "checkpoints"
        ).resolve()
        self.max_model_bytes = max_model_bytes
        self.checkpoint_roots = [pathlib.Path(r).resolve() for r in checkpoint_roots]
        self.preempt_grace_s = preempt_grace_s
        self.max_workers = max_workers
        if initial_admin_password is None:
            initial_admin_password = os.environ.get("DET_INITIAL_ADMIN_PASSWORD") or None
        self.initial_admin_password = initial_admin_password
        self.session_ttl_s = session_ttl_s
        self.tls_cert = pathlib.Path(tls_cert).resolve() if tls_cert else None
        self.tls_key = pathlib.Path(tls_key).resolve() if tls_key else None
        self.port = 0
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self.parts: dict[str, Any] = {}

    @property
    def address(self) -> str:
        """``host:port`` to connect to; ``grpcs://host:port`` when serving TLS."""
        scheme = "grpcs://" if self.tls_cert else ""
        return f"{scheme}{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether the master listens on a loopback address only."""
        return is_loopback(self.host)

    def start(self) -> Master:
        """Open the database (migrating it), recover unfinished work, and start serving."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        stale = kill_stale_supervisors(self.data_dir)
        if stale:
            logger.warning("killed %d trial supervisors left by a previous master", stale)
        store = open_store(self.db_url)
        try:
            auth = self._auth(store)
        except BaseException:
            store.close()
            raise
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="rpc"),
            interceptors=[AuthInterceptor(auth)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        bind = f"{self.host}:{self._requested_port}"
        if self.tls_cert is not None and self.tls_key is not None:
            creds = grpc.ssl_server_credentials(
                [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())]
            )
            self.port = server.add_secure_port(bind, creds)
        else:
            self.port = server.add_insecure_port(bind)
            if not self.loopback:
                logger.warning(
                    "serving WITHOUT TLS on the non-loopback address %s: tokens and passwords "
                    "cross the network in clear text; start with --tls-cert/--tls-key",
                    self.host,
                )
        if self.port == 0:
            store.close()
            raise OSError(f"could not bind {self.host}:{self._requested_port}")
        launcher = LocalLauncher(
            self.data_dir,
            lambda: self.address,
            trial_token=auth.trial_token,
            cert_file=str(self.tls_cert) if self.tls_cert else None,
        )
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
            storage_roots=StorageRoots([self.checkpoint_dir, *self.checkpoint_roots]),
        )
        logs = LogService(store)
        self.parts = {
            "store": store,
            "experiments": experiments,
            "checkpoints": CheckpointService(store, experiments),
            "logs": logs,
            "launcher": launcher,
            "auth": auth,
            "users": UserService(store, auth),
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

    def _auth(self, store: Any) -> Authenticator:
        """The authenticator, with the first admin made; refuses an open admin on a network."""
        auth = Authenticator(store, session_ttl_s=self.session_ttl_s)
        if not self.loopback and not store.list_users() and not self.initial_admin_password:
            raise PermissionError(
                f"refusing to serve on the non-loopback address {self.host} without an admin "
                "password: give --initial-admin-password or DET_INITIAL_ADMIN_PASSWORD"
            )
        auth.bootstrap(self.initial_admin_password)
        if not self.loopback:
            open_users = [u.username for u in store.list_users() if u.active and _empty_pw(u)]
            if open_users:
                raise PermissionError(
                    f"refusing to serve on the non-loopback address {self.host}: users "
                    f"{open_users} have an empty password; set one (detsdk user change-password)"
                )
        return auth

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop serving, stop trial supervisors, close the database. Safe to call twice."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.parts["experiments"].close()
        self.parts["logs"].close()
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _empty_pw(user: Any) -> bool:
    return verify_password(user.password_hash, "")
