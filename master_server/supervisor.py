"""The supervisor of one trial run: ``python -m master_server.supervisor LAUNCH_JSON``.

It starts the entrypoint once per rank (``slots > 1``: one process per slot with the
torch.distributed env:// variables, as torchrun would; an entrypoint that runs a launcher,
``-m core_api.launch.torch_distributed``, is started once and starts the ranks itself), writes
each rank's stdout and stderr to files in the run directory, ships every line to the master's
log store in batches, and when the ranks have exited reports the run's exit code to the master
(retrying while the master is unreachable). If one rank fails, the others are stopped: a gang
lives and dies together. SIGTERM is forwarded to the ranks; ranks still alive after the grace
period are killed.

A supervisor is started for every run, so it is kept cheap: the ranks are started before gRPC
is imported (the trial's start-up overlaps the supervisor's), its three messages are encoded
here rather than through protobuf and the generated code, rank exits are waited for rather than
polled, its channel to the master is made only when there is something to send, the exit is
reported on the channel that shipped the logs as soon as the last line is shipped, and the
process ends without tearing the interpreter down. A supervisor the zygote forked leaves the
report of an ordinary exit code to the zygote, which tells the launcher of every exit of its
children anyway: a run that prints nothing then never connects at all.

``launch.json`` may place the supervisor in a larger gang (the Ray backend runs one per rank,
on any node): ``distributed`` gives its first global rank, the world size, its node rank and the
chief's ``master_addr``/``master_port``; ``report_exit: false`` leaves the exit report to the
resource manager (which reports once every part of the gang has ended); ``stop_with_parent``
makes the supervisor stop its ranks when its parent process dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported when first needed: after the ranks have started
    import grpc

    from determined_sdk._transport import MasterAddress
    from master_server.inprocess import PythonEntry

GRACE_S = 10.0
REPORT_S = 120.0  # how long the exit report is retried while the master is unreachable


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
    import ctypes  # only where a parent's death must stop the run (Ray)

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    import socket  # only for a gang of several ranks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the supervisor's messages, encoded here ---------------------------------------------------
# A supervisor sends three messages and reads no reply. Encoding them here (proto3 wire format,
# byte for byte what the generated code writes) spares every trial's supervisor importing
# protobuf and the generated modules, a sixth of its CPU. The field numbers are those of
# logs.proto and master.proto; tests/master_server/test_supervisor_wire.py checks them, and the
# bytes, against the generated code.

SHIP_LOGS = "/detsdk.v1.LogService/ShipLogs"
REPORT_TRIAL_EXIT = "/detsdk.v1.MasterService/ReportTrialExit"
#: ``LogLevel`` values by the level names of :mod:`determined_sdk.log_levels`.
LOG_LEVELS = {"TRACE": 1, "DEBUG": 2, "INFO": 3, "WARNING": 4, "ERROR": 5, "CRITICAL": 6}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int32 is ten bytes, as two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""


def log_line(
    *, trial_id: int, timestamp: float, rank: int, stream: str, level: str, text: str, run_id: int
) -> bytes:
    """An encoded ``LogLine``; ``level`` is a name of :data:`LOG_LEVELS`."""
    return b"".join(
        (
            _int(2, trial_id),
            _varint(3 << 3 | 1) + struct.pack("<d", timestamp) if timestamp else b"",
            _int(4, rank),
            _bytes(5, stream.encode()),
            _int(6, LOG_LEVELS[level]),
            _bytes(7, text.encode()),
            _int(8, run_id),
        )
    )


def ship_logs_request(lines: list[bytes], batch_id: str) -> bytes:
    """An encoded ``ShipLogsRequest`` of encoded ``LogLine`` messages."""
    return b"".join(_varint(1 << 3 | 2) + _varint(len(line)) + line for line in lines) + _bytes(
        100, batch_id.encode()
    )


def report_trial_exit_request(trial_id: int, run_id: int, exit_code: int) -> bytes:
    """An encoded ``ReportTrialExitRequest``."""
    return _int(1, trial_id) + _int(2, run_id) + _int(3, exit_code)


def _unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    """A call of ``method`` that sends encoded bytes and returns the reply's bytes."""
    return channel.unary_unary(method)


