"""The Ray resource manager: trial runs placed on an existing Ray cluster (the ``ray`` extra).

Capacity is the Ray cluster's: the slots of a pool are the ``CPU`` (or ``GPU``, with
``slot_type="gpu"``) resources of the live nodes in it, read again every few seconds. The
default pool is every node; a pool named ``P`` (``resources.resource_pool: P``) is the nodes
that declare the custom resource ``det-pool-P`` (``ray start --resources '{"det-pool-P": 1}'``).
Queued trials wait in a first-in first-out queue per pool, exactly as on the local backend
(:class:`~master_server.scheduler.Scheduler`), so experiments beyond capacity queue.

A granted run gets one Ray placement group of ``slots_per_trial`` bundles (all or nothing),
each holding one detached named actor (:class:`~master_server.rm.ray_rank.RankHost`) that runs
the ordinary supervisor for one rank on its node. Rank 0's node address and a free port on it
become ``MASTER_ADDR``/``MASTER_PORT`` of every rank. The gang's exit is the first failing
rank's code (the others are killed at once), else 0; a rank whose actor died (its node was lost)
counts as killed by SIGKILL, so the engine restarts the trial from its latest checkpoint
wherever capacity is.

Actors and placement groups live in the Ray namespace of this master and carry its secret: a
restarted master finds its runs with :meth:`RayResourceManager.live_runs` and adopts only those
whose every rank is alive and knows the secret.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import pathlib
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from master_server.launcher import TokenFactory
from master_server.rm.base import Allocation, ExitCallback, LaunchSpec, LiveRun, ResourceManager
from master_server.scheduler import Scheduler

logger = logging.getLogger(__name__)

#: Prefix of the custom Ray resource that puts a node in a resource pool.
POOL_RESOURCE_PREFIX = "det-pool-"
#: Exit code reported for a rank whose actor died with its node (reads "killed by SIGKILL").
LOST_EXIT = 128 + int(signal.SIGKILL)
SLOT_TYPES = ("cpu", "gpu")
#: Seconds the ranks get to stop when the master stops with ``keep_runs=False``.
STOP_GRACE_S = 5.0
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_RANK_NAME = re.compile(r"^det-rank-(\d+)-(\d+)-(\d+)$")


def _rank_name(trial_id: int, run_id: int, rank: int) -> str:
    return f"det-rank-{trial_id}-{run_id}-{rank}"


def _group_name(trial_id: int, run_id: int) -> str:
    return f"det-run-{trial_id}-{run_id}"


@dataclass
class _RayRun:
    trial_id: int
    run_id: int
    slots: int
    pool: str
    group: Any = None  # the placement group
    actors: list[Any] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)  # one ``wait`` per rank, in rank order
    codes: dict[int, int] = field(default_factory=dict)  # rank -> exit code
    first_failure: int | None = None
    stop_signal: int | None = None  # asked to stop before its ranks started
    finished: bool = False


class RayResourceManager(ResourceManager):
    """Slots of a Ray cluster; each run is one placement group of rank actors.

    Args:
        address: the Ray cluster (``auto``: the one running on this machine, or ``RAY_ADDRESS``;
            ``ray://host:10001`` for Ray Client).
        master_address: the address trials call back (read when a run starts); every node must
            reach it.
        trial_token: makes each run's trial-scoped token (``DET_SESSION_TOKEN``).
        namespace: the Ray namespace of this master's actors (one per master data directory).
        secret: this master's secret; a restarted master adopts only runs that carry it.
        cert_file: the master's TLS certificate trials must trust, if any (same path on nodes).
        slot_type: ``cpu`` (a slot is one Ray CPU) or ``gpu`` (one Ray GPU).
        placement_strategy: the placement group strategy (``PACK``: ranks together where they
            fit; ``SPREAD``: over nodes where it can).
        run_root: where run directories are made on each node.
        refresh_s: how often capacity is read from the cluster.
    """

    has_pools = True
    elastic = True

    def __init__(
        self,
        *,
        address: str,
        master_address: Callable[[], str],
        trial_token: TokenFactory,
        namespace: str,
        secret: str,
        cert_file: str | None = None,
        slot_type: str = "cpu",
        placement_strategy: str = "PACK",
        run_root: str = "/tmp/determined-runs",
        refresh_s: float = 2.0,
    ) -> None:
        if slot_type not in SLOT_TYPES:
            raise ValueError(f"slot_type: must be one of {SLOT_TYPES}, got {slot_type!r}")
        if placement_strategy not in STRATEGIES:
            raise ValueError(
                f"placement_strategy: must be one of {STRATEGIES}, got {placement_strategy!r}"
            )
        if not secret:
            raise ValueError("secret: must not be empty")
        self._address = address
        self._master_address = master_address
        self._trial_token = trial_token
        self._namespace = namespace
        self._secret = secret
        self._cert_file = cert_file
        self._slot_key = slot_type.upper()
        self._strategy = placement_strategy
        self._run_root = f"{run_root.rstrip('/')}/{namespace}"
        self._refresh_s = refresh_s
        self._lock = threading.RLock()
        self._pools: dict[str, Scheduler] = {}
        self._pool_of: dict[int, str] = {}  # trial_id -> pool, while queued or holding slots
        self._runs: dict[int, _RayRun] = {}  # trial_id -> the current run
        self._on_exit: ExitCallback | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Threads that call Ray (placing, tearing down): joined before disconnecting, since a
        # Ray call after ``ray.shutdown()`` would start a new local Ray instance.
        self._workers: list[threading.Thread] = []
        self._connected = False
        self._connect()

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            raise RuntimeError(
                "this process is already connected to Ray; the Ray resource manager needs its "
                "own connection (its namespace keeps this master's runs apart)"
            )
        _probe(self._address)
        try:
            ray.init(
                address=self._address,
                namespace=self._namespace,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RuntimeError(f"--ray-address {self._address}: cannot connect to Ray: {e}") from e
        self._connected = True
        self._remote: Any = ray.remote(_rank_host_class())
        self._refresh()

    def start(self, on_exit: ExitCallback) -> None:
        self._on_exit = on_exit
        self._watcher = threading.Thread(target=self._watch, name="ray-rm-watcher", daemon=True)
        self._watcher.start()

    def stop(self, *, keep_runs: bool = False) -> None:
        import ray

        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._join_workers()
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        if not keep_runs and self._connected:
            for r in runs:
                for a in r.actors:
                    with contextlib.suppress(Exception):
                        a.signal.remote(int(signal.SIGTERM))
            deadline = time.monotonic() + 5.0
            pending = [ref for r in runs for ref in r.refs]
            if pending:
                with contextlib.suppress(Exception):
                    ray.wait(
                        pending,
                        num_returns=len(pending),
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
            for r in runs:
                self._tear_down(r)
        self._join_workers()
        if self._connected:
            self._connected = False
            ray.shutdown()

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(t)
        t.start()

    def _join_workers(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            workers = list(self._workers)
        for t in workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- capacity and allocation -------------------------------------------------------------
    def _refresh(self) -> None:
        """Read every pool's capacity from the cluster's live nodes."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        with self._lock:
            for pool in {"", *self._pools}:
                total = 0
                for n in nodes:
                    res = n.get("Resources") or {}
                    if pool and POOL_RESOURCE_PREFIX + pool not in res:
                        continue
                    total += int(res.get(self._slot_key, 0))
                self._scheduler(pool).resize(total)

    def _scheduler(self, pool: str) -> Scheduler:
        s = self._pools.get(pool)
        if s is None:
            s = self._pools[pool] = Scheduler(0, allow_empty=True)
        return s

    @property
    def total_slots(self) -> int:
        with self._lock:
            return self._scheduler("").total_slots

    @property
    def free_slots(self) -> int:
        with self._lock:
            return max(0, self._scheduler("").free_slots)

    def request(self, trial_id: int, slots: int, pool: str = "") -> None:
        with self._lock:
            new_pool = pool not in self._pools
            self._scheduler(pool).enqueue(trial_id, slots)
            self._pool_of.setdefault(trial_id, pool)
        if new_pool:
            self._refresh()

    def withdraw(self, trial_id: int) -> bool:
        with self._lock:
            pool = self._pool_of.get(trial_id)
            if pool is None or not self._scheduler(pool).dequeue(trial_id):
                return False
            del self._pool_of[trial_id]
            return True

    def release(self, trial_id: int) -> None:
        with self._lock:
            pool = self._pool_of.pop(trial_id, None)
            if pool is not None:
                self._scheduler(pool).release(trial_id)

    def allocate(self) -> list[Allocation]:
        with self._lock:
            return [
                Allocation(a.trial_id, a.slots) for s in self._pools.values() for a in s.schedule()
            ]

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, spec: LaunchSpec) -> None:
        from ray.util.placement_group import placement_group

        with self._lock:
            pool = self._pool_of.get(spec.trial_id, "")
            old = self._runs.pop(spec.trial_id, None)
        if old is not None and not old.finished:
            logger.warning(
                "trial %d: run %d still placed as run %d starts; killing it",
                spec.trial_id,
                old.run_id,
                spec.run_id,
            )
            old.finished = True
            self._tear_down(old)
        bundle: dict[str, float] = {self._slot_key: 1.0}
        if pool:
            bundle[POOL_RESOURCE_PREFIX + pool] = 0.001
        group = placement_group(
            [dict(bundle) for _ in range(spec.slots)],
            strategy=self._strategy,
            name=_group_name(spec.trial_id, spec.run_id),
            lifetime="detached",
        )
        run = _RayRun(spec.trial_id, spec.run_id, spec.slots, pool, group=group)
        with self._lock:
            self._runs[spec.trial_id] = run
        self._spawn(self._place, run, spec, name=f"ray-place-{spec.trial_id}")

    def _place(self, run: _RayRun, spec: LaunchSpec) -> None:
        """Wait for the placement group, then start one rank actor in each bundle."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        try:
            while not run.finished:
                if self._stop.is_set():
                    return  # the master stops: a kept run without actors is discarded later
                ready, _ = ray.wait([run.group.ready()], timeout=1.0)
                if ready:
                    break
            with self._lock:
                if run.finished or run.stop_signal is not None:
                    self._finish(run, 128 + (run.stop_signal or int(signal.SIGKILL)))
                    return
            gpu = self._slot_key == "GPU"
            for rank in range(run.slots):
                meta = {
                    "trial_id": run.trial_id,
                    "run_id": run.run_id,
                    "rank": rank,
                    "world_size": run.slots,
                    "pool": run.pool,
                    "secret": self._secret,
                    "run_root": self._run_root,
                }
                actor = self._remote.options(
                    name=_rank_name(run.trial_id, run.run_id, rank),
                    namespace=self._namespace,
                    lifetime="detached",
                    num_cpus=0 if gpu else 1,
                    num_gpus=1 if gpu else 0,
                    max_restarts=0,
                    # Threaded: ``wait`` blocks while ``signal`` and ``kill`` must still answer.
                    max_concurrency=8,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=run.group, placement_group_bundle_index=rank
                    ),
                ).remote(meta)
                run.actors.append(actor)
            where = ray.get([a.where.remote() for a in run.actors], timeout=120)
            chief = where[0]
            model = spec.model_definition()
            master = self._master_address()
            token = self._trial_token(run.trial_id, run.run_id)
            starts = []
            for rank, (actor, w) in enumerate(zip(run.actors, where, strict=True)):
                info = {
                    **spec.cluster_info,
                    "container_rank": rank,
                    "container_addrs": [x["ip"] for x in where],
                    "container_slot_counts": [1] * run.slots,
                    "agent_id": w["node_id"],
                }
                launch = {
                    "master": master,
                    "trial_id": run.trial_id,
                    "run_id": run.run_id,
                    "entrypoint": spec.entrypoint,
                    "slots": 1,
                    "report_exit": False,
                    "stop_with_parent": True,
                    "env_args": {
                        "config_env": spec.env,
                        "master": master,
                        "trial_id": run.trial_id,
                        "experiment_id": spec.experiment_id,
                        "run_id": run.run_id,
                        "slots": run.slots,
                        "token": token,
                        "cert_file": self._cert_file,
                    },
                }
                if run.slots > 1:
                    launch["distributed"] = {
                        "first_rank": rank,
                        "world_size": run.slots,
                        "node_rank": rank,
                        "master_addr": chief["ip"],
                        "master_port": chief["port"],
                    }
                starts.append(actor.start.remote(launch, model, info))
            ray.get(starts, timeout=120)
            with self._lock:
                run.refs = [a.wait.remote() for a in run.actors]
                stop = run.stop_signal
            for rank, w in enumerate(where):
                logger.info(
                    "trial %d run %d: rank %d on node %s (%s)",
                    run.trial_id,
                    run.run_id,
                    rank,
                    w["node_id"],
                    w["ip"],
                )
            if stop is not None:  # asked to stop while it was being placed
                self._signal_all(run, stop)
        except Exception:
            logger.exception("trial %d run %d: placing on Ray failed", run.trial_id, run.run_id)
            with self._lock:
                self._finish(run, 1)

    def _signal_all(self, run: _RayRun, signum: int) -> None:
        for a in run.actors:
            if signum == signal.SIGKILL:
                a.kill.remote()
            else:
                a.signal.remote(int(signum))

    def _current(self, trial_id: int, run_id: int) -> _RayRun | None:
        run = self._runs.get(trial_id)
        if run is None or run.run_id != run_id or run.finished:
            return None
        return run

    def terminate(self, trial_id: int, run_id: int) -> bool:
        return self._stop_run(trial_id, run_id, signal.SIGTERM)

    def kill(self, trial_id: int, run_id: int) -> bool:
        return self._stop_run(trial_id, run_id, signal.SIGKILL)

    def _stop_run(self, trial_id: int, run_id: int, signum: signal.Signals) -> bool:
        with self._lock:
            run = self._current(trial_id, run_id)
            if run is None:
                return False
            if not run.refs:  # still being placed: stops as soon as it is
                if run.stop_signal != signal.SIGKILL:
                    run.stop_signal = int(signum)
                return True
        self._signal_all(run, int(signum))
        return True

    def _watch(self) -> None:
        import ray

        last_refresh = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_refresh > self._refresh_s:
                last_refresh = time.monotonic()
                try:
                    self._refresh()
                except Exception:
                    logger.exception("reading the Ray cluster's capacity failed")
            with self._lock:
                waiting = {
                    ref: (r, rank)
                    for r in self._runs.values()
                    if not r.finished
                    for rank, ref in enumerate(r.refs)
                    if rank not in r.codes
                }
            if not waiting:
                self._stop.wait(0.2)
                continue
            try:
                ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.2)
            except Exception:
                logger.exception("waiting for Ray runs failed")
                self._stop.wait(1.0)
                continue
            for ref in ready:
                run, rank = waiting[ref]
                try:
                    code = int(ray.get(ref, timeout=10))
                except Exception as e:
                    logger.warning(
                        "trial %d run %d: rank %d lost (%s)",
                        run.trial_id,
                        run.run_id,
                        rank,
                        type(e).__name__,
                    )
                    code = LOST_EXIT
                self._rank_ended(run, rank, code)

    def _rank_ended(self, run: _RayRun, rank: int, code: int) -> None:
        with self._lock:
            run.codes[rank] = code
            if code != 0 and run.first_failure is None:
                run.first_failure = code
                for i, a in enumerate(run.actors):  # a gang lives and dies together
                    if i not in run.codes:
                        a.kill.remote()
            if len(run.codes) < run.slots or run.finished:
                return
            self._finish(run, run.first_failure or 0)

    def _finish(self, run: _RayRun, code: int) -> None:
        """The run ended: free its Ray resources and tell the engine (called under the lock)."""
        run.finished = True
        if self._runs.get(run.trial_id) is run:
            del self._runs[run.trial_id]
        self._spawn(self._tear_down, run, name=f"ray-teardown-{run.trial_id}")
        if self._on_exit is not None:
            on_exit = self._on_exit
            threading.Thread(
                target=self._report, args=(on_exit, run, code), name="ray-rm-exit", daemon=True
            ).start()

    @staticmethod
    def _report(on_exit: ExitCallback, run: _RayRun, code: int) -> None:
        try:
            on_exit(run.trial_id, run.run_id, code)
        except Exception:
            logger.exception("trial %d: exit handling failed", run.trial_id)

    def _tear_down(self, run: _RayRun) -> None:
        """Remove a run's actors (and their run directories) and its placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        cleanups = []
        for a in run.actors:
            with contextlib.suppress(Exception):
                cleanups.append(a.cleanup.remote())
        if cleanups:
            with contextlib.suppress(Exception):
                ray.wait(cleanups, num_returns=len(cleanups), timeout=15)
        for a in run.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        if run.group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(run.group)

    # -- adoption ----------------------------------------------------------------------------
    def live_runs(self) -> list[LiveRun]:
        import ray

        found: set[tuple[int, int]] = set()
        for name in ray.util.list_named_actors():
            m = _RANK_NAME.match(str(name))
            if m:
                found.add((int(m.group(1)), int(m.group(2))))
        return [LiveRun(trial_id=t, run_id=r, pid=0) for t, r in sorted(found)]

    def _find(self, run: LiveRun) -> tuple[list[Any], list[dict[str, Any]]]:
        """The rank actors of a run left by a previous master, and what each says of itself."""
        import ray

        actors: list[Any] = []
        for rank in range(10_000):
            try:
                actors.append(ray.get_actor(_rank_name(run.trial_id, run.run_id, rank)))
            except ValueError:
                break
        infos: list[dict[str, Any]] = []
        if actors:
            try:
                infos = ray.get([a.info.remote() for a in actors], timeout=30)
            except Exception:
                infos = []
        return actors, infos

    def adopt(self, run: LiveRun, slots: int) -> bool:
        from ray.util import get_placement_group

        actors, infos = self._find(run)
        if len(actors) != slots or len(infos) != slots:
            return False
        for rank, info in enumerate(infos):
            if not (
                hmac.compare_digest(str(info.get("secret", "")), self._secret)
                and info.get("trial_id") == run.trial_id
                and info.get("run_id") == run.run_id
                and info.get("rank") == rank
                and info.get("world_size") == slots
            ):
                return False
        pool = str(infos[0].get("pool") or "")
        group = None
        with contextlib.suppress(Exception):
            group = get_placement_group(_group_name(run.trial_id, run.run_id))
        r = _RayRun(run.trial_id, run.run_id, slots, pool, group=group, actors=actors)
        r.refs = [a.wait.remote() for a in actors]
        with self._lock:
            self._runs[run.trial_id] = r
            self._pool_of[run.trial_id] = pool
            self._scheduler(pool).hold(run.trial_id, slots)
        logger.info("trial %d run %d: adopted %d Ray rank(s)", run.trial_id, run.run_id, slots)
        return True

    def discard(self, run: LiveRun) -> None:
        from ray.util import get_placement_group

        actors, _ = self._find(run)
        group = None
        with contextlib.suppress(Exception):
            group = get_placement_group(_group_name(run.trial_id, run.run_id))
        self._tear_down(_RayRun(run.trial_id, run.run_id, len(actors), "", group, actors))

    # -- files -----------------------------------------------------------------------------
    def trial_paths(self, trial_id: int) -> list[pathlib.Path]:
        return []  # run directories live on the nodes and go with their runs

    def experiment_paths(self, experiment_id: int) -> list[pathlib.Path]:
        return []  # model code is sent with each run


def _probe(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast with a clear error when a ``host:port`` Ray address does not answer
    (``ray.init`` would retry for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"--ray-address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RuntimeError(f"--ray-address {address}: no Ray cluster answers there ({e})") from e


def _rank_host_class() -> type:
    from master_server.rm.ray_rank import RankHost

    return RankHost
