"""The :class:`Checkpoint` resource, checkpoint listing and downloading."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import pathlib
import shutil
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from determined_sdk import checkpoint_storage, checkpoint_wire, errors
from determined_sdk._enums import CheckpointSortBy, CheckpointState, DownloadMode, OrderBy
from determined_sdk._resource import (
    Resource,
    SessionLike,
    check_limit,
    dumps,
    loads,
    str_list,
)
from determined_sdk._session import Session
from determined_sdk.proto import checkpoint_pb2, experiment_pb2, trial_pb2

logger = logging.getLogger(__name__)
_F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's capacity
_PIPE_BYTES = 1 << 20  # the default pipe-max-size


@dataclass(frozen=True)
class CheckpointTrainingMetadata:
    """What a training run knew when it saved a checkpoint (Determined's shape).

    Attributes:
        experiment_config: The experiment's validated config.
        experiment_id: The experiment.
        trial_id: The trial.
        hparams: The trial's hyperparameters.
        validation_metrics: ``{"avgMetrics": {name: value}, "batchMetrics": []}``, the
            validation report at or before the checkpoint's step.
    """

    experiment_config: dict[str, Any]
    experiment_id: int
    trial_id: int
    hparams: dict[str, Any]
    validation_metrics: dict[str, Any]


class Checkpoint(Resource[checkpoint_pb2.Checkpoint]):
    """A checkpoint: files a trial saved at some step, plus what the master knows about them.

    ``Checkpoint(uuid, session)`` builds a blank object without a request; reading a cached
    attribute fetches it once. Cached attributes (refreshed by :meth:`reload`): ``state``,
    ``metadata``, ``resources``, ``trial_id``, ``experiment_id``, ``steps_completed``,
    ``training_metrics``, ``validation_metrics``, ``storage``, ``report_time``.
    :meth:`add_metadata`/:meth:`remove_metadata` update ``metadata`` and :meth:`delete`
    updates ``state``.

    Args:
        uuid: The checkpoint's UUID.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, uuid: str, session: SessionLike | None = None) -> None:
        if not isinstance(uuid, str) or not uuid:
            raise errors.InvalidArgumentError(f"uuid: must be a non-empty string, got {uuid!r}")
        super().__init__(session)
        self.uuid = uuid
        self._training: CheckpointTrainingMetadata | None = None

    @classmethod
    def _from_proto(cls, msg: checkpoint_pb2.Checkpoint, session: Session) -> Checkpoint:
        ckpt = cls(msg.uuid, session)
        ckpt._set(msg)
        return ckpt

    def _fetch(self) -> checkpoint_pb2.Checkpoint:
        req = checkpoint_pb2.GetCheckpointRequest(uuid=self.uuid)
        return self._session.get_checkpoint(req).checkpoint

    # -- cached attributes ------------------------------------------------------------------
    @property
    def state(self) -> CheckpointState:
        """State (cached)."""
        return CheckpointState._from_proto(self._m().state)

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata dict; always has ``steps_completed`` (cached)."""
        metadata: dict[str, Any] = self._json("metadata_json")
        return metadata

    @property
    def resources(self) -> dict[str, int]:
        """Relative file path -> size in bytes (cached)."""
        return dict(self._m().resources)

    @property
    def trial_id(self) -> int:
        """Id of the trial that saved it (cached)."""
        return self._m().trial_id

    @property
    def experiment_id(self) -> int:
        """Id of its experiment (cached)."""
        return self._m().experiment_id

    @property
    def steps_completed(self) -> int:
        """Training steps done when it was saved (cached)."""
        return self._m().steps_completed

    @property
    def training_metrics(self) -> dict[str, float]:
        """The last training report at or before its step (cached)."""
        return dict(self._m().training_metrics)

    @property
    def validation_metrics(self) -> dict[str, float]:
        """The last validation report at or before its step (cached)."""
        return dict(self._m().validation_metrics)

    @property
    def storage(self) -> dict[str, Any]:
        """Where the files live (no secrets): ``{"type": "shared_fs", "path": base}`` with
        bytes in ``base/uuid``, or ``{"type": "s3", "bucket", "prefix", "endpoint_url"}`` with
        objects under ``prefix/uuid/`` (cached)."""
        storage: dict[str, Any] = self._json("storage_json")
        return storage

    @property
    def report_time(self) -> float:
        """Unix time it was reported (cached)."""
        return self._m().report_time

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes in :attr:`resources` (cached)."""
        return sum(self._m().resources.values())

    @property
    def task_id(self) -> str:
        """The task that saved it, ``"<experiment>.<trial>"`` as ``ClusterInfo.task_id``."""
        return f"{self.experiment_id}.{self.trial_id}"

    @property
    def allocation_id(self) -> str | None:
        """Determined's allocation id; None (runs of a trial are not recorded per checkpoint)."""
        return None

    @property
    def storage_id(self) -> int | None:
        """Determined's storage-config id; None (storage is described by :attr:`storage`)."""
        return None

    @property
    def training(self) -> CheckpointTrainingMetadata:
        """Determined's training metadata: the experiment config, ids, hparams and the
        validation metrics at the checkpoint's step. Fetched once (trial and experiment)."""
        if self._training is None:
            s = self._session
            trial = s.get_trial(trial_pb2.GetTrialRequest(trial_id=self.trial_id)).trial
            exp = s.get_experiment(
                experiment_pb2.GetExperimentRequest(experiment_id=self.experiment_id)
            ).experiment
            self._training = CheckpointTrainingMetadata(
                experiment_config=loads(exp.config_json),
                experiment_id=self.experiment_id,
                trial_id=self.trial_id,
                hparams=loads(trial.hparams_json),
                validation_metrics={
                    "avgMetrics": self.validation_metrics,
                    "batchMetrics": [],
                },
            )
        return self._training

    # -- calls ------------------------------------------------------------------------------
    def add_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the checkpoint's metadata on the master and locally.

        Args:
            metadata: Keys and JSON-serializable values to set.

        Raises:
            InvalidArgumentError: ``metadata`` is not a dict of JSON values.
            NotFoundError: The checkpoint does not exist.
        """
        if not isinstance(metadata, dict):
            raise errors.InvalidArgumentError(
                f"metadata: must be a dict, got {type(metadata).__name__}"
            )
        req = checkpoint_pb2.PatchCheckpointMetadataRequest(
            uuid=self.uuid, set_json=dumps(metadata, "metadata")
        )
        self._update_metadata(self._session.patch_checkpoint_metadata(req).checkpoint)

    def remove_metadata(self, keys: Iterable[str] | str) -> None:
        """Remove keys from the checkpoint's metadata on the master and locally.

        Args:
            keys: Top-level keys to remove (missing keys are ignored).

        Raises:
            NotFoundError: The checkpoint does not exist.
        """
        req = checkpoint_pb2.PatchCheckpointMetadataRequest(
            uuid=self.uuid, remove_keys=str_list(keys, "keys")
        )
        self._update_metadata(self._session.patch_checkpoint_metadata(req).checkpoint)

    def _update_metadata(self, fresh: checkpoint_pb2.Checkpoint) -> None:
        if self._msg is None:
            self._set(fresh)
            return
        self._msg.metadata_json = fresh.metadata_json
        self._parsed.pop("metadata_json", None)

    def delete(self) -> None:
        """Delete the checkpoint's files and mark it DELETED (updates ``state``).

        Raises:
            NotFoundError: The checkpoint does not exist.
        """
        req = checkpoint_pb2.DeleteCheckpointsRequest(uuids=[self.uuid])
        resp = self._session.delete_checkpoints(req)
        for c in resp.checkpoints:
            if c.uuid == self.uuid and self._msg is not None:
                self._msg.state = c.state
                self._msg.resources.clear()
                self._msg.resources.update(c.resources)

    def remove_files(self, globs: Iterable[str] | str) -> None:
        """Delete the files matching any glob (paths relative to the checkpoint, ``*`` matches
        across ``/``; a directory name takes its files); the checkpoint becomes
        PARTIALLY_DELETED, or DELETED when none are left. Updates ``state`` and ``resources``.

        Raises:
            InvalidArgumentError: No globs, or one that is absolute or leaves the checkpoint.
            FailedPreconditionError: The checkpoint is already DELETED.
            NotFoundError: The checkpoint does not exist.
        """
        req = checkpoint_pb2.RemoveCheckpointFilesRequest(
            uuid=self.uuid, globs=str_list(globs, "globs")
        )
        self._set(self._session.remove_checkpoint_files(req).checkpoint)

    def download(
        self,
        path: str | os.PathLike[str] | None = None,
        mode: DownloadMode | str = DownloadMode.AUTO,
    ) -> pathlib.Path:
        """Copy the checkpoint's files into a local directory.

        ``AUTO`` copies straight from the checkpoint storage when it is reachable from here (a
        shared filesystem mounted here, or an object store this process has the package,
        credentials and a route for) and otherwise streams the files through the master. A progress
        bar is shown when stdout is a terminal.

        Args:
            path: Target directory (created; default ``./checkpoints/<uuid>``).
            mode: :class:`DownloadMode` or its value (``"auto"``, ``"direct"``, ``"master"``).

        Returns:
            The directory holding the files.

        Raises:
            NotFoundError: The checkpoint does not exist.
            FailedPreconditionError: ``DIRECT`` was asked but the storage is not reachable, or
                the checkpoint is deleted.
            InvalidArgumentError: Unknown ``mode``.
        """
        try:
            mode = DownloadMode(mode.value if isinstance(mode, DownloadMode) else mode)
        except ValueError:
            raise errors.InvalidArgumentError(
                f"mode: must be one of auto, direct, master, got {mode!r}"
            ) from None
        target = pathlib.Path(path) if path is not None else pathlib.Path("checkpoints", self.uuid)
        if self.state is CheckpointState.DELETED:
            raise errors.FailedPreconditionError(f"checkpoint {self.uuid} is deleted")
        source = self._direct_source() if mode is not DownloadMode.MASTER else None
        if mode is DownloadMode.DIRECT and source is None:
            raise errors.FailedPreconditionError(
                f"checkpoint {self.uuid}: storage {self.storage!r} is not reachable from here"
            )
        target.mkdir(parents=True, exist_ok=True)
        if source is not None:
            self._copy_direct(source, target)
        else:
            self._stream_from_master(target)
        return target

    def _direct_source(self) -> checkpoint_storage.CheckpointStorage | None:
        """The checkpoint's storage when this process can read the files there, else None
        (a directory not mounted here, a backend package or credentials missing, no route)."""
        try:
            storage = checkpoint_storage.from_config(self.storage)
        except errors.InvalidArgumentError:
            return None
        try:
            return storage if storage.list_files(self.uuid) else None
        except Exception:  # any failure to reach it: the master is the way
            logger.debug("checkpoint %s: storage not reachable directly", self.uuid, exc_info=True)
            return None

    def _copy_direct(
        self, storage: checkpoint_storage.CheckpointStorage, target: pathlib.Path
    ) -> None:
        with _Progress(self.total_bytes, self.uuid) as bar:
            local = storage.local_dir(self.uuid)
            if local is None:
                storage.get(self.uuid, target)
                bar.advance(self.total_bytes)
                return
            files = checkpoint_storage.list_local_files(local)
            for rel in sorted(files):
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local / rel, dst)
                bar.advance(files[rel])

    def _stream_from_master(self, target: pathlib.Path) -> None:
        root = target.resolve()
        req = checkpoint_pb2.DownloadCheckpointRequest(uuid=self.uuid)
        offer = self._session.bulk_download_ticket(req)
        if offer is not None:
            try:
                streams = max(1, min(checkpoint_wire.BULK_STREAMS, len(self.resources)))
                with _Progress(self.total_bytes, self.uuid) as bar:
                    _receive_bulk_parallel(offer, root, self.uuid, bar, streams)
                return
            except (OSError, ValueError) as exc:  # port not reachable from here, cut short
                logger.info("checkpoint %s: bulk download failed (%s); streaming", self.uuid, exc)
        out: BinaryIO | None = None
        current = ""
        try:
            with _Progress(self.total_bytes, self.uuid) as bar:
                for message in self._session.download_checkpoint_raw(req):
                    chunk = checkpoint_wire.decode_chunk(message)
                    if chunk.path != current or out is None:
                        if out is not None:
                            out.close()
                        current = chunk.path
                        dst = _safe_target(root, chunk.path, self.uuid)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        out = open(dst, "wb", buffering=0)  # noqa: SIM115 (spans many chunks)
                    if chunk.offset != out.tell():
                        out.seek(chunk.offset)
                    view = chunk.data
                    while view:  # an unbuffered write may be partial
                        view = view[out.write(view) or 0 :]
                    bar.advance(len(chunk.data))
        finally:
            if out is not None:
                out.close()

    def __repr__(self) -> str:
        return f"Checkpoint(uuid={self.uuid!r})"


def _safe_target(root: pathlib.Path, rel: str, uuid: str) -> pathlib.Path:
    dst = (root / rel).resolve()
    if not dst.is_relative_to(root) or dst == root:
        raise errors.InternalError(f"checkpoint {uuid}: master sent unsafe path {rel!r}")
    return dst


def _receive_bulk_parallel(
    offer: tuple[str, int, str], root: pathlib.Path, uuid: str, bar: _Progress, streams: int
) -> None:
    """:func:`_receive_bulk` on ``streams`` connections at once (the master hands each file to
    one of them); the first failure is raised once all have ended."""
    if streams == 1:
        _receive_bulk(offer, root, uuid, bar)
        return
    with concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="bulk") as pool:
        jobs = [pool.submit(_receive_bulk, offer, root, uuid, bar) for _ in range(streams)]
    for job in jobs:
        job.result()


def _receive_bulk(
    offer: tuple[str, int, str], root: pathlib.Path, uuid: str, bar: _Progress
) -> None:
    """Receive a checkpoint on the master's bulk port (``master_server.bulk``) into ``root``.

    Raises:
        OSError: The port is not reachable, or the connection ended early.
    """
    host, port, ticket = offer
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=60))
        pipe = _open_pipe()
        if pipe is not None:
            stack.callback(os.close, pipe[0])
            stack.callback(os.close, pipe[1])
            sock.settimeout(None)  # splice needs a blocking socket; the master times out
        sock.sendall(ticket.encode() + b"\n")

        def read_exact(n: int) -> bytes:
            got = bytearray()
            while len(got) < n:
                data = sock.recv(n - len(got))
                if not data:
                    raise ConnectionError("the master closed the bulk connection early")
                got += data
            return bytes(got)

        buf = bytearray(0 if pipe is not None else checkpoint_wire.BULK_READ)
        view = memoryview(buf)
        while (header := checkpoint_wire.read_bulk_header(read_exact)) is not None:
            rel, size = header
            dst = _safe_target(root, rel, uuid)
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if pipe is not None:
                    _splice_into(sock, pipe, fd, size, bar)
                    continue
                left = size
                while left:
                    n = sock.recv_into(view[: min(left, len(buf))])
                    if not n:
                        raise ConnectionError("the master closed the bulk connection early")
                    done = 0
                    while done < n:
                        done += os.write(fd, view[done:n])
                    left -= n
                    bar.advance(n)
            finally:
                os.close(fd)


def _splice_into(
    sock: socket.socket, pipe: tuple[int, int], fd: int, size: int, bar: _Progress
) -> None:
    """Move ``size`` bytes from ``sock`` to ``fd`` inside the kernel (Linux ``splice``)."""
    r, w = pipe
    left = size
    while left:
        n = os.splice(sock.fileno(), w, min(left, _PIPE_BYTES))
        if not n:
            raise ConnectionError("the master closed the bulk connection early")
        moved = 0
        while moved < n:
            moved += os.splice(r, fd, n - moved)
        left -= n
        bar.advance(n)


def _open_pipe() -> tuple[int, int] | None:
    """A pipe for :func:`_splice_into`, or None where ``splice`` is not available."""
    if not hasattr(os, "splice"):
        return None
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # a bigger pipe moves more per call; optional
        fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
    return r, w


class _Progress:
    """A rich progress bar over bytes when stdout is a terminal; otherwise nothing."""

    def __init__(self, total: int, uuid: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        if sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
            )
            self._task = self._bar.add_task(f"checkpoint {uuid[:8]}", total=total or None)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


_ALL_STATES = tuple(s for s in CheckpointState if s is not CheckpointState.UNSPECIFIED)


def sort_by_to_wire(sort_by: str | CheckpointSortBy | None) -> str:
    """``list_checkpoints``'s ``sort_by`` as the wire's string (a str is a metric name)."""
    if sort_by is None:
        return CheckpointSortBy.SEARCHER_METRIC.value
    if isinstance(sort_by, CheckpointSortBy):
        return sort_by.value
    if isinstance(sort_by, str):
        if not sort_by:
            raise errors.InvalidArgumentError("sort_by: metric name must not be empty")
        return f"metric:{sort_by}"
    raise errors.InvalidArgumentError(
        f"sort_by: must be a metric name or a CheckpointSortBy, got {sort_by!r}"
    )


def list_checkpoints(
    session: Session,
    *,
    experiment_id: int = 0,
    trial_id: int = 0,
    sort_by: str | CheckpointSortBy | None,
    order_by: OrderBy | None,
    max_results: int | None,
    states: Iterable[CheckpointState] | None = None,
) -> list[Checkpoint]:
    """Checkpoints of an experiment or a trial, sorted and cut on the master."""
    limit = check_limit(max_results, "max_results")
    if max_results == 0:
        return []
    if order_by is not None and not isinstance(order_by, OrderBy):
        raise errors.InvalidArgumentError(f"order_by: must be an OrderBy, got {order_by!r}")
    req = checkpoint_pb2.ListCheckpointsRequest(
        experiment_id=experiment_id,
        trial_id=trial_id,
        sort_by=sort_by_to_wire(sort_by),
        max_results=limit,
        # Every state, DELETED included, unless asked otherwise (Determined lists them).
        states=[s._to_proto() for s in states or _ALL_STATES],
    )
    if order_by is not None:
        req.order_by = order_by._to_proto()
    resp = session.list_checkpoints(req)
    return [Checkpoint._from_proto(c, session) for c in resp.checkpoints]
