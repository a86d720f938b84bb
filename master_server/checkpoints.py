"""Checkpoint records: reporting, sorting, metadata, deletion of files, streaming downloads.

Bytes go straight from the trial to checkpoint storage (a shared directory or an object store,
``determined_sdk.checkpoint_storage``); the master keeps metadata, removes files there (delete,
GC) and, for clients that cannot reach the storage, streams files on request. Containment
(``master_server.containment``) applies to local directories; an object store's keys are
checked to be plain relative paths.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import pathlib
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from determined_sdk import checkpoint_storage
from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from master_server.containment import check_resources, iter_files, remove_checkpoint_dir
from master_server.domain import (
    TERMINAL_EXPERIMENT_STATES,
    Checkpoint,
    CheckpointState,
    JSONDict,
    PendingJob,
    RemovalTarget,
)
from master_server.engine.jobs import removal_target
from master_server.experiments import ExperimentService
from master_server.store.base import Store

logger = logging.getLogger(__name__)
#: Bytes per streamed chunk: big, so that per-message costs vanish next to the copy itself,
#: and under gRPC's default 4 MiB receive limit, so that any client can read the stream.
CHUNK = 2 << 20


@dataclass(frozen=True)
class DownloadFile:
    """One file of a checkpoint being downloaded: its relative path, size and an opener;
    ``local``: it is a regular file on this machine (``sendfile`` can send it)."""

    path: str
    size: int
    open: Callable[[], IO[bytes]]
    local: bool = False
    #: The contents in order (object stores prefetch ranges); default: read from ``open``.
    read: Callable[[int], Iterator[bytes]] | None = None

    def chunks(self, size: int) -> Generator[bytes, None, None]:
        """The contents in pieces of up to ``size`` bytes (close it to stop early)."""
        if self.read is not None:
            yield from self.read(size)
            return
        with self.open() as f:
            yield from checkpoint_storage.iter_chunks(f, size)


SORT_KEYS = ("uuid", "trial_id", "steps_completed", "report_time", "searcher_metric", "state")


class CheckpointService:
    """Checkpoint operations on top of the store and the storage directory."""

    def __init__(self, store: Store, experiments: ExperimentService) -> None:
        self.store = store
        self.experiments = experiments
        self.jobs = experiments.jobs
        self.jobs.register("gc_experiment", self._gc_job)

    def get(self, uuid: str) -> Checkpoint:
        """The checkpoint with this uuid, or with the one uuid that starts with it (at least
        4 characters, as ``git`` takes commit prefixes).

        Raises:
            NotFoundError: No checkpoint has this uuid or prefix.
            InvalidArgumentError: Several checkpoints start with it.
        """
        if not isinstance(uuid, str) or not uuid:
            raise InvalidArgumentError("uuid: must not be empty")
        try:
            return self.store.get_checkpoint(uuid)
        except NotFoundError:
            if len(uuid) < 4:
                raise
        found = self.store.checkpoint_uuids_starting(uuid, 3)
        if not found:
            raise NotFoundError(f"checkpoint {uuid} not found (no uuid starts with it)")
        if len(found) > 1:
            some = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
            raise InvalidArgumentError(
                f"uuid: {uuid!r} starts several checkpoints' uuids ({some}); give more of it"
            )
        return self.store.get_checkpoint(found[0])

    def report(
        self,
        trial_id: int,
        uuid: str,
        steps_completed: int,
        resources: dict[str, int],
        metadata: JSONDict,
    ) -> Checkpoint:
        if not uuid or "/" in uuid or uuid in (".", ".."):
            raise InvalidArgumentError(f"uuid: {uuid!r} is not a valid checkpoint id")
        if steps_completed < 0:
            raise InvalidArgumentError(f"steps_completed: must be >= 0, got {steps_completed}")
        for path, size in resources.items():
            p = pathlib.PurePosixPath(path)
            if p.is_absolute() or ".." in p.parts or size < 0:
                raise InvalidArgumentError(f"resources: bad entry {path!r} ({size} bytes)")
        trial = self.store.get_trial(trial_id)
        self.experiments.record_activity(trial_id)
        cfg = self.experiments.experiment_config(trial.experiment_id)
        cs = cfg["checkpoint_storage"]
        if checkpoint_storage.is_remote(cs):
            storage: JSONDict = checkpoint_storage.normalize_config(cs)
        else:
            roots = self.experiments.storage_roots
            storage_path = str(cs["path"])
            if roots.contains(storage_path):  # else an unmanaged run's own files, never read
                check_resources(roots.checkpoint_dir(storage_path, uuid), resources)
            storage = {"type": "shared_fs", "path": cs["path"]}
        metadata = dict(metadata)
        metadata.setdefault("steps_completed", steps_completed)
        return self.store.add_checkpoint(
            Checkpoint(
                uuid=uuid,
                trial_id=trial_id,
                experiment_id=trial.experiment_id,
                state=CheckpointState.COMPLETED,
                steps_completed=steps_completed,
                resources=dict(resources),
                metadata=metadata,
                storage=storage,
                report_time=time.time(),
            )
        )

    def list_checkpoints(
        self,
        *,
        experiment_id: int,
        trial_id: int,
        sort_by: str,
        descending: bool | None,
        max_results: int,
        states: Sequence[CheckpointState],
    ) -> list[Checkpoint]:
        if bool(experiment_id) == bool(trial_id):
            raise InvalidArgumentError("give exactly one of experiment_id and trial_id")
        if max_results < 0:
            raise InvalidArgumentError(f"max_results: must be >= 0, got {max_results}")
        exp_id = experiment_id or self.store.get_trial(trial_id).experiment_id
        if experiment_id:
            self.store.get_experiment(experiment_id)
        ckpts = self.store.list_checkpoints(
            experiment_id=experiment_id or None, trial_id=trial_id or None, states=states
        )
        searcher = self.experiments.experiment_config(exp_id)["searcher"]
        smaller = bool(searcher.get("smaller_is_better", True))
        sort_by = sort_by or "report_time"
        if sort_by == "searcher_metric" and not searcher.get("metric"):
            # No searcher metric (an unmanaged run): the default order is by time.
            sort_by = "report_time"
        if sort_by.startswith("metric:") or sort_by == "searcher_metric":
            name = (
                sort_by.removeprefix("metric:")
                if sort_by != "searcher_metric"
                else searcher.get("metric")
            )
            if not name:
                raise InvalidArgumentError("sort_by: the metric name is empty")
            if descending is None:
                descending = not smaller if sort_by == "searcher_metric" else False

            def has(c: Checkpoint) -> bool:
                v = c.validation_metrics.get(str(name))
                return v is not None and not math.isnan(v)

            with_v = [c for c in ckpts if has(c)]
            without = [c for c in ckpts if not has(c)]
            with_v.sort(key=lambda c: c.validation_metrics[str(name)], reverse=bool(descending))
            ckpts = with_v + without  # checkpoints without the metric come last either way
        elif sort_by in SORT_KEYS:
            key: dict[str, Any] = {
                "uuid": lambda c: c.uuid,
                "trial_id": lambda c: (c.trial_id, c.steps_completed),
                "steps_completed": lambda c: (c.steps_completed, c.report_time),
                "report_time": lambda c: c.report_time,
                "state": lambda c: (c.state.value, c.report_time),
            }
            ckpts.sort(key=key[sort_by], reverse=bool(descending))
        else:
            raise InvalidArgumentError(
                f"sort_by: must be one of {', '.join(SORT_KEYS)} or 'metric:<name>', "
                f"got {sort_by!r}"
            )
        return ckpts[:max_results] if max_results else ckpts

    def patch_metadata(
        self, uuid: str, set_values: JSONDict, remove_keys: Sequence[str]
    ) -> Checkpoint:
        ckpt = self.store.get_checkpoint(uuid)
        md = dict(ckpt.metadata)
        md.update(set_values)
        for k in remove_keys:
            if k == "steps_completed":
                raise InvalidArgumentError("remove_keys: steps_completed cannot be removed")
            md.pop(k, None)
        return self.store.update_checkpoint(uuid, metadata=md)

    def delete(self, uuids: Sequence[str]) -> list[Checkpoint]:
        if not uuids:
            raise InvalidArgumentError("uuids: give at least one checkpoint uuid")
        ckpts = [self.store.get_checkpoint(u) for u in uuids]  # all exist, or nothing happens
        live = [c for c in ckpts if c.state != CheckpointState.DELETED]
        if live:
            # Checked (model versions), marked DELETED and recorded in one transaction, then
            # the files go: a checkpoint is never COMPLETED with its files missing.
            paths = [t for t in map(self._removal_or_none, live) if t is not None]
            job = self.store.begin_checkpoint_deletion([c.uuid for c in live], paths)
            self.jobs.run_now(job)
        return [self.store.get_checkpoint(c.uuid) for c in ckpts]

    def remove_orphans(self, root: pathlib.Path, grace_s: float) -> list[str]:
        """Remove checkpoint directories under ``root`` that no record names, once they are
        older than ``grace_s`` (a trial that died before reporting its checkpoint, or a staging
        directory of a sharded one). Reports of checkpoints written while the master was down
        arrive within the grace period, so those are kept. Returns the names removed."""
        if not root.is_dir():
            return []
        cutoff = time.time() - grace_s
        doomed: list[pathlib.Path] = []
        for d in root.iterdir():
            try:
                if not d.is_dir() or d.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            if not d.name.startswith("."):
                try:
                    self.store.get_checkpoint(d.name)
                    continue
                except NotFoundError:
                    pass
            doomed.append(d)
        if doomed:
            job = self.store.add_job(
                "remove_files",
                f"remove_files:orphans:{root}:{time.time_ns()}",
                {"paths": [str(d) for d in doomed]},
            )
            self.jobs.run_now(job)
            logger.info("removed %d orphaned checkpoint directories from %s", len(doomed), root)
        return [d.name for d in doomed]

    def _gc_job(self, job: PendingJob) -> bool:
        experiment_id = int(job.payload["experiment_id"])
        try:
            exp = self.store.get_experiment(experiment_id)
        except NotFoundError:
            return True  # deleted meanwhile: its deletion removes every file
        if exp.state not in TERMINAL_EXPERIMENT_STATES:
            return False  # not finished yet (recorded just before its final state was written)
        self.garbage_collect(experiment_id)
        return True

    def remove_files(self, uuid: str, globs: Sequence[str]) -> Checkpoint:
        """Delete a checkpoint's files matching any of ``globs`` (relative to its directory).

        The checkpoint becomes PARTIALLY_DELETED, or DELETED when no file is left; its
        ``resources`` lose the removed files. Idempotent: a glob that matches nothing is fine.

        Raises:
            InvalidArgumentError: no globs, or a glob that is absolute or leaves the directory.
            FailedPreconditionError: the checkpoint is DELETED.
            NotFoundError: no such checkpoint.
        """
        if not globs:
            raise InvalidArgumentError("globs: give at least one pattern")
        for g in globs:
            parts = pathlib.PurePosixPath(g).parts
            if not g or g.startswith("/") or ".." in parts:
                raise InvalidArgumentError(f"globs: {g!r} must be relative to the checkpoint")
        c = self.store.get_checkpoint(uuid)
        if c.state == CheckpointState.DELETED:
            raise FailedPreconditionError(f"checkpoint {uuid!r} is DELETED; its files are gone")
        remote = checkpoint_storage.is_remote(c.storage)
        # Inside the storage roots (or FailedPreconditionError), for a local directory.
        root = None if remote else self._dir(c)
        doomed = {
            rel
            for rel in c.resources
            if any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(rel, g + "/*") for g in globs)
        }
        left = {k: v for k, v in c.resources.items() if k not in doomed}
        if root is None:
            store = checkpoint_storage.from_config(c.storage)
            if left:
                store.delete_files(uuid, sorted(doomed))
            else:
                store.delete(uuid)
        else:
            for rel in doomed:
                (root / rel).unlink(missing_ok=True)
            if not left:
                remove_checkpoint_dir(self.experiments.storage_roots, root)
        state = CheckpointState.PARTIALLY_DELETED if left else CheckpointState.DELETED
        if not doomed and c.state != CheckpointState.PARTIALLY_DELETED:
            state = c.state
        return self.store.update_checkpoint(uuid, state=state, resources=left)

    def garbage_collect(self, experiment_id: int) -> list[str]:
        """Delete the checkpoints a finished experiment's config does not keep.

        Kept: per trial the ``save_trial_latest`` latest and the ``save_trial_best`` best (by the
        searcher metric), the experiment's ``save_experiment_best`` best, and every checkpoint
        registered as a model version. Returns the uuids deleted.
        """
        cfg = self.experiments.experiment_config(experiment_id)
        cs, searcher = cfg.get("checkpoint_storage", {}), cfg["searcher"]
        metric, smaller = searcher.get("metric"), bool(searcher.get("smaller_is_better", True))
        ckpts = self.store.list_checkpoints(
            experiment_id=experiment_id, states=[CheckpointState.COMPLETED]
        )
        if not ckpts:
            return []

        def best_first(cs_: list[Checkpoint]) -> list[Checkpoint]:
            scored = [
                c
                for c in cs_
                if metric in c.validation_metrics and not math.isnan(c.validation_metrics[metric])
            ]
            return sorted(scored, key=lambda c: c.validation_metrics[metric], reverse=not smaller)

        keep: set[str] = set()
        by_trial: dict[int, list[Checkpoint]] = {}
        for c in ckpts:
            by_trial.setdefault(c.trial_id, []).append(c)
        for trial_ckpts in by_trial.values():
            latest = sorted(trial_ckpts, key=lambda c: (c.steps_completed, c.report_time))
            n_latest = int(cs.get("save_trial_latest", 1))
            keep.update(c.uuid for c in (latest[-n_latest:] if n_latest else []))
            keep.update(
                c.uuid for c in best_first(trial_ckpts)[: int(cs.get("save_trial_best", 1))]
            )
        keep.update(c.uuid for c in best_first(ckpts)[: int(cs.get("save_experiment_best", 0))])
        for model in self.store.list_models(include_archived=True):
            keep.update(v.checkpoint_uuid for v in self.store.list_model_versions(model.name))
        doomed = [c.uuid for c in ckpts if c.uuid not in keep]
        if doomed:
            self.delete(doomed)
        return doomed

    def download_files(self, uuid: str) -> list[DownloadFile]:
        """The checkpoint's files to stream, every check done before a byte is sent.

        Raises:
            NotFoundError: no such checkpoint.
            FailedPreconditionError: it is DELETED, its files are missing, its directory is
                outside the storage roots, or a file escapes it (a symlink out, a key with
                ``..``).
        """
        c = self.store.get_checkpoint(uuid)
        if c.state == CheckpointState.DELETED:
            raise FailedPreconditionError(f"checkpoint {uuid!r} is DELETED; its files are gone")
        if checkpoint_storage.is_remote(c.storage):
            store = checkpoint_storage.from_config(c.storage)
            listed = store.list_files(c.uuid)
            if not listed:
                raise FailedPreconditionError(
                    f"checkpoint {uuid!r}: its files are missing from {store.url(c.uuid)}"
                )
            out: list[DownloadFile] = []
            for rel, size in sorted(listed.items()):
                try:
                    checkpoint_storage.check_relative(rel)
                except InvalidArgumentError:
                    raise FailedPreconditionError(
                        f"checkpoint {uuid}: object {rel!r} is not a plain relative path; refused"
                    ) from None
                out.append(
                    DownloadFile(
                        rel, size, _opener(store, c.uuid, rel), read=_reader(store, c.uuid, rel)
                    )
                )
            return out
        root = self._dir(c)
        if not root.is_dir():
            raise FailedPreconditionError(f"checkpoint {uuid!r}: its files are missing from {root}")
        # Every escape is refused before a byte is sent.
        return [
            DownloadFile(rel, full.stat().st_size, _local_opener(full), local=True)
            for rel, full in iter_files(root)
        ]

    def download(self, uuid: str) -> Iterator[tuple[str, int, bytes, int]]:
        """Yield (relative path, offset, data, file size) chunks of every file; an empty file
        is one chunk with no data. The checks run when the first chunk is asked for."""
        for f in self.download_files(uuid):
            offset = 0
            for data in f.chunks(CHUNK):
                yield f.path, offset, data, f.size
                offset += len(data)
            if offset == 0:
                yield f.path, 0, b"", f.size

    def _removal_or_none(self, c: Checkpoint) -> RemovalTarget | None:
        """What deleting checkpoint ``c`` removes: its object-storage files, or its local
        directory when the master may delete it (see :meth:`_dir_or_none`)."""
        if checkpoint_storage.is_remote(c.storage):
            return removal_target(c.storage, c.uuid)
        d = self._dir_or_none(c)
        return None if d is None else str(d)

    def _dir_or_none(self, c: Checkpoint) -> pathlib.Path | None:
        """The checkpoint's directory when the master may delete it (inside its storage roots;
        an unmanaged run's checkpoint elsewhere is only forgotten, never deleted)."""
        if not c.storage.get("path"):
            return None
        try:
            return self._dir(c)
        except FailedPreconditionError as e:
            logger.warning("checkpoint %s: files left in place: %s", c.uuid, e)
            return None

    def _dir(self, c: Checkpoint) -> pathlib.Path:
        return self.experiments.storage_roots.checkpoint_dir(str(c.storage.get("path", "")), c.uuid)


def _opener(
    store: checkpoint_storage.CheckpointStorage, uuid: str, rel: str
) -> Callable[[], IO[bytes]]:
    return lambda: store.open(uuid, rel)


def _local_opener(path: pathlib.Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")


def _reader(
    store: checkpoint_storage.CheckpointStorage, uuid: str, rel: str
) -> Callable[[int], Iterator[bytes]]:
    return lambda size: store.iter_file(uuid, rel, size)