class _Connection:
    """The supervisor's channel to the master, made when first needed.

    A run that prints nothing and whose exit the zygote reports never needs one (a channel
    costs a gRPC start-up, a connection and a close). A TLS channel is made at once, so that
    a certificate file that cannot be read fails the run before it trains, as it always has.

    Args:
        spec: The launch spec.
        channel: A channel to use instead of one of its own (never closed here).
    """

    def __init__(self, spec: dict[str, Any], channel: grpc.Channel | None = None) -> None:
        self._spec = spec
        self._lock = threading.Lock()
        self._channel = channel
        self._own = channel is None
        if channel is None and _master(spec).tls:
            self._channel = _channel(spec)

    def get(self) -> grpc.Channel:
        """The channel, made on the first call."""
        with self._lock:
            if self._channel is None:
                self._channel = _channel(self._spec)
            return self._channel

    def close(self) -> None:
        """Close the channel if it is this object's own and was made."""
        with self._lock:
            if self._own and self._channel is not None:
                self._channel.close()


class _Shipper(threading.Thread):
    """Sends log lines (encoded ``LogLine`` messages) to the master in batches; never blocks
    the readers for long. The thread starts with the first line queued, and connects when it
    sends the first batch: a run that prints nothing costs neither."""

    def __init__(self, connection: _Connection) -> None:
        super().__init__(name="log-shipper", daemon=True)
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=100_000)
        self._connection = connection
        self._ship: grpc.UnaryUnaryMultiCallable | None = None
        self._start_lock = threading.Lock()
        self._running = False

    def put(self, line: bytes) -> None:
        """Queue an encoded ``LogLine`` (blocks while the queue is full)."""
        if not self._running:
            with self._start_lock:
                if not self._running:
                    self.start()
                    self._running = True
        self.q.put(line)

    def finish(self, timeout: float) -> None:
        """Ship what is queued, then stop; waits up to ``timeout`` seconds."""
        with self._start_lock:
            if not self._running:
                return
        self.q.put(None)
        self.join(timeout)

    def run(self) -> None:
        done = False
        while not done:
            batch: list[bytes] = []
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

    def _send(self, batch: list[bytes]) -> None:
        """Send one batch. While the master is unreachable, keep trying (an outage of any
        length; the queue is bounded) and say so once; other errors give up after 60 s."""
        import uuid

        import grpc

        delay, warned, first_error = 0.1, False, 0.0
        # One id for every attempt: a batch whose reply was lost is stored once.
        request = ship_logs_request(batch, uuid.uuid4().hex)
        if self._ship is None:
            self._ship = _unary(self._connection.get(), SHIP_LOGS)
        while True:
            try:
                self._ship(request, timeout=10)
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
    from determined_sdk.log_levels import LevelParser

    levels = LevelParser()
    with open(path, "ab") as f:
        for raw in iter(stream.readline, b""):
            f.write(raw)
            f.flush()
            # NUL cannot be stored in a PostgreSQL text column: shown as U+FFFD instead.
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "\ufffd")
            line_rank, text = split_rank(text, rank)
            out.put(
                log_line(
                    trial_id=spec["trial_id"],
                    timestamp=time.time(),
                    rank=line_rank,
                    stream=name,
                    level=levels.level(text),
                    text=text,
                    run_id=spec["run_id"],
                )
            )


def _master(spec: dict[str, Any]) -> MasterAddress:
    """Where the run's master is, and whether over TLS."""
    from determined_sdk._transport import CERT_ENV, parse_master

    return parse_master(spec["master"], (spec.get("env") or {}).get(CERT_ENV))


def _channel(spec: dict[str, Any]) -> grpc.Channel:
    """A channel to the master carrying the run's trial token (TLS if the master uses it)."""
    import grpc

    from determined_sdk._transport import BearerToken, make_channel

    token = (spec.get("env") or {}).get("DET_SESSION_TOKEN")
    return grpc.intercept_channel(make_channel(_master(spec)), BearerToken(lambda: token))


def run(spec: dict[str, Any], channel: grpc.Channel | None = None) -> int:
    """Run the ranks to completion and return the run's exit code.

    Args:
        spec: The launch spec (``launch.json``).
        channel: The channel to ship log lines on (None: one of its own, closed at the end).
    """
    code, connection = _run(spec, channel)
    connection.close()
    return code


