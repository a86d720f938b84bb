"""``python -m core_api.launch.wrap_rank RANK [--] CMD...``: run CMD, prefixing its output lines.

``RANK`` is a number or the name of an environment variable holding one (``RANK``,
``LOCAL_RANK``, ...). Every line CMD writes to stdout or stderr is written to the same stream
with ``[rank=N] `` in front, so the lines of many ranks stay apart in one log. SIGTERM and
SIGINT are passed to CMD; the exit code is CMD's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import IO, Any


def parse_rank(spec: str) -> int:
    """``spec`` as a rank: an int, or the name of an environment variable holding one.

    Raises:
        ValueError: neither an int nor a set variable holding one.
    """
    if spec.isdigit():
        return int(spec)
    value = os.environ.get(spec)
    if value is None:
        raise ValueError(f"wrap_rank: {spec!r} is neither a rank nor a set environment variable")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"wrap_rank: ${spec} is not an integer: {value!r}") from None


def _pump(src: IO[bytes], dst: IO[bytes], prefix: bytes) -> None:
    for line in iter(src.readline, b""):
        dst.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        dst.flush()


def split_command(args: list[str]) -> list[str]:
    """The command after an optional leading ``--``."""
    return args[1:] if args and args[0] == "--" else args


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m core_api.launch.wrap_rank RANK [--] CMD...", file=sys.stderr)
        return 2
    try:
        rank = parse_rank(args[0])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cmd = split_command(args[1:])
    if not cmd:
        print("wrap_rank: no command to run", file=sys.stderr)
        return 2
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        print(f"wrap_rank: could not start {cmd!r}: {exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    prefix = f"[rank={rank}] ".encode()
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout.buffer, prefix)),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr.buffer, prefix)),
    ]
    for t in pumps:
        t.start()
    code = proc.wait()
    for t in pumps:
        t.join()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
