"""``python -m core_api.launch.torch_distributed [--] CMD...``: one rank of CMD per slot.

Run once per container by the master (it recognizes this launcher in an entrypoint), it starts
``slots_per_trial`` copies of CMD with torch.distributed's ``env://`` variables, each wrapped by
:mod:`core_api.launch.wrap_rank`. When one rank fails the others are stopped (a gang lives and
dies together); SIGTERM is passed to every rank. The exit code is the first failing rank's, else 0.

The slot count comes from the trial's cluster info; off-cluster it is ``$DET_SLOTS_PER_TRIAL``
or 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from core_api._info import get_cluster_info
from core_api.launch.wrap_rank import split_command

#: Seconds ranks get to exit after SIGTERM before they are killed.
GRACE_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slots() -> int:
    """How many ranks to start on this container."""
    info = get_cluster_info()
    if info is not None:
        return info.container_slot_counts[info.container_rank]
    raw = os.environ.get("DET_SLOTS_PER_TRIAL", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"DET_SLOTS_PER_TRIAL must be an integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"DET_SLOTS_PER_TRIAL must be >= 1, got {n}")
    return n


def rank_env(
    rank: int,
    size: int,
    addr: str,
    port: int,
    *,
    first_rank: int = 0,
    world: int = 0,
    node: int = 0,
) -> dict[str, str]:
    """torch.distributed's variables for local ``rank`` of ``size`` on this node.

    ``first_rank``, ``world`` and ``node`` place this node's ranks in a gang of several
    containers (global rank ``first_rank + rank`` of ``world``); by default the node is the gang.
    """
    return {
        "RANK": str(first_rank + rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world or size),
        "LOCAL_WORLD_SIZE": str(size),
        "GROUP_RANK": str(node),
        "NODE_RANK": str(node),
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
    }


def gang_place() -> tuple[int, int, int, str, int] | None:
    """``(first_rank, world, node, addr, port)`` when this container is one of several.

    The master's supervisor sets ``MASTER_ADDR``/``MASTER_PORT`` (the chief's node) for a gang
    spread over containers; the slot counts of every container come from the cluster info.
    """
    info = get_cluster_info()
    if info is None or len(info.container_slot_counts) < 2:
        return None
    counts, me = info.container_slot_counts, info.container_rank
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return sum(counts[:me]), sum(counts), me, addr, int(port)


def main(argv: list[str] | None = None) -> int:
    """Start the ranks and wait for them; return the gang's exit code."""
    cmd = split_command(list(sys.argv[1:] if argv is None else argv))
    if not cmd:
        print("usage: python -m core_api.launch.torch_distributed [--] CMD...", file=sys.stderr)
        return 2
    try:
        size = slots()
    except ValueError as exc:
        print(f"torch_distributed: {exc}", file=sys.stderr)
        return 2
    addr, port = "127.0.0.1", _free_port()
    first_rank, world, node = 0, size, 0
    place = gang_place()
    if place is not None:
        first_rank, world, node, addr, port = place
    procs: list[subprocess.Popen[bytes]] = []
    stopping: list[float] = []

    def stop_all(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        if not stopping:
            stopping.append(time.monotonic() + GRACE_S)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for rank in range(size):
        env = {
            **os.environ,
            **rank_env(rank, size, addr, port, first_rank=first_rank, world=world, node=node),
        }
        wrapped = [sys.executable, "-m", "core_api.launch.wrap_rank", "RANK", "--", *cmd]
        procs.append(subprocess.Popen(wrapped, env=env, stdin=subprocess.DEVNULL))
    exit_code = 0
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed and exit_code == 0:
            code = int(failed[0] or 1)
            exit_code = code if code > 0 else 128 - code  # killed by signal n: 128 + n
            stop_all()
        if all(c is not None for c in codes):
            break
        if stopping and time.monotonic() > stopping[0]:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)  # polling the ranks' exit, not synchronization
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
