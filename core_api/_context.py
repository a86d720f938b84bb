"""The :class:`Context` that :func:`init` builds, in one of three modes.

* **on-cluster**: ``DET_CLUSTER_INFO`` is set (the master's launcher ran this process): the
  trial id, hparams, latest checkpoint and checkpoint storage come from it.
* **unmanaged**: no cluster info, but a master address (``master=`` or ``DET_MASTER``): a new
  unmanaged trial is created on the master (``CreateUnmanagedTrial``) and everything is
  recorded against it; ``close()`` reports the trial's exit. The preemption long poll runs
  as on the cluster and is the run's heartbeat: a run that stops polling (killed) has its
  trial ended in ERROR by the master after its unmanaged timeout.
* **off-cluster**: neither: metrics go to the log, checkpoints to ``./checkpoints`` (or
  ``checkpoint_storage``), the searcher yields one op and nothing is ever preempted.
"""

from __future__ import annotations

import atexit
import enum
import functools
import json
import logging
import os
import pathlib
import sys
import types
import weakref
from collections.abc import Mapping
from typing import Any

from core_api._channel import MasterSession
from core_api._checkpoint import CheckpointContext
from core_api._distributed import DistributedContext
from core_api._info import ClusterInfo, TrialInfo, get_cluster_info
from core_api._output import OutputCapture
from core_api._preempt import FIRST_POLL_DELAY_S, PreemptContext, PreemptMode
from core_api._searcher import SearcherContext
from core_api._train import TrainContext
from determined_sdk import errors
from determined_sdk.checkpoint_storage import CheckpointStorage, SharedFSStorage
from determined_sdk.checkpoint_storage import from_config as storage_from_config
from determined_sdk.proto import experiment_pb2, master_pb2, trial_pb2

logger = logging.getLogger(__name__)


class TensorboardMode(enum.Enum):
    """Determined's choice of who uploads TensorBoard files.

    Accepted for compatibility: this platform keeps metrics in its own store and has no
    TensorBoard upload, so both modes behave the same.
    """

    AUTO = "AUTO"
    MANUAL = "MANUAL"


class Context:
    """Everything training code uses: ``train``, ``checkpoint``, ``searcher``, ``preempt``,
    ``distributed`` and ``info``. Use it as a context manager, or call :meth:`close`.

    Attributes:
        train: metrics, progress, early exit.
        checkpoint: store / restore / upload / download checkpoints.
        searcher: searcher operations.
        preempt: should_preempt().
        distributed: ranks and collectives.
        info: the cluster info (on-cluster and unmanaged), else None.
        mode: ``"cluster"``, ``"unmanaged"`` or ``"off-cluster"``.
    """

    def __init__(
        self,
        *,
        train: TrainContext,
        checkpoint: CheckpointContext,
        searcher: SearcherContext,
        preempt: PreemptContext,
        distributed: DistributedContext,
        info: ClusterInfo | None,
        mode: str,
        session: MasterSession | None = None,
        output: OutputCapture | None = None,
    ) -> None:
        self.train = train
        self.checkpoint = checkpoint
        self.searcher = searcher
        self.preempt = preempt
        self.distributed = distributed
        self.info = info
        self.mode = mode
        self._session = session
        self._output = output
        self._closed = False
        # A script that never closes its context still gets its last reports stored.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self._close(failed=True)
        except Exception:
            # The user's exception is the one to see; ours goes to the log.
            logger.exception("core_api: error while closing after an exception")

    def close(self) -> None:
        """Flush every pending report (returns once the master has stored them), stop the
        background threads and close the channel.

        Raises:
            DeterminedError: a background send failed.
        """
        self._close(failed=False)

    def _close(self, *, failed: bool) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        try:
            self.preempt.close()
            self.train.close()
        finally:
            self.searcher.close()
            self.checkpoint.close()
            try:
                if self.mode == "unmanaged" and self.distributed.is_chief:
                    self._report_unmanaged_exit(1 if failed else 0)
            finally:
                if self._output is not None:
                    self._output.close()
                if self._session is not None:
                    self._session.close()
                self.distributed.close()

    def _report_unmanaged_exit(self, exit_code: int) -> None:
        assert self._session is not None and self.info is not None
        session = self._session
        try:
            session.call(
                session.master.ReportTrialExit,
                master_pb2.ReportTrialExitRequest(
                    trial_id=self.info.trial.trial_id,
                    run_id=self.info.trial.run_id,
                    exit_code=exit_code,
                ),
            )
        except errors.DeterminedError as exc:
            logger.warning("could not report the unmanaged trial's exit: %s", exc)


