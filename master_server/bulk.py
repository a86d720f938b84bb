"""Bulk transfer of checkpoint files on a plain TCP port beside the gRPC port.

Why: a checkpoint streamed as gRPC messages is copied several times per chunk in user space
(file -> message -> HTTP/2 frames -> socket, and back); measured on loopback that caps a
download near 1 GB/s, well under a local copy. Here the master hands the files to the kernel
(``sendfile(2)`` for files on a local filesystem) and the SDK writes what it receives straight
to disk.

The protocol (``determined_sdk.checkpoint_wire`` holds the shared constants):

1. The SDK calls ``DownloadCheckpoint`` with request metadata ``detsdk-bulk: 1``. The call is
   authenticated and authorized like any other, and every check of the download (state,
   containment, missing files) runs before anything is offered.
2. The master answers with initial metadata ``detsdk-bulk-port`` and ``detsdk-bulk-ticket``
   (32 random bytes in hex, good for one connection within :data:`TICKET_TTL_S`) and ends the
   call without a message.
3. The SDK connects to the master's host at that port and sends the ticket and ``\\n``; up to
   ``checkpoint_wire.BULK_STREAMS`` connections may redeem one ticket, and the files are handed
   out one at a time to whichever connection is free.
4. The master sends on each connection, per file, a header
   (:func:`checkpoint_wire.pack_bulk_header`: path length, UTF-8 path, size), then exactly
   ``size`` bytes; then a header with an empty path.
   An unknown or expired ticket, or a file whose size changed, closes the connection (the
   SDK then sees a short read and fails, or falls back to the gRPC stream).

Only offered when the master serves without TLS (the port carries no TLS); with TLS the SDK
uses the gRPC stream. The port binds the gRPC host.
"""

from __future__ import annotations

import collections
import logging
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from determined_sdk import checkpoint_wire

if TYPE_CHECKING:
    from master_server.checkpoints import DownloadFile

logger = logging.getLogger(__name__)

#: Seconds a ticket stays valid once offered.
TICKET_TTL_S = 60.0
#: Connections served at once; more wait in the listen backlog.
MAX_CONNECTIONS = 16
#: Seconds a connection may stall (ticket not sent, client not reading) before it is closed.
IO_TIMEOUT_S = 60.0


class BulkServer:
    """The bulk port: tickets offered by the gRPC handler, redeemed by one connection each.

    Args:
        host: The interface to bind (the gRPC server's).
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self._sock: socket.socket | None = None
        self._tickets: dict[str, tuple[float, _Offer]] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BulkServer:
        """Bind a free port on the host and start accepting."""
        family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((self.host.strip("[]"), 0))
        sock.listen(64)
        sock.settimeout(0.5)  # so that stop() is noticed
        self._sock, self.port = sock, int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="bulk-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting; transfers in progress finish or time out on their own."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            self._tickets.clear()

    def offer(self, files: Sequence[DownloadFile]) -> str:
        """A one-use ticket for sending ``files`` (already checked by the caller)."""
        ticket = secrets.token_hex(32)
        now = time.monotonic()
        with self._lock:
            for t in [t for t, (exp, _f) in self._tickets.items() if exp < now]:
                del self._tickets[t]
            self._tickets[ticket] = (now + TICKET_TTL_S, _Offer(files))
        return ticket

    def _redeem(self, ticket: str) -> _Offer | None:
        with self._lock:
            entry = self._tickets.get(ticket)
            if entry is None or entry[0] < time.monotonic():
                self._tickets.pop(ticket, None)
                return None
            offer = entry[1]
            offer.connections += 1
            if offer.connections >= checkpoint_wire.BULK_STREAMS:
                del self._tickets[ticket]
            return offer

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._slots.acquire()
            threading.Thread(target=self._serve, args=(conn,), name="bulk", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                offer = self._redeem(_read_line(conn))
                if offer is None:
                    return  # closing at once is the whole answer
                while (f := offer.next_file()) is not None:
                    _send_file(conn, f)
                conn.sendall(checkpoint_wire.pack_bulk_header(b"", 0))
        except (OSError, ValueError) as exc:
            logger.info("bulk transfer ended early: %s", exc)
        finally:
            self._slots.release()


class _Offer:
    """The files of one ticket, handed out one at a time to the connections redeeming it."""

    def __init__(self, files: Sequence[DownloadFile]) -> None:
        self._files = collections.deque(files)
        self._lock = threading.Lock()
        self.connections = 0

    def next_file(self) -> DownloadFile | None:
        with self._lock:
            return self._files.popleft() if self._files else None


def _read_line(conn: socket.socket, limit: int = 128) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        data = conn.recv(limit - len(buf))
        if not data or len(buf) + len(data) >= limit:
            raise ValueError("bad ticket line")
        buf += data
    return buf[:-1].decode("ascii", "replace")


def _send_file(conn: socket.socket, f: DownloadFile) -> None:
    conn.sendall(checkpoint_wire.pack_bulk_header(f.path.encode(), f.size))
    if f.local:
        with f.open() as src:
            sent = conn.sendfile(src, 0, f.size) if f.size else 0
    else:
        sent = 0
        for data in f.chunks(checkpoint_wire.BULK_READ):
            data = data[: f.size - sent]
            conn.sendall(data)
            sent += len(data)
            if sent >= f.size:
                break
    if sent != f.size:
        raise ValueError(f"{f.path}: sent {sent} of {f.size} bytes (the file changed)")
