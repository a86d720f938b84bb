"""The supervisor of one trial run: ``python -m master_server.supervisor LAUNCH_JSON``.

It starts the entrypoint once per rank (``slots > 1``: one process per slot with the
torch.distributed env:// variables, as torchrun would; an entrypoint that runs a launcher,
``-m core_api.launch.torch_distributed``, is started once and starts the ranks itself), writes
each rank's stdout and stderr to files in the run directory, ships every line to the master's
log store in batches, and when the ranks have exited reports the run's exit code to the master
(retrying while the master is unreachable). If one rank fails, the others are stopped: a gang
lives and dies together. SIGTERM is forwarded to the ranks; ranks still alive after the grace
period are killed.

``launch.json`` may place the supervisor in a larger gang (the Ray backend runs one per rank,
on any node): ``distributed`` gives its first global rank, the world size, its node rank and the
chief's ``master_addr``/``master_port``; ``report_exit: false`` leaves the exit report to the
resource manager (which reports once every part of the gang has ended); ``stop_with_parent``
makes the supervisor stop its ranks when its parent process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

import grpc
import tenacity

from determined_sdk._transport import CERT_ENV, BearerToken, make_channel, parse_master
from determined_sdk.log_levels import LEVELS, LevelParser
from determined_sdk.proto import logs_pb2, logs_pb2_grpc, master_pb2, master_pb2_grpc

_LEVELS = {name: logs_pb2.LogLevel.Value("LOG_LEVEL_" + name) for name in LEVELS}
GRACE_S = 10.0


_RANK_PREFIX = re.compile(r"^\[rank=(\d+)\] ")
# Determined's launcher modules and ours: an entrypoint naming one runs once per container.
_LAUNCHERS = {
    "determined.launch.torch_distributed": "core_api.launch.torch_distributed",
    "core_api.launch.torch_distributed": "core_api.launch.torch_distributed",
}


def entrypoint_argv(entrypoint: str | list[str]) -> list[str]:
    return shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)


def launcher_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with its launcher module as ours, if it runs a launcher (``-m <launcher>``).

    A Determined entrypoint (``python3 -m determined.launch.torch_distributed ...``) runs as it
    is: the module is swapped for ours.
    """
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] in _LAUNCHERS:
            return [*argv[: i + 1], _LAUNCHERS[argv[i + 1]], *argv[i + 2 :]]
    return None


def split_rank(text: str, rank: int) -> tuple[int, str]:
    """The rank a launcher's ``[rank=N]`` prefix names (and the text without it)."""
    m = _RANK_PREFIX.match(text)
    if m is None:
        return rank, text
    return int(m.group(1)), text[m.end() :]


def stop_with_parent() -> None:
    """Get SIGTERM when the parent process dies (Linux ``PR_SET_PDEATHSIG``).

    Used where the supervisor's parent is a Ray actor: a killed actor or a lost node stops the
    ranks (SIGTERM, then SIGKILL after the grace period) instead of leaving them training
    unwatched. Set in this process itself: a ``preexec_fn`` in the actor's many-threaded process
    is not safe between fork and exec.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Shipper(threading.Thread):
    """Sends log lines to the master in batches; never blocks the readers for long."""

    def __init__(self, stub: logs_pb2_grpc.LogServiceStub) -> None:
        super().__init__(name="log-shipper", daemon=True)
        self.q: queue.Queue[logs_pb2.LogLine | None] = queue.Queue(maxsize=100_000)
        self._stub = stub

    def run(self) -> None:
        done = False
        while not done:
            batch: list[logs_pb2.LogLine] = []
            item = self.q.get()
            if item is None:
                done = True
            else:
                batch.append(item)
            deadline = time.monotonic() + 0.2
            while len(batch) < 1000 and not done:
                try:
                    item = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                self._send(batch)

    def _send(self, batch: list[logs_pb2.LogLine]) -> None:
        """Send one batch. While the master is unreachable, keep trying (an outage of any
        length; the queue is bounded) and say so once; other errors give up after 60 s."""
        delay, warned, first_error = 0.1, False, 0.0
        # One id for every attempt: a batch whose reply was lost is stored once.
        request = logs_pb2.ShipLogsRequest(lines=batch, batch_id=uuid.uuid4().hex)
        while True:
            try:
                self._stub.ShipLogs(request, timeout=10)
            except grpc.RpcError as e:
                transient = e.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                now = time.monotonic()
                first_error = first_error or now
                if not transient and now - first_error > 60:
                    print(
                        f"supervisor: dropped {len(batch)} log lines: {e.code()}", file=sys.stderr
                    )
                    return
                if transient and not warned:
                    warned = True
                    print("supervisor: master unreachable; buffering log lines", file=sys.stderr)
                time.sleep(delay)  # back off before the next attempt
                delay = min(delay * 2, 2.0)
                continue
            if warned:
                print("supervisor: master reachable again; log lines delivered", file=sys.stderr)
            return


def _reader(
    stream: IO[bytes], path: str, name: str, rank: int, spec: dict[str, Any], out: _Shipper
) -> None:
    levels = LevelParser()
    with open(path, "ab") as f:
        for raw in iter(stream.readline, b""):
            f.write(raw)
            f.flush()
            # NUL cannot be stored in a PostgreSQL text column: shown as U+FFFD instead.
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "\ufffd")
            line_rank, text = split_rank(text, rank)
            out.q.put(
                logs_pb2.LogLine(
                    trial_id=spec["trial_id"],
                    timestamp=time.time(),
                    rank=line_rank,
                    stream=name,
                    level=_LEVELS[levels.level(text)],
                    message=text,
                    run_id=spec["run_id"],
                )
            )


def _channel(spec: dict[str, Any]) -> grpc.Channel:
    """A channel to the master carrying the run's trial token (TLS if the master uses it)."""
    env = spec.get("env") or {}
    master = parse_master(spec["master"], env.get(CERT_ENV))
    token = env.get("DET_SESSION_TOKEN")
    return grpc.intercept_channel(make_channel(master), BearerToken(lambda: token))


