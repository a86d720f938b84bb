"""Durable side work: file removals, experiment deletions and checkpoint GC.

Every job is recorded in the database (``Store.add_job`` or one of the ``begin_*_deletion``
calls, which also mark the records in the same transaction) *before* anything is removed, and
forgotten only when its work is done. A worker thread runs pending jobs; on start the master
runs the ones a previous process left. Handlers are idempotent (removing a removed directory
is a no-op), so a job interrupted half way is simply run again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable

from determined_sdk import checkpoint_storage
from determined_sdk.errors import NotFoundError
from master_server.domain import JSONDict, PendingJob, RemovalTarget
from master_server.store.base import Store

logger = logging.getLogger(__name__)

#: A handler does the job's work; it returns False to leave the job pending for later
#: (the work is not due yet) and raises when it failed (the job stays pending, retried later).
Handler = Callable[[PendingJob], bool]


class JobRunner:
    """Runs pending jobs: inline for calls that answer when done, else on a worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._handlers: dict[str, Handler] = {
            "remove_files": self._remove_files,
            "delete_experiment": self._delete_experiment,
        }
        self._exec_lock = threading.RLock()  # one job at a time; handlers may nest (GC)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[int] = set()  # failed in this process: retried at the next start

    def register(self, kind: str, handler: Handler) -> None:
        """Handle jobs of ``kind`` with ``handler``."""
        self._handlers[kind] = handler

    def start(self) -> None:
        """Start the worker and run what a previous master left pending."""
        self._thread = threading.Thread(target=self._loop, name="pending-jobs", daemon=True)
        self._thread.start()
        self.kick()

    def kick(self) -> None:
        """Ask the worker to look for pending jobs."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the worker after the job it is running; pending jobs stay recorded."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run_now(self, job: PendingJob) -> None:
        """Run ``job`` on this thread (for calls that answer when the work is done).

        Raises what the handler raised; the job then stays pending for the next start.
        """
        with self._exec_lock:
            self._run(job, raise_errors=True)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                jobs = self.store.list_jobs()
            except Exception:
                logger.exception("could not read pending jobs")
                continue
            for job in jobs:
                if self._stop.is_set():
                    return
                if job.id in self._failed:
                    continue
                with self._exec_lock:
                    self._run(job, raise_errors=False)

    def _run(self, job: PendingJob, *, raise_errors: bool) -> None:
        handler = self._handlers.get(job.kind)
        if handler is None:
            logger.error("pending job %d: unknown kind %r (left pending)", job.id, job.kind)
            self._failed.add(job.id)
            return
        try:
            done = handler(job)
        except Exception:
            self._failed.add(job.id)
            if raise_errors:
                raise
            logger.exception(
                "pending job %d (%s) failed; it is retried on restart", job.id, job.kind
            )
            return
        if done:
            self.store.finish_job(job.id)
            logger.debug("pending job %d (%s) done", job.id, job.kind)

    # -- built-in kinds ------------------------------------------------------------------------
    @staticmethod
    def _remove_files(job: PendingJob) -> bool:
        for p in job.payload.get("paths", []):
            if isinstance(p, dict):  # a checkpoint in object storage
                storage = checkpoint_storage.from_config(p["storage"])
                storage.delete(str(p["uuid"]))
                if storage.list_files(str(p["uuid"])):
                    raise OSError(f"could not remove {storage.url(str(p['uuid']))}")
                continue
            shutil.rmtree(str(p), ignore_errors=True)
            if os.path.lexists(str(p)):
                raise OSError(f"could not remove {p}")
        return True

    def _delete_experiment(self, job: PendingJob) -> bool:
        # Records first: a checkpoint must never be listed COMPLETED once its files are gone.
        with contextlib.suppress(NotFoundError):
            self.store.delete_experiment(int(job.payload["experiment_id"]))
        return self._remove_files(job)


def removal_target(storage: JSONDict, uuid: str) -> RemovalTarget | None:
    """What a removal job removes for checkpoint ``uuid`` stored as ``storage`` (its record):
    the object-storage checkpoint, or its local directory (None: no location recorded)."""
    if checkpoint_storage.is_remote(storage):
        return {"storage": dict(storage), "uuid": uuid}
    if not storage.get("path"):
        return None
    return os.path.join(str(storage["path"]), uuid)
