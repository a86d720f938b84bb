"""Runs the REST API and web UI with uvicorn on a thread of its own, inside the master process.

The HTTP side keeps its own event loop on its own thread, so it does not care how the gRPC
server is run; :class:`HttpServer` binds the socket itself (port 0 picks a free port, read back
from :attr:`HttpServer.port`) before the thread starts, so a busy port fails ``start()`` at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)


class HttpServer:
    """One uvicorn server for an ASGI app.

    Args:
        app: the ASGI application (``master_server.web.api.create_app``).
        host: interface to bind.
        port: TCP port; 0 picks a free one.
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.host, self._requested_port = app, host, port
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout_s: float = 30.0) -> HttpServer:
        """Bind and start serving; returns once the server accepts connections."""
        import uvicorn  # the optional ``web`` extra; imported only when HTTP is asked for

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.set_inheritable(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the master configures logging; uvicorn must not
            access_log=False,
            lifespan="on",  # the app's lifespan closes what its log follows wait on
            timeout_graceful_shutdown=2,
            ws="none",
        )
        server = uvicorn.Server(config)
        self._server = server
        failed: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as e:  # reported by start(), not lost on a thread
                failed.append(e)
                logger.exception("HTTP server stopped with an error")

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # uvicorn offers only a flag to poll for "started"
        if not server.started:
            self.stop()
            raise OSError(
                f"HTTP server on {self.host}:{self.port} did not start"
                + (f": {failed[0]}" if failed else "")
            )
        logger.info("HTTP (REST API and web UI) on http://%s:%d/", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving (open streams get ~2 s to finish) and join the thread. Safe twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None
