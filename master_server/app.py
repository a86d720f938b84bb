"""The master process: store + services + gRPC server + resource manager, started and stopped
as one.

The gRPC server is a ``grpc.aio`` server on an event loop of its own thread: waiting callers (long
polls) are coroutines and cost memory only, while ordinary handlers run on a bounded thread pool.
Tests start it in-process on port 0 (:class:`Master`); ``python -m master_server`` wraps it in a
command line with signal handling.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import pathlib
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from determined_sdk.errors import PermissionDeniedError, UnauthenticatedError
from master_server.admission import Admission
from master_server.auth.core import DEFAULT_SESSION_TTL_S, Authenticator
from master_server.auth.interceptor import AuthInterceptor
from master_server.auth.passwords import verify_password
from master_server.auth.users import UserService
from master_server.bulk import BulkServer
from master_server.checkpoints import CheckpointService
from master_server.containment import StorageRoots
from master_server.experiments import ExperimentService
from master_server.ingest import MetricIngest
from master_server.logs import LogService
from master_server.metrics import MetricService
from master_server.rm.base import ResourceManager
from master_server.rm.gpus import count_gpus
from master_server.rm.local import LocalResourceManager
from master_server.servicers import register_all
from master_server.store import open_store
from master_server.waiting import Waker

logger = logging.getLogger(__name__)
VERSION = "0.1.0"
MAX_MESSAGE_BYTES = 128 * 2**20
# Calls the server has received but not yet handed to a handler. gRPC's defaults (1,000 soft,
# 3,000 hard) cancel calls when thousands of trials re-arm their long polls at once, e.g. after
# a master restart; every waiting call costs only memory here, so allow many.
MAX_PENDING_CALLS = 50_000
RESOURCE_MANAGERS = ("local", "ray")


@dataclass(frozen=True)
class RaySettings:
    """Settings of the Ray resource manager.

    Attributes:
        address: the Ray cluster to use (``auto``: the one on this machine or ``$RAY_ADDRESS``).
        slot_type: ``cpu`` (a slot is one Ray CPU) or ``gpu`` (one Ray GPU).
        placement_strategy: Ray placement group strategy for a run's ranks (``PACK``,
            ``SPREAD``, ``STRICT_PACK``, ``STRICT_SPREAD``).
        run_root: directory on every node where run directories are made.
    """

    address: str = "auto"
    slot_type: str = "cpu"
    placement_strategy: str = "PACK"
    run_root: str = "/tmp/determined-runs"


class _LoopThread:
    """An asyncio event loop running on a daemon thread of its own."""

    def __init__(self, executor: futures.Executor) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(executor)
        self._thread = threading.Thread(target=self._run, name="grpc-aio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result from this (another) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class Master:
    """One master: a database, the services, a gRPC server and a resource manager.

    Args:
        data_dir: where the SQLite file, checkpoints and run directories live.
        host: interface to bind.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        db_url: SQLAlchemy URL; default ``sqlite:///DATA_DIR/master.db``.
        slots: number of slots (default: the CPU count).
        checkpoint_dir: default checkpoint storage (default ``DATA_DIR/checkpoints``).
        max_model_bytes: size limit of an experiment's model directory.
        preempt_grace_s: how long a trial may take to stop after a pause/cancel before it is killed.
        max_workers: threads running ordinary (non-waiting) RPC handlers.
        max_queued_calls: ordinary calls that may wait for a thread; more are refused with
            RESOURCE_EXHAUSTED and a retry hint (see ``master_server.admission``).
        keep_runs_on_stop: leave running trials running when the master stops; the next master
            on the same data directory adopts them (the command line's default).
        orphan_checkpoint_grace_s: on start, directories in ``checkpoint_dir`` that no
            checkpoint record names and that are older than this are removed.
        http_port: serve the REST API and web UI on this port (0 picks a free one, read it back
            from :attr:`http_port`); None (the default) serves no HTTP. Needs the ``web`` extra.
        initial_admin_password: password of the ``admin`` user made on the first start (default
            ``$DET_INITIAL_ADMIN_PASSWORD``; none at all gives it the empty password, which only
            a loopback master accepts).
        session_ttl_s: how long a login session lasts (default 7 days).
        tls_cert: PEM certificate file; with ``tls_key`` the master serves TLS only.
        tls_key: PEM private key file of that certificate.
        checkpoint_roots: directories besides ``checkpoint_dir`` where experiments may keep
            checkpoints (the master reads and deletes only inside these).
        resource_manager: ``local`` (supervisors on this machine) or ``ray`` (an existing Ray
            cluster; the ``ray`` extra).
        ray: the Ray backend's settings (default :class:`RaySettings()`: the local cluster).
        gpus: GPUs of this machine for the local backend (default: counted with
            ``nvidia-smi``; 0 on a machine without CUDA). With GPUs a slot is one GPU.
        unmanaged_timeout_s: an unmanaged trial (a script run by hand with ``core_api``) whose
            run shows no sign of life (preemption polls, reports) for this long ends in ERROR.
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
        max_workers: int = 32,
        max_queued_calls: int = 4096,
        keep_runs_on_stop: bool = False,
        orphan_checkpoint_grace_s: float = 3600.0,
        http_port: int | None = None,
        initial_admin_password: str | None = None,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        checkpoint_roots: Sequence[str | os.PathLike[str]] = (),
        resource_manager: str = "local",
        ray: RaySettings | None = None,
        gpus: int | None = None,
        unmanaged_timeout_s: float = 60.0,
    ) -> None:
        if not unmanaged_timeout_s > 0:
            raise ValueError(f"unmanaged_timeout_s: must be > 0 seconds, got {unmanaged_timeout_s}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key: give both or neither")
        if resource_manager not in RESOURCE_MANAGERS:
            raise ValueError(
                f"resource_manager: must be one of {RESOURCE_MANAGERS}, got {resource_manager!r}"
            )
        self.resource_manager = resource_manager
        self.ray = ray or RaySettings()
        self.gpus = gpus
        self.unmanaged_timeout_s = unmanaged_timeout_s
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.host = host
        self._requested_port = port
        self.db_url = db_url or f"sqlite:///{self.data_dir / 'master.db'}"
        self._requested_slots = slots
        self.slots = slots or os.cpu_count() or 1
        self.checkpoint_dir = pathlib.Path(
            checkpoint_dir or self.data_dir / "checkpoints"
        ).resolve()
        self.max_model_bytes = max_model_bytes
        self.preempt_grace_s = preempt_grace_s
        self.max_workers = max_workers
        self.max_queued_calls = max_queued_calls
        self.checkpoint_roots = [pathlib.Path(r).resolve() for r in checkpoint_roots]
        if initial_admin_password is None:
            initial_admin_password = os.environ.get("DET_INITIAL_ADMIN_PASSWORD") or None
        self.initial_admin_password = initial_admin_password
        self.session_ttl_s = session_ttl_s
        self.tls_cert = pathlib.Path(tls_cert).resolve() if tls_cert else None
        self.tls_key = pathlib.Path(tls_key).resolve() if tls_key else None
        self.keep_runs_on_stop = keep_runs_on_stop
        self.orphan_checkpoint_grace_s = orphan_checkpoint_grace_s
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._loop: _LoopThread | None = None
        self._requested_http_port = http_port
        self.http_port = 0
        self._http: Any = None
        self._quick, self._quick_checked = False, -1e9
        self._quick_lock = threading.Lock()  # one argon2 check at a time (see _quick_start)
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

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` of the REST API and web UI, or None when HTTP is off."""
        return f"http://{self.host}:{self.http_port}" if self._http is not None else None

    def start(self) -> Master:
        """Open the database (migrating it), recover unfinished work, and start serving."""
        _quiet_cancelled_writes()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(self.db_url)
        try:
            auth = self._auth(store)
        except BaseException:
            store.close()
            raise
        try:
            rm = self._resource_manager(auth)
        except BaseException:
            store.close()
            raise
        pool = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="rpc")
        loop = _LoopThread(pool)
        waker, log_waker, metric_waker = Waker(loop.loop), Waker(loop.loop), Waker(loop.loop)
        admission = Admission(
            pool,
            lambda: waker.waiting + log_waker.waiting + metric_waker.waiting,
            max_queued_calls=self.max_queued_calls,
        )
        try:
            server, self.port = loop.call(self._bind(admission, AuthInterceptor(auth)))
        except BaseException:
            loop.close()
            pool.shutdown(wait=False)
            rm.stop()
            store.close()
            raise
        experiments = ExperimentService(
            store,
            rm,
            checkpoint_dir=self.checkpoint_dir,
            master_address=lambda: self.address,
            max_model_bytes=self.max_model_bytes,
            preempt_grace_s=self.preempt_grace_s,
            unmanaged_timeout_s=self.unmanaged_timeout_s,
            storage_roots=StorageRoots([self.checkpoint_dir, *self.checkpoint_roots]),
        )
        auth.live_run = experiments.live_run
        logs = LogService(store)
        experiments.add_change_listener(waker.notify)
        logs.add_listener(log_waker.notify)
        self.parts = {
            "store": store,
            "experiments": experiments,
            "checkpoints": CheckpointService(store, experiments),
            "logs": logs,
            "ingest": MetricIngest(store),
            "rm": rm,
            "pool": pool,
            "waker": waker,
            "log_waker": log_waker,
            "admission": admission,
            "auth": auth,
            "users": UserService(store, auth),
            "metrics": MetricService(store, waker=metric_waker),
            "version": VERSION,
            "cluster_id": self.cluster_id,
        }
        # The bulk port carries no TLS: offered only when the master serves without it.
        if self.tls_cert is None:
            self.parts["bulk"] = BulkServer(self.host).start()
        register_all(server, self.parts)
        rm.start(experiments.on_trial_exit)
        loop.call(self._serve(server))
        self._server, self._loop = server, loop
        if self._requested_http_port is not None:
            self._start_http()
        experiments.recover()
        experiments.jobs.start()  # finishes GC and deletions a previous master left pending
        threading.Thread(
            target=self._remove_orphans, name="orphan-checkpoints", daemon=True
        ).start()
        logger.info(
            "master serving on %s (%s, %s resource manager, %d slots, data in %s)",
            self.address,
            store.dialect,
            self.resource_manager,
            rm.total_slots,
            self.data_dir,
        )
        return self

    @property
    def cluster_id(self) -> str:
        """This master's cluster id (stable for its data directory)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, str(self.data_dir)))

    def _resource_manager(self, auth: Authenticator) -> ResourceManager:
        cert = str(self.tls_cert) if self.tls_cert else None
        if self.resource_manager == "ray":
            from master_server.rm.ray import RayResourceManager  # the optional ``ray`` extra

            return RayResourceManager(
                address=self.ray.address,
                master_address=lambda: self.address,
                trial_token=auth.trial_token,
                namespace=f"determined-{self.cluster_id}",
                secret=_secret(self.data_dir / "ray-secret"),
                cert_file=cert,
                slot_type=self.ray.slot_type,
                placement_strategy=self.ray.placement_strategy,
                run_root=self.ray.run_root,
            )
        gpus = count_gpus() if self.gpus is None else self.gpus
        if gpus:
            self.slots = gpus if self._requested_slots is None else min(gpus, self.slots)
        return LocalResourceManager(
            self.data_dir,
            self.slots,
            lambda: self.address,
            trial_token=auth.trial_token,
            cert_file=cert,
            gpus=gpus,
        )

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

    def _remove_orphans(self) -> None:
        try:
            self.parts["checkpoints"].remove_orphans(
                self.checkpoint_dir, self.orphan_checkpoint_grace_s
            )
        except Exception:
            logger.exception("removing orphaned checkpoint directories failed")

    async def _bind(
        self, admission: Admission, auth: AuthInterceptor
    ) -> tuple[grpc.aio.Server, int]:
        # Refusals for a busy master come first (they cost nothing), then authentication.
        server = grpc.aio.server(
            migration_thread_pool=admission.pool,
            interceptors=[admission, auth],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
                ("grpc.server_max_unrequested_time_in_server", 120),
            ],
        )
        bind = f"{self.host}:{self._requested_port}"
        if self.tls_cert is not None and self.tls_key is not None:
            creds = grpc.ssl_server_credentials(
                [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(bind, creds)
        else:
            port = server.add_insecure_port(bind)
            if not self.loopback:
                logger.warning(
                    "serving WITHOUT TLS on the non-loopback address %s: tokens and passwords "
                    "cross the network in clear text; start with --tls-cert/--tls-key",
                    self.host,
                )
        if port == 0:
            raise OSError(f"could not bind {self.host}:{self._requested_port}")
        return server, port

    @staticmethod
    async def _serve(server: grpc.aio.Server) -> None:
        hs = health.aio.HealthServicer()
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        await server.start()

    def _start_http(self) -> None:
        from master_server.web.api import SessionHooks, create_app  # the ``web`` extra
        from master_server.web.server import HttpServer

        try:
            app = create_app(
                self.parts,
                authenticate=self._http_auth,
                sessions=SessionHooks(login=self._http_login, logout=self._http_logout),
            )
            http = HttpServer(app, self.host, self._requested_http_port or 0)
            self._http = http.start()
        except BaseException:
            self.stop()
            raise
        self.http_port = http.port

    def _http_auth(self, request: Any) -> None:
        """Who may use the REST API and web UI: anyone while this loopback master is in the
        quick start (``admin`` with the empty password: anyone here can log in as admin anyway),
        else a user's session token (``Authorization: Bearer``, the cookie the web UI's login
        sets, or ``?token=`` where a browser cannot set headers, as for server-sent events).
        The caller is left in ``request.state.principal``; what a user who is not an admin may
        change is checked per route (``master_server.web.api.WRITE_RULES``), as over gRPC."""
        from master_server.web.api import SESSION_COOKIE  # loaded with the HTTP server

        if self._quick_start():
            return
        header = request.headers.get("authorization")
        token = request.query_params.get("token") or request.cookies.get(SESSION_COOKIE)
        md = [("authorization", header or f"Bearer {token}")] if header or token else []
        p = self.parts["auth"].authenticate("/rest", md)
        if p is None:
            raise UnauthenticatedError("log in first: the REST API needs a session token")
        if p.is_trial:
            raise PermissionDeniedError("a trial's token cannot use the REST API")
        request.state.principal = p

    def _http_login(self, username: str, password: str) -> str:
        token, _ = self.parts["auth"].login(username, password)
        return str(token)

    def _http_logout(self, token: str) -> None:
        auth = self.parts["auth"]
        try:
            principal = auth.authenticate("/rest", [("authorization", f"Bearer {token}")])
        except UnauthenticatedError:
            return  # already ended or expired
        if principal is not None:
            auth.logout(principal)

    def _quick_start(self) -> bool:
        """Loopback and ``admin`` still has the empty password (checked at most every 10 s:
        verifying an argon2 hash is slow on purpose). Requests that come together wait for
        one check rather than each making its own (48 at once took 9 s)."""
        if time.monotonic() - self._quick_checked < 10.0:
            return self._quick
        with self._quick_lock:
            now = time.monotonic()
            if now - self._quick_checked < 10.0:  # checked while this request waited
                return self._quick
            admin = self.parts["store"].find_user_by_name("admin")
            self._quick = self.loopback and admin is not None and admin.active and _empty_pw(admin)
            self._quick_checked = now
            return self._quick

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop serving, stop trial supervisors, close the database. Safe to call twice."""
        if self._server is None or self._loop is None:
            return
        server, self._server = self._server, None
        loop, self._loop = self._loop, None
        self.parts["experiments"].close()
        self.parts["logs"].close()
        if self._http is not None:
            self._http.stop()
            self._http = None
        self.parts["waker"].close()
        self.parts["log_waker"].close()
        self.parts["metrics"].close()
        loop.call(server.stop(grace_s))
        loop.close()
        if "bulk" in self.parts:
            self.parts["bulk"].stop()
        self.parts["ingest"].close()
        self.parts["pool"].shutdown(wait=True)
        self.parts["experiments"].jobs.stop()
        self.parts["rm"].stop(keep_runs=self.keep_runs_on_stop)
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


class _CancelledWrites(logging.Filter):
    """Drops gRPC's error record for a streaming reply written after its caller went away
    (a download the user stopped): the stream ends as it should, and the record says nothing
    a master operator can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("ExecuteBatchError raised in core by servicer")


def _quiet_cancelled_writes() -> None:
    log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _CancelledWrites) for f in log.filters):
        log.addFilter(_CancelledWrites())


def tune_gc_for_serving() -> None:
    """Set up Python's cyclic garbage collector for a process that serves a master; called
    by ``python -m master_server`` once the master runs (a library user decides for its own
    process).

    Everything built so far (modules, the store, the servers) lives as long as the process:
    it is moved out of the collector's sight, or each full collection walks it again while a
    large metrics read allocates millions of short-lived rows. And a young collection per
    50,000 new containers instead of CPython's 700: at the default, collections were a third
    of a million-point read (measured with ``benchmarks/metrics_read_bench.py``), and 50,000
    young objects waiting for one are little memory.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _secret(path: pathlib.Path) -> str:
    """This data directory's secret (made once, readable by its owner only)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _empty_pw(user: Any) -> bool:
    return verify_password(user.password_hash, "")