def _close_at_exit(ref: weakref.ReferenceType[Context]) -> None:
    ctx = ref()
    if ctx is None or ctx._closed:
        return
    try:
        ctx.close()
    except Exception:
        logger.exception("core_api: closing the context at interpreter exit failed")


def _script_name() -> str:
    argv0 = sys.argv[0] if sys.argv else ""
    name = pathlib.Path(argv0).stem if argv0 not in ("", "-c", "-m") else ""
    return name or "unmanaged"


def init(
    *,
    distributed: DistributedContext | None = None,
    checkpoint_storage: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    preempt_mode: PreemptMode = PreemptMode.WorkersAskChief,
    tensorboard_mode: TensorboardMode = TensorboardMode.AUTO,
    async_checkpointing: bool = True,
    master: str | None = None,
    experiment_name: str | None = None,
    hparams: Mapping[str, Any] | None = None,
    max_length: int | Mapping[str, int] | None = None,
    capture_output: bool = True,
) -> Context:
    """Build the :class:`Context` for this process.

    Args:
        distributed: the ranks' context (e.g. ``DistributedContext.from_torch_distributed()``);
            None means a single process.
        checkpoint_storage: a directory (or ``{"type": "shared_fs", "path": ...}``, or an
            object store such as ``{"type": "s3", "bucket": ..., "prefix": ...,
            "endpoint_url": ...}``) to store checkpoints in. On-cluster the trial's configured
            storage is used unless given; off-cluster the default is ``./checkpoints``.
        preempt_mode: see :class:`PreemptMode`.
        tensorboard_mode: Determined's argument, accepted; see :class:`TensorboardMode`.
        async_checkpointing: Determined's argument, accepted; uploads here are synchronous
            (checkpoints are written straight to their storage).
        master: ``host:port`` of a master, to record a run outside the cluster as an
            unmanaged trial (default ``$DET_MASTER``; ignored on-cluster).
        experiment_name: the unmanaged experiment's name (default: the script's name).
        hparams: the unmanaged trial's hyperparameters (recorded on the master).
        max_length: the length of the single searcher op yielded without a master searcher
            (off-cluster and unmanaged): a number of batches, or ``{"epochs": 3}`` (also
            ``batches``/``records``) to set the unit too. Unmanaged, the default is the
            ``searcher.max_length`` of the experiment config the master holds; with no length
            at all ``searcher.operations()`` raises instead of guessing one.
        capture_output: unmanaged only: also send what this process prints (stdout, stderr,
            logging) to the trial's logs, as the supervisor does on the cluster.

    Returns:
        The context; use it as a context manager or call ``close()``.
    """
    dist = distributed if distributed is not None else DistributedContext.single()
    if not isinstance(preempt_mode, PreemptMode):
        raise ValueError(f"preempt_mode must be a core_api.PreemptMode, got {preempt_mode!r}")
    if not isinstance(tensorboard_mode, TensorboardMode):
        raise ValueError(
            f"tensorboard_mode must be a core_api.TensorboardMode, got {tensorboard_mode!r}"
        )
    del async_checkpointing
    length = _check_max_length(max_length)

    info = get_cluster_info()
    if info is not None:
        return _init_cluster(info, dist, checkpoint_storage, preempt_mode)
    address = master or os.environ.get("DET_MASTER")
    if address:
        return _init_unmanaged(
            address,
            dist,
            checkpoint_storage,
            experiment_name,
            hparams,
            length,
            capture_output,
            preempt_mode,
        )
    return _init_off_cluster(dist, checkpoint_storage, length)


#: A local searcher length: (length, unit), or None when none was given.
LocalLength = tuple[int, str] | None


def _check_max_length(max_length: Any) -> LocalLength:
    """``max_length`` as (length, unit), or None.

    Raises:
        ValueError: not an int >= 0 nor a one-key length mapping; the message names it.
    """
    if max_length is None:
        return None
    if isinstance(max_length, Mapping):
        items = [(k, v) for k, v in max_length.items() if k in ("batches", "records", "epochs")]
        if len(items) != 1 or len(max_length) != 1:
            raise ValueError(
                "max_length must be an int or one of {'batches': n}, {'records': n}, "
                f"{{'epochs': n}}, got {dict(max_length)!r}"
            )
        unit, value = items[0]
    else:
        unit, value = "batches", max_length
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_length must be an int >= 0, got {max_length!r}")
    return value, unit


