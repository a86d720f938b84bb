"""The searcher API (seed 001): :class:`SearcherContext` yields operations with absolute lengths.

An operation says "train until ``length`` units in total, then report the searcher metric".
The chief long-polls ``GetSearcherOperation`` until the master has an op for the trial or says
the trial is done; a longer op may follow a completed one (ASHA promotion). Off-cluster (and
unmanaged) the context yields one op of ``init(max_length=...)``; without a length it raises
rather than guess one.

Completing an op is one call: the metrics not sent yet go with ``CompleteSearcherOperation``
(stored before the op is completed), and its answer says when the searcher already knows it has
no more work for the trial, which ends the loop without another poll.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator
from typing import Any

from core_api._channel import MasterSession
from core_api._distributed import DistributedContext
from core_api._train import ContextClosedError, TrainContext
from determined_sdk.proto import searcher_pb2

logger = logging.getLogger(__name__)


class SearcherMode(enum.Enum):
    """Who asks the master for operations."""

    #: The chief asks; the workers get the chief's ops by broadcast (all ranks iterate).
    WorkersAskChief = "WORKERS_ASK_CHIEF"
    #: Only the chief iterates; workers must not call ``operations()``.
    ChiefOnly = "CHIEF_ONLY"


class SearcherOperation:
    """Train until :attr:`length` units in total, then call :meth:`report_completed`."""

    def __init__(
        self, searcher: SearcherContext, length: int, *, unit: str = "batches", is_chief: bool
    ) -> None:
        self._searcher = searcher
        self._length = int(length)
        self._unit = unit or "batches"
        self._is_chief = is_chief
        self._completed = False

    @property
    def length(self) -> int:
        """The absolute length to train to (total units since the trial started)."""
        return self._length

    @property
    def unit(self) -> str:
        """``batches``, ``records`` or ``epochs`` (from the experiment's ``max_length``)."""
        return self._unit

    @property
    def completed(self) -> bool:
        """Whether :meth:`report_completed` was called."""
        return self._completed

    def report_progress(self, length: float) -> None:
        """Report how far training is, in the op's units (absolute, like :attr:`length`).

        Sent as the trial's progress ``length / op.length`` (coalesced, non-blocking). A no-op
        on workers.
        """
        value = float(length)
        if math.isnan(value) or value < 0:
            raise ValueError(f"length must be a number >= 0, got {length!r}")
        if not self._is_chief:
            return
        fraction = 1.0 if self._length <= 0 else min(value / self._length, 1.0)
        self._searcher._train.report_progress(fraction)

    def report_completed(self, searcher_metric: Any) -> None:
        """The op is done: report the searcher metric's value at :attr:`length`.

        Pending metrics are flushed first. A no-op on workers.

        Raises:
            TypeError: ``searcher_metric`` is not a number.
            RuntimeError: the op was already completed.
        """
        try:
            value = float(searcher_metric)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"searcher_metric must be a number, got {type(searcher_metric).__name__}"
            ) from exc
        if self._completed:
            raise RuntimeError(f"operation of length {self._length} was already completed")
        if self._is_chief:
            self._searcher._complete(self._length, value)
        self._completed = True

    def __repr__(self) -> str:
        return f"SearcherOperation(length={self._length}, unit={self._unit!r})"


