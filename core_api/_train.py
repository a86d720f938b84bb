"""Metrics and progress: :class:`TrainContext` and its background sender.

A report costs the training loop a type check of each value and one ``deque.append``; a
background thread builds the protos and sends batches (up to ``batch_size`` reports, or whatever
is pending every ``flush_interval`` seconds) as ``ReportMetrics`` calls, each with a client-made
``batch_id``. A batch that fails with UNAVAILABLE/DEADLINE_EXCEEDED is resent with the *same*
id, so the master stores it at most once. A failure that survives the retries is raised on the
next report call or by :meth:`TrainContext.close`.

Off-cluster the same methods log the metrics (logger ``core_api._train``) instead.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import pathlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import grpc

from core_api._channel import MasterSession, is_retryable
from determined_sdk import errors
from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import experiment_pb2, trial_pb2

logger = logging.getLogger(__name__)

TRAINING = "training"
_SEND_TIMEOUT = 60.0
VALIDATION = "validation"


class ContextClosedError(RuntimeError):
    """A Core API method was called after ``Context.close()``."""


class EarlyExitReason(enum.Enum):
    """Why a trial stops before the searcher is done with it."""

    INVALID_HP = "INVALID_HP"
    ERRORED = "ERRORED"
    USER_CANCELED = "USER_CANCELED"


def _metric_value(name: Any, value: Any) -> float:
    """Slow path of the hot loop: convert numpy scalars, 0-d tensors, bools; reject the rest."""
    if not isinstance(name, str):
        raise TypeError(f"metric names must be str, got {type(name).__name__} ({name!r})")
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, (int, float)):  # bool, int/float subclasses, numpy float64
        return float(value)
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(shape) not in ((), (1,)):
        raise TypeError(
            f"metric {name!r} must be a number, got {type(value).__name__} of shape {tuple(shape)}"
        )
    if hasattr(value, "__float__"):
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"metric {name!r} must be a number, got {type(value).__name__}"
            ) from exc
    raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")


def _check_steps(steps_completed: Any) -> int:
    if isinstance(steps_completed, bool) or not isinstance(steps_completed, int):
        index = getattr(steps_completed, "__index__", None)
        if index is None or isinstance(steps_completed, bool):
            raise TypeError(f"steps_completed must be an int, got {type(steps_completed).__name__}")
        steps_completed = int(index())
    if steps_completed < 0:
        raise ValueError(f"steps_completed must be >= 0, got {steps_completed}")
    return int(steps_completed)


def _check_group(group: Any) -> str:
    if not isinstance(group, str) or not group:
        raise ValueError(f"metric group must be a non-empty str, got {group!r}")
    return group


class _Flush:
    """A marker in the queue: the sender sets ``done`` once everything before it is stored."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _CheckpointReport:
    """A checkpoint report, sent in order after the metrics reported before it."""

    __slots__ = ("done", "error", "request")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Handoff:
    """A marker in the queue: the sender packs the metrics reported before it, not sent yet,
    into ``request`` for the caller to send with another call, and sets ``done`` once
    everything else before it is stored."""

    __slots__ = ("done", "request")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.request: trial_pb2.ReportMetricsRequest | None = None


class _Progress:
    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


