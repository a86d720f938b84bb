"""A real S3-compatible server for tests and benchmarks: moto's server mode on 127.0.0.1.

``MotoServer`` starts ``moto.server`` in a child process on a free loopback port, waits (with a
deadline) until it answers, and stops it. Credentials are dummies set in the environment, the
way a user sets real ones (``AWS_ACCESS_KEY_ID`` ...): nothing is passed in a config.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType

#: Dummy credentials moto accepts; set in ``os.environ`` so children inherit them.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A port free on 127.0.0.1 now (moto's server cannot report the port it bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's S3 server in a child process.

    Args:
        timeout_s: How long to wait for it to answer.
    """

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        for key, value in CREDENTIALS.items():
            os.environ.setdefault(key, value)
        for _attempt in range(3):  # the free port may be taken before moto binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("moto server did not start on 127.0.0.1")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(delay)  # polling interval of a deadline-bounded wait
                delay = min(delay * 2, 0.2)
        return False

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (through s3fs, as the platform reaches it)."""
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint_url, skip_instance_cache=True)
        fs.mkdir(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
            self.proc = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
