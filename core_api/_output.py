"""Output capture for unmanaged runs: what the script prints also lands in ``trial logs``.

On the cluster the supervisor owns a trial's stdout and stderr. A script run by hand has no
supervisor, so :class:`OutputCapture` stands in: it wraps ``sys.stdout`` / ``sys.stderr`` (the
terminal still shows everything) and ships each complete line to the master's log store from a
background thread, in batches. Shipping never blocks the script; a line that cannot be shipped
is dropped with one warning, as a log line must never fail a training run.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import IO, Any

from core_api._channel import MasterSession
from determined_sdk import errors
from determined_sdk.proto import logs_pb2

logger = logging.getLogger(__name__)

_LEVELS = (
    ("CRITICAL", logs_pb2.LOG_LEVEL_CRITICAL),
    ("ERROR", logs_pb2.LOG_LEVEL_ERROR),
    ("WARNING", logs_pb2.LOG_LEVEL_WARNING),
    ("INFO", logs_pb2.LOG_LEVEL_INFO),
    ("DEBUG", logs_pb2.LOG_LEVEL_DEBUG),
)


def _level(text: str) -> logs_pb2.LogLevel.ValueType:
    head = text[:80]
    for name, level in _LEVELS:
        if name in head:
            return level
    return logs_pb2.LOG_LEVEL_INFO


class _Tee:
    """A text stream that writes through to ``inner`` and hands complete lines to ``sink``."""

    def __init__(self, inner: IO[str], stream: str, sink: OutputCapture) -> None:
        self._inner = inner
        self._stream = stream
        self._sink = sink
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        n = self._inner.write(text)
        with self._lock:
            data = self._partial + text
            *lines, self._partial = data.split("\n")
        for line in lines:
            self._sink.put(self._stream, line)
        return n

    def flush(self) -> None:
        self._inner.flush()

    def drain(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self._sink.put(self._stream, rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class OutputCapture:
    """Tee this process's stdout and stderr into the trial's logs until :meth:`close`.

    Args:
        session: the master session.
        trial_id: the unmanaged trial.
        run_id: its run.
        rank: this process's rank.
    """

    def __init__(self, session: MasterSession, *, trial_id: int, run_id: int, rank: int) -> None:
        self._session = session
        self._trial_id, self._run_id, self._rank = trial_id, run_id, rank
        self._q: queue.Queue[logs_pb2.LogLine | None] = queue.Queue(maxsize=100_000)
        self._warned = False
        self._out = _Tee(sys.stdout, "stdout", self)
        self._err = _Tee(sys.stderr, "stderr", self)
        self._thread = threading.Thread(target=self._run, name="core_api-output", daemon=True)
        self._thread.start()
        originals = {id(sys.stdout): self._out, id(sys.stderr): self._err}
        sys.stdout, sys.stderr = self._out, self._err
        # Logging handlers made before (logging.basicConfig) hold the original streams.
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and id(h.stream) in originals:
                self._handlers.append((h, h.stream))
                h.setStream(originals[id(h.stream)])

    def put(self, stream: str, text: str) -> None:
        line = logs_pb2.LogLine(
            trial_id=self._trial_id,
            timestamp=time.time(),
            rank=self._rank,
            stream=stream,
            level=_level(text),
            message=text,
            run_id=self._run_id,
        )
        try:
            self._q.put_nowait(line)
        except queue.Full:
            self._warn("the log queue is full")

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("core_api: some output lines were not sent to the master: %s", why)

    def _run(self) -> None:
        done = False
        while not done:
            item = self._q.get()
            batch = [] if item is None else [item]
            done = item is None
            while not done and len(batch) < 1000:
                try:
                    nxt = self._q.get(timeout=0.2)
                except queue.Empty:
                    break
                if nxt is None:
                    done = True
                else:
                    batch.append(nxt)
            if batch:
                try:
                    self._session.call(
                        self._session.logs.ShipLogs, logs_pb2.ShipLogsRequest(lines=batch)
                    )
                except errors.DeterminedError as exc:
                    self._warn(str(exc))

    def close(self, timeout: float = 30.0) -> None:
        """Restore the streams and ship what is left (waits up to ``timeout`` seconds)."""
        if sys.stdout is self._out:
            sys.stdout = self._out._inner
        if sys.stderr is self._err:
            sys.stderr = self._err._inner
        for h, stream in self._handlers:
            h.setStream(stream)
        self._out.drain()
        self._err.drain()
        self._q.put(None)
        self._thread.join(timeout)