def _config_length(config: Mapping[str, Any]) -> LocalLength:
    """The ``searcher.max_length`` of an experiment config (raw or normalized), if any."""
    raw = (config.get("searcher") or {}).get("max_length")
    if isinstance(raw, Mapping) and "unit" in raw and "value" in raw:
        return int(raw["value"]), str(raw["unit"])
    if isinstance(raw, Mapping):
        try:
            return _check_max_length(raw)
        except ValueError:
            return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw, "batches"
    return None


def _storage(
    given: str | os.PathLike[str] | Mapping[str, Any] | None, fallback: Mapping[str, Any]
) -> CheckpointStorage:
    if given is None:
        return storage_from_config(fallback)
    if isinstance(given, Mapping):
        return storage_from_config(given)
    return SharedFSStorage(given)


def _tensorboard_base(storage: CheckpointStorage) -> pathlib.Path:
    """Where TensorBoard files go: beside the checkpoints on a shared filesystem, else in a
    local directory (object storage has no directory to write event files into)."""
    if isinstance(storage, SharedFSStorage):
        return storage.base / "tensorboard"
    import tempfile  # only for object storage

    return pathlib.Path(tempfile.gettempdir(), "detsdk-tensorboard")


def _unit_of(config: Mapping[str, Any]) -> str:
    max_len = (config.get("searcher") or {}).get("max_length")
    if isinstance(max_len, Mapping):
        if "unit" in max_len:  # the master's normalized form {"unit": ..., "value": ...}
            return str(max_len["unit"])
        for unit in ("batches", "records", "epochs"):
            if unit in max_len:
                return unit
    return "batches"


def _init_cluster(
    info: ClusterInfo,
    dist: DistributedContext,
    checkpoint_storage: str | os.PathLike[str] | Mapping[str, Any] | None,
    preempt_mode: PreemptMode,
) -> Context:
    if not info.master_url:
        raise ValueError("cluster info has no master address (DET_MASTER is not set either)")
    session = MasterSession(info.master_url)
    trial_id = info.trial.trial_id
    try:
        storage = _storage(checkpoint_storage, info.checkpoint_storage)
        train = TrainContext(
            session,
            trial_id=trial_id,
            run_id=info.trial.run_id,
            experiment_id=info.trial.experiment_id,
            is_chief=dist.is_chief,
            tensorboard_path=_tensorboard_base(storage) / f"trial-{trial_id}",
        )
        preempt = PreemptContext(
            session,
            dist,
            trial_id=trial_id,
            mode=preempt_mode,
            first_poll_delay=FIRST_POLL_DELAY_S,
        )
    except BaseException:
        session.close()
        raise
    return Context(
        train=train,
        checkpoint=CheckpointContext(
            dist,
            storage,
            session,
            trial_id=trial_id,
            before_report=train.flush,
            send_report=train.report_checkpoint,
        ),
        searcher=SearcherContext(
            session, dist, train, trial_id=trial_id, unit=_unit_of(info.trial.config)
        ),
        preempt=preempt,
        distributed=dist,
        info=info,
        mode="cluster",
        session=session,
    )


