"""Checkpoints: :class:`CheckpointContext`, over ``determined_sdk.checkpoint_storage``.

Checkpoint bytes go straight from the trial to storage (``<base>/<storage_id>/``); the master
only records what was written (``ReportCheckpoint`` with the files' sizes and the user's
metadata). Every checkpoint directory also holds ``metadata.json``.

On a shared filesystem, files are written and read in place. On object storage (s3, gcs,
azure) :meth:`CheckpointContext.store_path` hands out a local temporary directory whose files
are uploaded when the ``with`` block exits cleanly (before the checkpoint is reported), and
:meth:`CheckpointContext.restore_path` downloads into a local temporary directory.

Sharded checkpoints (``shard=True``) are written by every rank: each rank writes into its own
staging directory, then the shards are merged into one checkpoint. The same relative path
written by two ranks is fine if the bytes are identical and an error naming the file if not;
the ranks' metadata dicts are merged (a key with different values on two ranks is an error).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from core_api._channel import MasterSession
from core_api._distributed import DistributedContext
from core_api._train import ContextClosedError
from determined_sdk import errors
from determined_sdk.checkpoint_storage import (
    CheckpointStorage,
    SharedFSStorage,
    from_config,
    list_local_files,
)
from determined_sdk.proto import checkpoint_pb2

logger = logging.getLogger(__name__)

JSONDict = dict[str, Any]
Selector = Callable[[str], bool]
METADATA_FILE = "metadata.json"


class DownloadMode(enum.Enum):
    """How ranks fetch a checkpoint (kept for Determined compatibility).

    With shared-filesystem storage every rank reads the files in place, so the modes behave
    the same; with object storage every rank that restores downloads its own copy.
    """

    LocalWorkersShareDownload = "LOCAL_WORKERS_SHARE_DOWNLOAD"
    NoSharedDownload = "NO_SHARED_DOWNLOAD"


def _check_storage_id(storage_id: Any) -> str:
    if not isinstance(storage_id, str) or not storage_id:
        raise TypeError(f"storage_id must be a non-empty str, got {storage_id!r}")
    if "/" in storage_id or "\\" in storage_id or storage_id in (".", ".."):
        raise errors.NotFoundError(f"checkpoint {storage_id!r} not found")
    return storage_id


def _check_metadata(metadata: Any) -> JSONDict:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if "steps_completed" not in metadata:
        raise ValueError("checkpoint metadata must contain 'steps_completed'")
    steps = metadata["steps_completed"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(
            f"checkpoint metadata 'steps_completed' must be an int >= 0, got {steps!r}"
        )
    out = dict(metadata)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata must be JSON-serializable: {exc}") from exc
    return out


def _list_files(root: pathlib.Path) -> dict[str, int]:
    """Relative POSIX path -> size of every regular file under ``root``."""
    return list_local_files(root)


def _digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _merge_metadata(per_rank: list[JSONDict]) -> JSONDict:
    merged: JSONDict = {}
    owner: dict[str, int] = {}
    for rank, md in enumerate(per_rank):
        for key, value in md.items():
            if key in merged and merged[key] != value:
                raise ValueError(
                    f"sharded checkpoint metadata {key!r} differs between rank {owner[key]} "
                    f"({merged[key]!r}) and rank {rank} ({value!r})"
                )
            if key not in merged:
                merged[key] = value
                owner[key] = rank
    return merged


class CheckpointContext:
    """Store, upload, download, restore and delete checkpoints.

    Args:
        dist: the distributed context (non-sharded writes are the chief's job).
        storage: where checkpoint bytes go.
        session: the master session, or None off-cluster (nothing is reported).
        trial_id: the trial checkpoints are reported against.
        before_report: called before each report (the Context flushes pending metrics, so
            the master can attach the metrics at the checkpoint's step).
        send_report: when given, reports go through it instead (the Context's metrics sender:
            in order after earlier metrics, buffered while the master is unreachable).
    """

    def __init__(
        self,
        dist: DistributedContext,
        storage: CheckpointStorage,
        session: MasterSession | None = None,
        *,
        trial_id: int = 0,
        before_report: Callable[[], None] | None = None,
        send_report: Callable[[checkpoint_pb2.ReportCheckpointRequest], object] | None = None,
    ) -> None:
        self._dist = dist
        self._storage = storage
        self._session = session
        self._trial_id = trial_id
        self._before_report = before_report
        self._send_report = send_report
        self._closed = False

    @property
    def storage(self) -> CheckpointStorage:
        """Where this context writes checkpoints."""
        return self._storage

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def store_path(
        self, metadata: Mapping[str, Any], *, shard: bool = False
    ) -> Iterator[tuple[pathlib.Path, str]]:
        """A directory to write a checkpoint into; on a clean exit it is stored and reported.

        Args:
            metadata: user metadata; must contain ``steps_completed``.
            shard: every rank writes part of the checkpoint (all ranks must call this).

        Yields:
            ``(path, storage_id)``: write your files under ``path``.

        Raises:
            ValueError: ``steps_completed`` missing, or conflicting sharded files/metadata.
            RuntimeError: a non-chief rank called it without ``shard=True``.
        """
        self._check_open()
        md = _check_metadata(metadata)
        if not shard:
            if not self._dist.is_chief:
                raise RuntimeError(
                    "store_path(shard=False) may only be called on the chief (rank 0); "
                    "use shard=True to have every rank write part of the checkpoint"
                )
            storage_id = str(uuid.uuid4())
            in_place = self._storage.local_dir(storage_id)
            if in_place is None:  # object storage: a local directory, uploaded on exit
                import tempfile  # not loaded by a trial that stores no checkpoint

                with tempfile.TemporaryDirectory(prefix=f"ckpt-{storage_id}-") as tmp:
                    yield pathlib.Path(tmp), storage_id
                    self._finish(storage_id, pathlib.Path(tmp), md, _list_files(pathlib.Path(tmp)))
                return
            in_place.mkdir(parents=True)
            try:
                yield in_place, storage_id
            except BaseException:
                shutil.rmtree(in_place, ignore_errors=True)
                raise
            self._finish(storage_id, in_place, md, _list_files(in_place))
            return

        storage_id = self._dist.broadcast(str(uuid.uuid4()) if self._dist.is_chief else None)
        name = f".staging-{storage_id}-rank{self._dist.rank}"
        base = self._local_base()
        import tempfile  # not loaded by a trial that stores no checkpoint

        staging = base / name if base is not None else pathlib.Path(tempfile.mkdtemp(prefix=name))
        staging.mkdir(parents=True, exist_ok=base is None)
        try:
            yield staging, storage_id
        except BaseException:
            self._dist.allgather(None)  # tell the other ranks this one failed
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            self._merge_shards(storage_id, staging, md)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _local_base(self) -> pathlib.Path | None:
        """The shared directory checkpoints live in, or None for object storage."""
        return self._storage.base if isinstance(self._storage, SharedFSStorage) else None

    def upload(
        self,
        ckpt_dir: str | os.PathLike[str] | None,
        metadata: Mapping[str, Any],
        *,
        shard: bool = False,
    ) -> str:
        """Copy a local directory into storage as a new checkpoint and report it.

        Args:
            ckpt_dir: the directory to copy (None: nothing from this rank, sharded only).
            metadata: user metadata; must contain ``steps_completed``.
            shard: every rank uploads part of the checkpoint (all ranks must call this).

        Returns:
            The new checkpoint's storage id.
        """
        if ckpt_dir is None and not shard:
            raise ValueError("ckpt_dir is required unless shard=True")
        src = pathlib.Path(ckpt_dir) if ckpt_dir is not None else None
        if src is not None and not src.is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(src)!r} does not exist")
        with self.store_path(metadata, shard=shard) as (path, storage_id):
            if src is not None:
                shutil.copytree(src, path, dirs_exist_ok=True)
        return storage_id

    def _merge_shards(self, storage_id: str, staging: pathlib.Path, md: JSONDict) -> None:
        dist = self._dist
        files = _list_files(staging)
        shards = dist.allgather((files, md))
        if any(s is None for s in shards):
            shutil.rmtree(staging, ignore_errors=True)
            failed = [r for r, s in enumerate(shards) if s is None]
            raise RuntimeError(f"sharded checkpoint {storage_id} failed on rank(s) {failed}")
        holders: dict[str, list[int]] = {}
        for rank, (rank_files, _md) in enumerate(shards):
            for rel in rank_files:
                holders.setdefault(rel, []).append(rank)
        shared = sorted(rel for rel, ranks in holders.items() if len(ranks) > 1)
        problem: str | None = None
        try:
            merged_md = _merge_metadata([m for _f, m in shards])
        except ValueError as exc:
            problem = str(exc)
            merged_md = {}
        if shared:
            mine = {rel: _digest(staging / rel) for rel in shared if rel in files}
            digests = dist.allgather(mine)
            for rel in shared:
                seen = {digests[r][rel] for r in holders[rel]}
                if len(seen) > 1 and problem is None:
                    problem = (
                        f"sharded checkpoint file {rel!r} was written by ranks {holders[rel]} "
                        "with different content"
                    )
        if problem is not None:
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(problem)
        owned = [rel for rel in files if holders[rel][0] == dist.rank]
        final = self._storage.local_dir(storage_id)
        if final is None:  # object storage: each rank uploads the files it holds first
            self._storage.put(storage_id, staging, owned)
            final = staging  # the chief writes metadata.json here and uploads it
        else:
            final.mkdir(parents=True, exist_ok=True)
            for rel in owned:
                dst = final / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, dst)
        dist.allgather(None)  # every shard is in place before the chief reports
        if dist.is_chief:
            resources: dict[str, int] = {}
            for rank_files, _md in shards:
                resources.update(rank_files)
            self._finish(storage_id, final, merged_md, resources, upload=[])
        dist.allgather(None)  # and nobody returns before the checkpoint is reported

    def _finish(
        self,
        storage_id: str,
        path: pathlib.Path,
        md: JSONDict,
        resources: dict[str, int],
        *,
        upload: list[str] | None = None,
    ) -> None:
        """Write ``metadata.json``, store the files (``upload``: which of ``path``'s files
        besides it; default all of ``resources``) and report the checkpoint."""
        meta_path = path / METADATA_FILE
        meta_path.write_text(json.dumps(md, indent=2, sort_keys=True))
        resources = dict(resources)
        resources[METADATA_FILE] = meta_path.stat().st_size
        # Every byte is in storage before the master hears of the checkpoint (in place on a
        # shared filesystem: nothing to copy).
        names = sorted(resources) if upload is None else [*upload, METADATA_FILE]
        self._storage.put(storage_id, path, names)
        if self._session is None:
            logger.info(
                "checkpoint %s stored at %s (steps_completed=%s)",
                storage_id,
                path,
                md["steps_completed"],
            )
            return
        request = checkpoint_pb2.ReportCheckpointRequest(
            trial_id=self._trial_id,
            uuid=storage_id,
            steps_completed=int(md["steps_completed"]),
            resources=resources,
            metadata_json=json.dumps(md),
        )
        if self._send_report is not None:
            self._send_report(request)
            return
        if self._before_report is not None:
            self._before_report()
        session = self._session
        try:
            session.call(session.checkpoints.ReportCheckpoint, request)
        except errors.AlreadyExistsError:
            # An earlier attempt whose reply was lost already stored it.
            logger.debug("checkpoint %s was already reported", storage_id)

    # -- reading --------------------------------------------------------------------------
    def _locate(self, storage_id: str) -> tuple[CheckpointStorage, JSONDict | None]:
        """The storage holding the checkpoint's files, and its master record's metadata."""
        storage_id = _check_storage_id(storage_id)
        record: JSONDict | None = None
        storage = self._storage
        if self._session is not None:
            session = self._session
            try:
                resp = session.call(
                    session.checkpoints.GetCheckpoint,
                    checkpoint_pb2.GetCheckpointRequest(uuid=storage_id),
                )
            except (errors.NotFoundError, errors.InvalidArgumentError) as exc:
                raise errors.NotFoundError(f"checkpoint {storage_id!r} not found") from exc
            ckpt = resp.checkpoint
            record = json.loads(ckpt.metadata_json) if ckpt.metadata_json else {}
            if ckpt.storage_json:
                try:
                    storage = from_config(json.loads(ckpt.storage_json))
                except ValueError:
                    storage = self._storage
        if not storage.list_files(storage_id) and storage is not self._storage:
            storage = self._storage  # stored under an overridden base
        if not storage.list_files(storage_id):
            if record is None:
                raise errors.NotFoundError(f"checkpoint {storage_id!r} not found")
            raise errors.NotFoundError(
                f"checkpoint {storage_id!r} has no files at {storage.url(storage_id)!r} (deleted?)"
            )
        return storage, record

    def download(
        self,
        storage_id: str,
        ckpt_dir: str | os.PathLike[str],
        *,
        selector: Selector | None = None,
        download_mode: DownloadMode = DownloadMode.LocalWorkersShareDownload,
    ) -> None:
        """Copy a checkpoint's files into ``ckpt_dir``.

        Args:
            storage_id: the checkpoint's id.
            ckpt_dir: destination directory (created if needed).
            selector: keep only files whose relative path it accepts.
            download_mode: accepted for compatibility (see :class:`DownloadMode`).

        Raises:
            NotFoundError: no such checkpoint.
        """
        self._check_open()
        storage, _ = self._locate(storage_id)
        storage.get(storage_id, pathlib.Path(ckpt_dir), selector)

    @contextlib.contextmanager
    def restore_path(
        self,
        storage_id: str,
        *,
        selector: Selector | None = None,
        download_mode: DownloadMode = DownloadMode.LocalWorkersShareDownload,
    ) -> Iterator[pathlib.Path]:
        """A local directory holding the checkpoint's files, for the ``with`` block.

        Shared-filesystem checkpoints are read in place (treat the directory as read-only);
        with a ``selector``, or from object storage, the (accepted) files are downloaded to a
        temporary directory, removed after the block.

        Raises:
            NotFoundError: no such checkpoint.
        """
        self._check_open()
        storage, _ = self._locate(storage_id)
        in_place = storage.local_dir(storage_id)
        if selector is None and in_place is not None:
            yield in_place
            return
        import tempfile  # not loaded by a trial that stores no checkpoint

        with tempfile.TemporaryDirectory(prefix=f"ckpt-{storage_id}-") as tmp:
            storage.get(storage_id, pathlib.Path(tmp), selector)
            yield pathlib.Path(tmp)

    def get_metadata(self, storage_id: str) -> JSONDict:
        """The checkpoint's user metadata (as stored by the master, or its ``metadata.json``).

        Raises:
            NotFoundError: no such checkpoint.
        """
        self._check_open()
        storage_id = _check_storage_id(storage_id)
        if self._session is not None:
            session = self._session
            try:
                resp = session.call(
                    session.checkpoints.GetCheckpoint,
                    checkpoint_pb2.GetCheckpointRequest(uuid=storage_id),
                )
            except (errors.NotFoundError, errors.InvalidArgumentError) as exc:
                raise errors.NotFoundError(f"checkpoint {storage_id!r} not found") from exc
            md = resp.checkpoint.metadata_json
            return dict(json.loads(md)) if md else {}
        storage, _ = self._locate(storage_id)
        if METADATA_FILE not in storage.list_files(storage_id):
            return {}
        with storage.open(storage_id, METADATA_FILE) as f:
            return dict(json.loads(f.read()))

    def delete(self, storage_id: str) -> None:
        """Delete a checkpoint (its record on the master and, off-cluster, its files).

        On a cluster the master owns the files and removes them.

        Raises:
            NotFoundError: no such checkpoint.
        """
        self._check_open()
        storage_id = _check_storage_id(storage_id)
        if self._session is not None:
            session = self._session
            try:
                session.call(
                    session.checkpoints.DeleteCheckpoints,
                    checkpoint_pb2.DeleteCheckpointsRequest(uuids=[storage_id]),
                )
            except (errors.NotFoundError, errors.InvalidArgumentError) as exc:
                raise errors.NotFoundError(f"checkpoint {storage_id!r} not found") from exc
            return
        if not self._storage.list_files(storage_id):
            raise errors.NotFoundError(f"checkpoint {storage_id!r} not found")
        self._storage.delete(storage_id)

    def close(self) -> None:
        """Refuse further calls."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ContextClosedError("the core_api context is closed (close() was called)")