class _Rank(Protocol):
    """A rank's process: a :class:`subprocess.Popen` or an in-process
    :class:`~master_server.inprocess.ForkedRank`."""

    @property
    def stdout(self) -> IO[bytes] | None: ...
    @property
    def stderr(self) -> IO[bytes] | None: ...
    @property
    def returncode(self) -> int | Any: ...
    def poll(self) -> int | None: ...
    def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def _run(
    spec: dict[str, Any], channel: grpc.Channel | None, zygote_env: dict[str, str] | None = None
) -> tuple[int, _Connection]:
    """:func:`run`, returning the connection it shipped the logs on (made when the first line
    is shipped).

    ``zygote_env``: this process is a fork of the zygote, which started with this environment;
    ranks of a ``python`` entrypoint it can run are forks of this process (see
    :mod:`master_server.inprocess`). No thread may run here until they are forked.
    """
    argv = entrypoint_argv(spec["entrypoint"])
    slots = int(spec["slots"])
    launched = launcher_argv(argv)
    if launched is not None:
        # The launcher starts the ranks itself: run it once, without per-rank variables.
        argv, slots = launched, 1
    run_dir = spec["run_dir"]
    procs: list[_Rank] = []
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
    changed = threading.Event()  # a rank exited, or we were asked to stop

    def on_term(signum: int, _frame: Any) -> None:
        stopping.set()
        changed.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def watch(p: _Rank) -> None:
        p.wait()
        changed.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # The ranks first: the import of gRPC below overlaps their start-up. All of them before
    # any thread starts: a rank may be a fork of this process.
    entry: PythonEntry | None = None
    if zygote_env is not None:
        from master_server.inprocess import python_entry

        entry = python_entry(argv, base_env, zygote_env)
    start_error: tuple[int, OSError] | None = None
    for rank in range(slots):
        env = dict(base_env)
        if slots > 1 or dist:
            env.update({"RANK": str(first_rank + rank), "LOCAL_RANK": str(rank)})
        try:
            procs.append(_start_rank(argv, entry, env, run_dir, procs))
        except OSError as e:
            start_error = (rank, e)
            on_term(signal.SIGTERM, None)
            break
    for rank, p in enumerate(procs):
        threading.Thread(target=watch, args=(p,), name=f"wait-rank-{rank}", daemon=True).start()
    try:
        connection = _Connection(spec, channel)
    except BaseException:
        for p in procs:  # no way to ship their output or report: stop them rather than orphan
            p.kill()
        raise
    shipper = _Shipper(connection)
    try:
        for rank, p in enumerate(procs):
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
        if start_error is not None:
            rank, error = start_error
            shipper.put(
                log_line(
                    trial_id=spec["trial_id"],
                    timestamp=time.time(),
                    rank=first_rank + rank,
                    stream="stderr",
                    level="ERROR",
                    run_id=spec["run_id"],
                    text=f"could not start entrypoint {argv!r}: {error}",
                )
            )
            for p in procs:
                p.wait()
            _leave_exit_code(spec, 127)
            return 127, connection
        exit_code = 0
        grace_deadline: float | None = None
        while True:
            changed.clear()  # before reading the codes: an exit after this wakes the wait
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
            timeout = 1.0 if grace_deadline is None else max(0.0, grace_deadline - time.monotonic())
            changed.wait(timeout=min(1.0, timeout) + 0.01)
        if exit_code == 0:
            exit_code = next((c for c in (p.returncode for p in procs) if c), 0)
        # At once, not after the last log lines were shipped (which waits out an outage of
        # the master): the run has ended, whatever happens to this process now.
        _leave_exit_code(spec, exit_code)
        return exit_code, connection
    finally:
        for t in readers:
            t.join(timeout=10)
        shipper.finish(timeout=70)