class SearcherContext:
    """Yields the trial's searcher operations.

    Args:
        session: the master session, or None off-cluster / unmanaged (one local op).
        dist: the distributed context.
        train: used to flush metrics before completing an op and to send progress.
        trial_id: the trial.
        max_length: the length of the single op yielded without a master (None: none given;
            ``operations()`` then raises).
        unit: the op unit without a master.
        poll_timeout: seconds each long poll waits on the master.
    """

    def __init__(
        self,
        session: MasterSession | None,
        dist: DistributedContext,
        train: TrainContext,
        *,
        trial_id: int = 0,
        max_length: int | None = 1,
        unit: str = "batches",
        poll_timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._dist = dist
        self._train = train
        self._trial_id = trial_id
        self._max_length = max_length
        self._unit = unit
        self._poll_timeout = poll_timeout
        self._closed = False
        self._local_done = False
        # The master said, when the last op was completed, that it has no more for the trial.
        self._done = False

    def operations(
        self,
        searcher_mode: SearcherMode = SearcherMode.WorkersAskChief,
        auto_ack: bool = True,
    ) -> Iterator[SearcherOperation]:
        """Iterate over the trial's operations until the searcher is done with it.

        Each op must be completed (``op.report_completed(metric)`` on the chief) before the
        next one is requested. Exiting with code 0 after the loop ends completes the trial.

        Args:
            searcher_mode: who asks the master (see :class:`SearcherMode`).
            auto_ack: accepted for Determined compatibility; the end of the ops needs no
                separate acknowledgement on this platform.

        Yields:
            :class:`SearcherOperation` objects with absolute lengths.

        Raises:
            RuntimeError: an op was not completed, or a worker iterates in ChiefOnly mode.
        """
        if not isinstance(searcher_mode, SearcherMode):
            searcher_mode = SearcherMode(searcher_mode)
        dist = self._dist
        if searcher_mode is SearcherMode.ChiefOnly and not dist.is_chief:
            raise RuntimeError(
                "searcher.operations(searcher_mode=ChiefOnly) may only be called on the chief"
            )
        share = searcher_mode is SearcherMode.WorkersAskChief and dist.size > 1
        prev: SearcherOperation | None = None
        while True:
            self._check_open()
            err: BaseException | None = None
            msg: tuple[Any, ...] = ("worker",)
            if dist.is_chief:
                try:
                    if prev is not None and not prev.completed:
                        raise RuntimeError(
                            f"op.report_completed() was not called for the operation of length "
                            f"{prev.length} before asking for the next one"
                        )
                    nxt = self._next_op()
                    msg = ("done",) if nxt is None else ("op", *nxt)
                except BaseException as exc:
                    err = exc
                    msg = ("error", f"{type(exc).__name__}: {exc}")
            if share:
                # A chief's failure is broadcast too, so no worker waits forever.
                msg = dist.broadcast(msg)
            if err is not None:
                raise err
            if msg[0] == "error":
                raise RuntimeError(f"the chief failed to get a searcher operation: {msg[1]}")
            if msg[0] == "done":
                return
            _, length, unit = msg
            prev = SearcherOperation(self, length, unit=unit, is_chief=dist.is_chief)
            yield prev

    def get_configured_units(self) -> str | None:
        """The unit of ``searcher.max_length`` (``batches``/``records``/``epochs``), if known."""
        return self._unit

    def _next_op(self) -> tuple[int, str] | None:
        if self._session is None:
            if self._local_done:
                return None
            if self._max_length is None:
                raise ValueError(
                    "no searcher length without a master searcher: pass "
                    "core_api.init(max_length=N) (or {'epochs': N}), or set searcher.max_length "
                    "in the unmanaged experiment's config"
                )
            self._local_done = True
            return self._max_length, self._unit
        if self._done:
            return None
        session = self._session
        request = searcher_pb2.GetSearcherOperationRequest(
            trial_id=self._trial_id, timeout_seconds=self._poll_timeout
        )
        while True:
            self._check_open()
            resp = session.call(
                session.searcher.GetSearcherOperation,
                request,
                timeout=self._poll_timeout + 30.0,
            )
            if resp.completed:
                return None
            if resp.has_op:
                return int(resp.op.length), resp.op.unit or self._unit or "batches"

    def _complete(self, length: int, metric: float) -> None:
        self._check_open()
        if self._session is None:
            logger.info("searcher operation of length %d completed: metric=%s", length, metric)
            return
        # The metrics not sent yet go with the completion (stored first): one call, not two.
        pending = self._train.take_pending()
        session = self._session
        resp = session.call(
            session.searcher.CompleteSearcherOperation,
            searcher_pb2.CompleteSearcherOperationRequest(
                trial_id=self._trial_id, length=length, searcher_metric=metric, metrics=pending
            ),
        )
        if pending is not None and not resp.metrics_stored:  # a master older than the field
            self._train.send_reports(pending)
        self._done = resp.completed

    def close(self) -> None:
        """Refuse further calls."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ContextClosedError("the core_api context is closed (close() was called)")