def run(spec: dict[str, Any]) -> int:
    """Run the ranks to completion and return the run's exit code."""
    channel = _channel(spec)
    shipper = _Shipper(logs_pb2_grpc.LogServiceStub(channel))
    shipper.start()
    argv = entrypoint_argv(spec["entrypoint"])
    slots = int(spec["slots"])
    launched = launcher_argv(argv)
    if launched is not None:
        # The launcher starts the ranks itself: run it once, without per-rank variables.
        argv, slots = launched, 1
    run_dir = spec["run_dir"]
    procs: list[subprocess.Popen[bytes]] = []
    readers: list[threading.Thread] = []
    base_env = dict(spec["env"])
    # A gang spread over several supervisors (one per node or bundle, e.g. on Ray) names its
    # place in ``distributed``; alone, this supervisor is the whole gang on 127.0.0.1.
    dist = spec.get("distributed") or {}
    first_rank = int(dist.get("first_rank", 0))
    if slots > 1 or dist:
        base_env.update(
            {
                "MASTER_ADDR": str(dist.get("master_addr", "127.0.0.1")),
                "MASTER_PORT": str(dist.get("master_port") or _free_port()),
                "WORLD_SIZE": str(dist.get("world_size", slots)),
                "LOCAL_WORLD_SIZE": str(slots),
                "GROUP_RANK": str(dist.get("node_rank", 0)),
                "NODE_RANK": str(dist.get("node_rank", 0)),
            }
        )
    stopping = threading.Event()

    def on_term(signum: int, _frame: Any) -> None:
        stopping.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        for rank in range(slots):
            env = dict(base_env)
            if slots > 1 or dist:
                env.update({"RANK": str(first_rank + rank), "LOCAL_RANK": str(rank)})
            try:
                p = subprocess.Popen(
                    argv,
                    cwd=run_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            except OSError as e:
                shipper.q.put(
                    logs_pb2.LogLine(
                        trial_id=spec["trial_id"],
                        timestamp=time.time(),
                        rank=first_rank + rank,
                        stream="stderr",
                        level=logs_pb2.LOG_LEVEL_ERROR,
                        run_id=spec["run_id"],
                        message=f"could not start entrypoint {argv!r}: {e}",
                    )
                )
                on_term(signal.SIGTERM, None)
                return 127
            procs.append(p)
            for stream, name in ((p.stdout, "stdout"), (p.stderr, "stderr")):
                assert stream is not None
                path = os.path.join(run_dir, f"rank-{rank}.{name}.log")
                t = threading.Thread(
                    target=_reader,
                    args=(stream, path, name, first_rank + rank, spec, shipper),
                    daemon=True,
                )
                t.start()
                readers.append(t)
        exit_code = 0
        grace_deadline: float | None = None
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed and exit_code == 0:
                exit_code = failed[0] if failed[0] is not None else 1
                on_term(signal.SIGTERM, None)  # gang: one rank failed, stop the others
            if all(c is not None for c in codes):
                break
            if stopping.is_set() and grace_deadline is None:
                grace_deadline = time.monotonic() + GRACE_S
            if grace_deadline is not None and time.monotonic() > grace_deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
        if exit_code == 0:
            exit_code = next((c for c in (p.returncode for p in procs) if c), 0)
        return exit_code
    finally:
        for t in readers:
            t.join(timeout=10)
        shipper.q.put(None)
        shipper.join(timeout=70)
        channel.close()


def report_exit(spec: dict[str, Any], code: int) -> None:
    with _channel(spec) as channel:
        stub = master_pb2_grpc.MasterServiceStub(channel)
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(120),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2),
            retry=tenacity.retry_if_exception(
                lambda e: (
                    isinstance(e, grpc.RpcError)
                    and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                )
            ),
            reraise=False,
        ):
            with attempt:
                stub.ReportTrialExit(
                    master_pb2.ReportTrialExitRequest(
                        trial_id=spec["trial_id"], run_id=spec["run_id"], exit_code=code
                    ),
                    timeout=10,
                )


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("stop_with_parent"):
        parent = os.getppid()
        stop_with_parent()
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(128 + signal.SIGTERM)
    code = run(spec)
    # For a master that adopted this run (it is not our parent and cannot wait for us).
    with contextlib.suppress(OSError):
        (pathlib.Path(spec["run_dir"]) / ".det" / "exit_code").write_text(str(code))
    # Where one supervisor is only part of the gang, the resource manager reports the gang's
    # exit once every part has ended (a part that finished first is not the run's end).
    if spec.get("report_exit", True):
        try:
            report_exit(spec, code)
        except grpc.RpcError as e:
            print(f"supervisor: could not report exit code {code}: {e}", file=sys.stderr)
    # Exit with a code the launcher's reaper can read the same way (signals as 128+n).
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