def _start_rank(
    argv: list[str],
    entry: PythonEntry | None,
    env: dict[str, str],
    run_dir: str,
    started: list[_Rank],
) -> _Rank:
    """Start one rank: a fork that runs ``entry`` in-process, or ``argv`` exec'd when
    ``entry`` is None."""
    if entry is None:
        return subprocess.Popen(
            argv,
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    from master_server.inprocess import fork_rank

    # The pipes of the ranks already started are theirs alone.
    close = [s.fileno() for p in started for s in (p.stdout, p.stderr) if s is not None]
    return fork_rank(entry, env, run_dir, close)


def _leave_exit_code(spec: dict[str, Any], code: int) -> None:
    """Write the run's exit code into its ``.det`` directory, for a master that adopted this
    run (it is not our parent and cannot wait for us) or finds it ended after an outage."""
    exit_file = os.path.join(spec["run_dir"], ".det", "exit_code")
    with contextlib.suppress(OSError), open(exit_file, "w") as f:
        f.write(str(code))


def report_exit(spec: dict[str, Any], code: int, channel: grpc.Channel | None = None) -> None:
    """Report the run's exit code to the master, retrying while it is unreachable (120 s).

    Args:
        spec: The launch spec.
        code: The exit code.
        channel: The channel to use (None: one of its own).

    Raises:
        grpc.RpcError: The master refused the report, or stayed unreachable.
    """
    import grpc

    if channel is None:
        with _channel(spec) as own:
            report_exit(spec, code, own)
        return
    report = _unary(channel, REPORT_TRIAL_EXIT)
    request = report_trial_exit_request(spec["trial_id"], spec["run_id"], code)
    deadline = time.monotonic() + REPORT_S
    delay = 0.1
    while True:
        try:
            report(request, timeout=10)
            return
        except grpc.RpcError as e:
            transient = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not transient or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # back off before the next attempt
        delay = min(delay * 2, 2.0)


def _zygote_reports(code: int, zygote_pid: int | None) -> bool:
    """Whether the zygote ``zygote_pid`` will report exit code ``code`` for us.

    The zygote tells its launcher (the master that launched the run) of every exit of its
    children; the launcher handles it as it would this process's report. That holds while the
    zygote is our parent and runs for that master (it exits when the master stops or dies, and
    we are then reparented), and only for a code our exit status carries unchanged: a negative
    one (a rank killed by a signal) reads as 128+n there, a different reason. A zygote that
    ends after this check loses the exit: the next master then reads the code the run left in
    its directory (:func:`_leave_exit_code`), as for any run that ended while no master ran.
    """
    return zygote_pid is not None and 0 <= code <= 255 and os.getppid() == zygote_pid


def _report_or_say(spec: dict[str, Any], code: int, connection: _Connection) -> None:
    """:func:`report_exit` on ``connection``; a failure is only said (the code is in a file)."""
    import grpc

    try:
        report_exit(spec, code, connection.get())
    except grpc.RpcError as e:
        print(f"supervisor: could not report exit code {code}: {e}", file=sys.stderr)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("stop_with_parent"):
        parent = os.getppid()
        stop_with_parent()
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(128 + signal.SIGTERM)
    code = supervise(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def supervise(
    spec: dict[str, Any], zygote_env: dict[str, str] | None = None, zygote_pid: int | None = None
) -> int:
    """Run the ranks, report the exit to the master, and return this process's exit code
    (a signal as 128+n, as the launcher's reaper reads it).

    Args:
        spec: The launch spec.
        zygote_env: Given when this process is a fork of the zygote: the environment the
            zygote started with (see :func:`_run`).
        zygote_pid: Given when this process is a fork of the zygote: its pid. While the zygote
            is still this process's parent, it reports this process's exit status to the
            master that launched the run (see :func:`_zygote_reports`).
    """
    # The report goes on the channel that shipped the logs: no second connection to wait for.
    code, connection = _run(spec, None, zygote_env)  # (it left the exit code in the run dir)
    try:
        # Where one supervisor is only part of the gang, the resource manager reports the
        # gang's exit once every part has ended (a part that finished first is not the end).
        if spec.get("report_exit", True) and not _zygote_reports(code, zygote_pid):
            _report_or_say(spec, code, connection)
    finally:
        connection.close()
    # Exit with a code the launcher's reaper can read the same way (signals as 128+n). Nothing
    # is left to do (the files are written, the channel closed, the shipper done): the caller
    # exits skipping the interpreter's teardown of gRPC and every loaded module, a good part of
    # what a supervisor costs.
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    main()