class TrainContext:
    """Report metrics, progress and early exits for one trial.

    Built by :func:`core_api.init`; on a worker rank every report is validated and then
    dropped (only the chief reports, as in Determined).

    Args:
        session: the master session, or None off-cluster (metrics are logged).
        trial_id: the trial reported against.
        run_id: the trial run reporting (``DET_RUN_ID``; 1 for an unmanaged trial); the master
            supersedes an earlier run's reports after a restart from a checkpoint.
        experiment_id: its experiment (for :meth:`get_experiment_best_validation`).
        is_chief: whether this rank sends reports.
        max_queue: reports that may wait unsent before a report call blocks.
        batch_size: most reports per ``ReportMetrics`` call.
        flush_interval: seconds the sender waits for a batch to fill.
        tensorboard_path: the directory :meth:`get_tensorboard_path` hands out.
    """

    def __init__(
        self,
        session: MasterSession | None,
        *,
        trial_id: int = 0,
        run_id: int = 0,
        experiment_id: int = 0,
        is_chief: bool = True,
        max_queue: int = 100_000,
        batch_size: int = 5000,
        flush_interval: float = 0.05,
        tensorboard_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._tensorboard_path = pathlib.Path(tensorboard_path or "tensorboard")
        self._session = session
        self._trial_id = trial_id
        self._run_id = run_id
        self._experiment_id = experiment_id
        self._is_chief = is_chief
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._space = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._inflight: tuple[trial_pb2.ReportMetricsRequest, Any] | None = None
        # Off-cluster or on a worker nothing is sent: reports end at validation.
        self._sends = session is not None and is_chief
        self._logs = session is None and is_chief
        if self._sends:
            self._sender = threading.Thread(
                target=self._run_sender, name="core_api-metrics-sender", daemon=True
            )
            self._sender.start()

    # -- the hot path ---------------------------------------------------------------------
    def _report(self, group: str, steps_completed: Any, metrics: Mapping[str, Any]) -> None:
        if self._closed:
            raise ContextClosedError(
                "cannot report metrics: the core_api context is closed (close() was called)"
            )
        if self._error is not None:
            self._raise_error()
        if type(steps_completed) is not int or steps_completed < 0:
            steps_completed = _check_steps(steps_completed)
        clean: dict[str, float] = {}
        try:
            for name, value in metrics.items():
                tv = type(value)
                if (tv is float or tv is int) and type(name) is str:
                    clean[name] = value
                else:
                    clean[name] = _metric_value(name, value)
        except AttributeError:
            raise TypeError(
                f"metrics must be a dict of name -> number, got {type(metrics).__name__}"
            ) from None
        if self._sends:
            queue = self._queue
            queue.append((group, steps_completed, clean, time.time()))
            n = len(queue)
            if n >= self._batch_size:
                if not self._wake.is_set():
                    self._wake.set()
                if n >= self._max_queue:
                    self._wait_for_space()
        elif self._logs:
            logger.info("%s metrics at step %d: %s", group, steps_completed, clean)

    def report_training_metrics(
        self,
        steps_completed: int,
        metrics: Mapping[str, Any],
        batch_metrics: Any = None,
    ) -> None:
        """Report training metrics (group ``"training"``).

        Args:
            steps_completed: training steps (batches) completed so far.
            metrics: name -> number (int, float, bool, numpy scalar, 0-d tensor). NaN and
                infinities are allowed.
            batch_metrics: accepted for Determined compatibility and ignored.

        Raises:
            TypeError: a value is not a number (the message names the metric).
            ContextClosedError: the context is closed.
            DeterminedError: an earlier background send failed.
        """
        self._report(TRAINING, steps_completed, metrics)

    def report_validation_metrics(self, steps_completed: int, metrics: Mapping[str, Any]) -> None:
        """Report validation metrics (group ``"validation"``).

        See :meth:`report_training_metrics`.
        """
        self._report(VALIDATION, steps_completed, metrics)

    def report_metrics(self, group: str, steps_completed: int, metrics: Mapping[str, Any]) -> None:
        """Report metrics in any group; see :meth:`report_training_metrics`."""
        self._report(_check_group(group), steps_completed, metrics)

    # -- other reports --------------------------------------------------------------------
    def report_progress(self, progress: float) -> None:
        """Report the trial's progress (0..1) through its searcher work.

        Sent by the background sender after the metrics reported before it; calling it often
        costs nothing (only the latest value pending is sent).

        Raises:
            ValueError: ``progress`` is outside [0, 1].
        """
        self._check_usable()
        value = float(progress)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"progress must be in [0, 1], got {progress!r}")
        if self._sends:
            self._queue.append(_Progress(value))
        elif self._logs:
            logger.info("progress: %.4f", value)

    def report_early_exit(self, reason: EarlyExitReason) -> None:
        """Tell the master the trial is stopping early (e.g. ``EarlyExitReason.INVALID_HP``).

        Pending metrics are flushed first. The trial should exit afterwards.
        """
        self._check_usable()
        if not isinstance(reason, EarlyExitReason):
            reason = EarlyExitReason(reason)
        if self._session is None or not self._is_chief:
            if self._logs:
                logger.info("early exit: %s", reason.value)
            return
        self.flush()
        self._session.call(
            self._session.trials.ReportEarlyExit,
            trial_pb2.ReportEarlyExitRequest(trial_id=self._trial_id, reason=reason.value),
        )

    def get_tensorboard_path(self) -> pathlib.Path:
        """A directory for this trial's TensorBoard event files (created if missing).

        On a cluster it lies in the checkpoint storage, at
        ``<storage>/tensorboard/trial-<trial id>``, so the files are kept with the trial
        (``detsdk tensorboard`` shows them next to the metrics the trial reported);
        off-cluster it is ``<storage>/tensorboard``. Every rank gets the same directory; give
        each writer its own file name (TensorBoard's writers do).
        """
        self._tensorboard_path.mkdir(parents=True, exist_ok=True)
        return self._tensorboard_path

    def get_experiment_best_validation(self) -> float | None:
        """The best searcher-metric value any trial of this experiment has reported, or None."""
        self._check_usable()
        if self._session is None:
            return None
        resp = self._session.call(
            self._session.experiments.GetBestSearcherValidation,
            experiment_pb2.GetBestSearcherValidationRequest(experiment_id=self._experiment_id),
        )
        return resp.value if resp.has_value else None

    # -- flush / close --------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Block until every report made so far is stored by the master.

        Raises:
            DeterminedError: a background send failed.
            TimeoutError: ``timeout`` passed first.
        """
        if self._sends and self._sender is not None and self._sender.is_alive():
            marker = _Flush()
            self._queue.append(marker)
            self._wake.set()
            if not marker.done.wait(timeout):
                raise TimeoutError(f"metrics not flushed within {timeout} s")
        if self._error is not None:
            self._raise_error()

    def take_pending(self) -> trial_pb2.ReportMetricsRequest | None:
        """:meth:`flush`, except that the reports not sent yet are returned, packed into one
        ``ReportMetricsRequest`` for the caller to send with another call (None: nothing was
        pending). Whatever was sent before them is stored when this returns.

        Raises:
            DeterminedError: a background send failed.
        """
        if not (self._sends and self._sender is not None and self._sender.is_alive()):
            self.flush()
            return None
        marker = _Handoff()
        self._queue.append(marker)
        self._wake.set()
        marker.done.wait()
        if self._error is not None:
            self._raise_error()
        return marker.request

    def send_reports(self, request: trial_pb2.ReportMetricsRequest) -> None:
        """Send reports :meth:`take_pending` returned that the other call did not store.

        Raises:
            DeterminedError: the master refused them, or stayed unreachable.
        """
        session = self._session
        assert session is not None
        session.call(session.trials.ReportMetrics, request, timeout=_SEND_TIMEOUT)

    def report_checkpoint(self, request: Any, wait_s: float = 5.0) -> bool:
        """Send a ``ReportCheckpointRequest`` after every metric reported before it.

        Waits up to ``wait_s`` for the master to store it (so a checkpoint is listed when
        ``store_path`` returns); while the master is unreachable it returns without waiting
        longer and the sender delivers the report when the master is back (the training loop
        does not stop). Returns whether the report was stored within ``wait_s``.

        Raises:
            DeterminedError: the master refused the report.
        """
        if not (self._sends and self._sender is not None and self._sender.is_alive()):
            self._send_checkpoint(request)
            return True
        item = _CheckpointReport(request)
        self._queue.append(item)
        self._wake.set()
        if not item.done.wait(wait_s):
            logger.info("checkpoint %s: report buffered until the master answers", request.uuid)
            return False
        if item.error is not None:
            err, item.error = item.error, None
            if err is self._error:
                self._error = None
            raise err
        return True

    def _send_checkpoint(self, request: Any) -> None:
        session = self._session
        assert session is not None
        try:
            session.call(session.checkpoints.ReportCheckpoint, request)
        except errors.AlreadyExistsError:
            # An earlier attempt whose reply was lost already stored it.
            logger.debug("checkpoint %s was already reported", request.uuid)

    def close(self) -> None:
        """Flush, stop the sender thread; raise the sender's last error, if any. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._stopping = True
            self._wake.set()
            if self._sender is not None:
                self._sender.join()

    def _check_usable(self) -> None:
        if self._closed:
            raise ContextClosedError("the core_api context is closed (close() was called)")
        if self._error is not None:
            self._raise_error()

    def _raise_error(self) -> None:
        err, self._error = self._error, None
        if err is not None:
            raise err

    def _wait_for_space(self) -> None:
        with self._space:
            while len(self._queue) >= self._max_queue and self._error is None:
                if self._sender is None or not self._sender.is_alive():
                    return
                self._space.wait(0.1)

    # -- the sender thread ----------------------------------------------------------------
    def _run_sender(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._drain()
            if self._stopping and not queue:
                break

    def _drain(self) -> None:
        queue = self._queue
        batch: list[tuple[str, int, dict[str, float], float]] = []
        progress: float | None = None
        while queue:
            item = queue.popleft()
            if type(item) is tuple:
                batch.append(item)
                if len(batch) >= self._batch_size:
                    self._guarded(self._send, batch)
                    batch = []
                    self._notify_space()
            elif type(item) is _Progress:
                progress = item.value
            elif type(item) is _CheckpointReport:
                if batch:
                    self._guarded(self._send, batch)
                    batch = []
                self._guarded(self._await_inflight)
                before = self._error
                self._guarded(self._send_checkpoint, item.request)
                if self._error is not before:
                    item.error = self._error
                item.done.set()
            elif type(item) is _Handoff:
                self._guarded(self._await_inflight)
                if batch and self._error is None:
                    item.request = self._pack(batch)
                elif batch:  # a send failed: the caller raises; these go as they would have
                    self._guarded(self._send, batch)
                    self._guarded(self._await_inflight)
                batch = []
                if progress is not None:
                    self._guarded(self._send_progress, progress)
                    progress = None
                item.done.set()
            else:  # _Flush: everything before it must be stored before it is released
                if batch:
                    self._guarded(self._send, batch)
                    batch = []
                self._guarded(self._await_inflight)
                if progress is not None:
                    self._guarded(self._send_progress, progress)
                    progress = None
                item.done.set()
        if batch:
            self._guarded(self._send, batch)
        self._guarded(self._await_inflight)
        if progress is not None:
            self._guarded(self._send_progress, progress)
        self._notify_space()

    def _guarded(self, fn: Any, *args: Any) -> None:
        # A send that fails after its retries is dropped; its error waits for the user's thread.
        try:
            fn(*args)
        except BaseException as exc:
            logger.debug("metrics sender: send failed", exc_info=True)
            self._error = exc

    def _notify_space(self) -> None:
        if len(self._queue) < self._max_queue:
            with self._space:
                self._space.notify_all()

    def _send(self, batch: list[tuple[str, int, dict[str, float], float]]) -> None:
        """Build the next request while the previous one is in flight, then send it.

        At most one request is in flight, so batches reach the master in order; building the
        next one overlaps with the master storing the last.
        """
        session = self._session
        assert session is not None
        request = self._pack(batch)
        self._guarded(self._await_inflight)
        future = session.trials.ReportMetrics.future(request, timeout=_SEND_TIMEOUT)
        self._inflight = (request, future)

    def _pack(
        self, batch: list[tuple[str, int, dict[str, float], float]]
    ) -> trial_pb2.ReportMetricsRequest:
        request = pack_reports(self._trial_id, uuid.uuid4().hex, batch)
        request.trial_run_id = self._run_id
        return request

    def _await_inflight(self) -> None:
        if self._inflight is None:
            return
        request, future = self._inflight
        self._inflight = None
        session = self._session
        assert session is not None
        try:
            future.result()
        except grpc.RpcError as exc:
            if not is_retryable(exc):
                raise errors.from_rpc_error(exc) from None
            # Resend the very same request (same batch_id): the master stores it at most once.
            session.call(session.trials.ReportMetrics, request, timeout=_SEND_TIMEOUT)

    def _send_progress(self, value: float) -> None:
        session = self._session
        assert session is not None
        session.call(
            session.trials.ReportProgress,
            trial_pb2.ReportProgressRequest(trial_id=self._trial_id, progress=value),
        )