def _init_unmanaged(
    address: str,
    dist: DistributedContext,
    checkpoint_storage: str | os.PathLike[str] | Mapping[str, Any] | None,
    experiment_name: str | None,
    hparams: Mapping[str, Any] | None,
    max_length: LocalLength,
    capture_output: bool,
    preempt_mode: PreemptMode,
) -> Context:
    session = MasterSession(address)
    try:
        created: dict[str, Any] | None = None
        if dist.is_chief:
            created = _create_unmanaged_trial(session, experiment_name, hparams, checkpoint_storage)
        if dist.size > 1:
            created = dist.broadcast(created)
        assert created is not None
        trial = TrialInfo(
            trial_id=created["trial_id"],
            experiment_id=created["experiment_id"],
            hparams=created["hparams"],
            run_id=created["run_id"],
            config=created["config"],
            user_data=created["config"].get("data") or {},
        )
        storage_config = created["checkpoint_storage"]
        if checkpoint_storage is None and not storage_config:
            raise ValueError(
                "the master returned no checkpoint storage for the unmanaged trial; "
                "pass checkpoint_storage= to core_api.init()"
            )
        storage = _storage(checkpoint_storage, storage_config)
        info = ClusterInfo(
            master_url=session.address,
            trial=trial,
            latest_checkpoint=created["latest_checkpoint"],
            checkpoint_storage=storage.describe(),
            slots_per_trial=dist.size,
        )
        train = TrainContext(
            session,
            trial_id=trial.trial_id,
            run_id=trial.run_id,
            experiment_id=trial.experiment_id,
            is_chief=dist.is_chief,
            tensorboard_path=_tensorboard_base(storage) / f"trial-{trial.trial_id}",
        )
        # Its long poll is the run's heartbeat: no supervisor watches this process, so the
        # master ends the trial (ERROR) when the polls stop (kill -9, a lost machine). It also
        # tells the script when the trial was canceled or ended.
        preempt = PreemptContext(session, dist, trial_id=trial.trial_id, mode=preempt_mode)
    except BaseException:
        session.close()
        raise
    logger.info(
        "recording this run as unmanaged trial %d of experiment %d on %s",
        trial.trial_id,
        trial.experiment_id,
        session.address,
    )
    output = (
        OutputCapture(session, trial_id=trial.trial_id, run_id=trial.run_id, rank=dist.rank)
        if capture_output
        else None
    )
    return Context(
        train=train,
        checkpoint=CheckpointContext(
            dist,
            storage,
            session,
            trial_id=trial.trial_id,
            before_report=train.flush,
            send_report=train.report_checkpoint,
        ),
        # No master searcher drives an unmanaged trial.
        searcher=_local_searcher(dist, train, max_length or _config_length(trial.config)),
        preempt=preempt,
        distributed=dist,
        info=info,
        mode="unmanaged",
        session=session,
        output=output,
    )


def _create_unmanaged_trial(
    session: MasterSession,
    experiment_name: str | None,
    hparams: Mapping[str, Any] | None,
    checkpoint_storage: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"name": experiment_name or _script_name()}
    if checkpoint_storage is not None:
        # Recorded on the master, so the SDK finds the files where this run puts them.
        config["checkpoint_storage"] = _storage(checkpoint_storage, {}).describe()
    resp = session.call(
        session.experiments.CreateUnmanagedTrial,
        experiment_pb2.CreateUnmanagedTrialRequest(
            config=json.dumps(config), hparams_json=json.dumps(dict(hparams or {}))
        ),
        idempotent=False,
    )
    trial_id = resp.trial.id
    ctx = session.call(
        session.trials.GetTrialContext, trial_pb2.GetTrialContextRequest(trial_id=trial_id)
    )
    return {
        "trial_id": trial_id,
        "experiment_id": resp.experiment.id or resp.trial.experiment_id,
        "hparams": json.loads(resp.trial.hparams_json) if resp.trial.hparams_json else {},
        "run_id": resp.trial.run_id or 1,
        "config": json.loads(ctx.experiment_config_json) if ctx.experiment_config_json else {},
        "checkpoint_storage": (
            json.loads(ctx.checkpoint_storage_json) if ctx.checkpoint_storage_json else {}
        ),
        "latest_checkpoint": ctx.latest_checkpoint_uuid or None,
    }


def _init_off_cluster(
    dist: DistributedContext,
    checkpoint_storage: str | os.PathLike[str] | Mapping[str, Any] | None,
    max_length: LocalLength,
) -> Context:
    storage = _storage(checkpoint_storage, {"type": "shared_fs", "path": "checkpoints"})
    train = TrainContext(None, is_chief=dist.is_chief, tensorboard_path=_tensorboard_base(storage))
    return Context(
        train=train,
        checkpoint=CheckpointContext(dist, storage, None),
        searcher=_local_searcher(dist, train, max_length),
        preempt=PreemptContext(None, dist),
        distributed=dist,
        info=None,
        mode="off-cluster",
    )


def _local_searcher(
    dist: DistributedContext, train: TrainContext, length: LocalLength
) -> SearcherContext:
    if length is None:
        return SearcherContext(None, dist, train, max_length=None)
    return SearcherContext(None, dist, train, max_length=length[0], unit=length[1])
