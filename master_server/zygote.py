"""The zygote: a warm process that forks the supervisor of each local run.

A trivial trial used to start two interpreters (its supervisor and ``python trial.py``), each
importing gRPC, protobuf and the generated code again: most of its CPU. The local launcher
starts one zygote, ``python -m master_server.zygote``, which imports those once and then forks
one child per run. The child is the run's supervisor (:func:`master_server.supervisor.supervise`):
it starts a new session (the run's process group, as before), takes the run's environment,
directory and ``supervisor.log``, and starts the ranks, forks of itself for a ``python``
entrypoint it can run in-process (:mod:`master_server.inprocess`), exec'd otherwise.

The zygote holds no thread, channel or socket (forking one that does breaks gRPC), and does not
carry the master's environment: it starts with only what a trial keeps of it
(:func:`master_server.launcher.passthrough_environment`).

Protocol, one JSON object a line: the launcher writes ``{"launch": LAUNCH_JSON}`` to the
zygote's stdin and reads ``{"launch": ..., "pid": N}`` (or ``"error"``) back on its stdout,
which also carries ``{"exit": PID, "code": C}`` when a supervisor exits (``C`` as
:attr:`subprocess.Popen.returncode` has it). That line is the run's exit report where the
supervisor leaves it to the zygote (:func:`master_server.supervisor._zygote_reports`): the
launcher is woken by it and handles the exit at once.

On end of input the zygote exits and leaves its runs running: they are in sessions of their own,
and the next master adopts them (a supervisor is recognised by the zygote's command line and its
working directory, the run directory).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pathlib
import queue
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

#: The module run as the zygote (its command line names it; the adoption check reads that).
MODULE = "master_server.zygote"

#: Imported once by the zygote (what a supervisor and a ``core_api`` trial import). gRPC
#: imports its channel and interceptor modules only when the first channel is made: named here,
#: or every supervisor and every trial imports them again (about 8 ms of CPU each). Importing
#: them starts no thread and makes no channel, so forking stays safe.
PRELOAD = (
    "grpc",
    "grpc._channel",
    "grpc._interceptor",
    "google.protobuf",
    "master_server.supervisor",
    "master_server.inprocess",
    "determined_sdk.log_levels",
    "determined_sdk._transport",
    "core_api",
    "core_api._context",
    "core_api._info",
    "core_api._searcher",
    "core_api._train",
    "core_api._checkpoint",
    "core_api._preempt",
    "core_api._distributed",
)


class ZygoteError(RuntimeError):
    """The zygote could not be started, or could not fork a run."""


# -- the zygote process ------------------------------------------------------------------------


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:  # an optional part missing: its importer pays for it later
            print(f"zygote: not preloaded: {name}: {e}", file=sys.stderr)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # a fork of a process with threads is not safe: refuse to serve
        raise SystemExit(f"zygote: {threads} threads after preloading; forking is not safe")
    import gc

    gc.freeze()  # the preloaded objects: no collection touches (and copies) their pages


def _reply(fd: int, msg: dict[str, Any]) -> None:
    data = (json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _supervisor(
    launch_path: str, zygote_env: dict[str, str], close: list[int], zygote_pid: int
) -> NoReturn:
    """The forked child: become the supervisor of the run ``launch_path`` describes."""
    code = 1
    try:
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        with open(launch_path) as f:
            spec = json.load(f)
        run_dir = spec["run_dir"]
        os.chdir(run_dir)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(
            os.path.join(run_dir, ".det", "supervisor.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.clear()
        os.environ.update(spec["env"])
        from master_server.supervisor import supervise

        code = supervise(spec, zygote_env, zygote_pid)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _fork_supervisor(
    launch_path: str, zygote_env: dict[str, str], close: list[int], sel: selectors.BaseSelector
) -> int:
    """Fork the supervisor of one run; returns once it leads a session of its own."""
    ready_r, ready_w = os.pipe()
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            sel.close()
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.set_wakeup_fd(-1)
            os.close(ready_r)
            os.setsid()
            os.close(ready_w)  # the zygote reads end of file: the session exists
        except BaseException:
            os._exit(1)
        _supervisor(launch_path, zygote_env, close, zygote_pid)
    os.close(ready_w)
    try:
        os.read(ready_r, 1)  # end of file once the child leads its session (or died)
    finally:
        os.close(ready_r)
    return pid


def serve() -> None:
    """The zygote's loop: fork a supervisor per request, report their exits; return at the end
    of input."""
    zygote_env = dict(os.environ)
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)  # stray output goes to the zygote's log, never into the replies
    _preload()
    # A ^C at the master's terminal is the master's to handle; the runs have sessions of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    sel = selectors.DefaultSelector()
    sel.register(requests, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    close = [requests, replies, wake_r, wake_w]
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
                continue
            data = os.read(requests, 65536)
            if not data:
                return  # the master is gone or stopping: the runs go on without us
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                path = json.loads(line)["launch"]
                try:
                    pid = _fork_supervisor(path, zygote_env, close, sel)
                except OSError as e:
                    _reply(replies, {"launch": path, "error": str(e)})
                else:
                    _reply(replies, {"launch": path, "pid": pid})
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _reply(replies, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


# -- the launcher's side -----------------------------------------------------------------------


class Zygote:
    """The launcher's handle on its zygote process: start it, ask it to fork a run's supervisor,
    read the exit codes of those supervisors.

    Args:
        env: The zygote's whole environment (it must not hold the master's secrets).
        log_path: Where the zygote's own output goes.
        on_exit: Called (from the reader thread; it must be cheap) once an exit the zygote
            reported can be read with :meth:`exit_code`, and when the zygote ends.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: pathlib.Path,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._env = env
        self._log_path = log_path
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._children: set[int] = set()  # forked by the zygote that runs now
        self._lock = threading.Lock()  # one request at a time; guards _proc
        self._exit_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._running = False

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._running else None

    def is_parent_of(self, pid: int) -> bool:
        """Whether the zygote that runs now forked supervisor ``pid`` (and so will report its
        exit); False once it has ended and every exit it saw has been read."""
        with self._exit_lock:
            return self._running and pid in self._children

    def _start(self) -> None:
        import master_server

        # Its working directory is the first entry of its import path: where this master's
        # master_server package is, whatever the master's own directory.
        root = pathlib.Path(master_server.__file__).resolve().parent.parent
        if self._proc is not None:  # the previous zygote ended: reap it
            self._proc.wait()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                cwd=root,
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._replies = queue.Queue()
        with self._exit_lock:
            self._running = True
            self._children = set()
        self._reader = threading.Thread(
            target=self._read, args=(self._proc, self._replies), name="zygote-reader", daemon=True
        )
        self._reader.start()
        logger.info("started zygote pid %d", self._proc.pid)

    def _read(
        self, proc: subprocess.Popen[bytes], replies: queue.Queue[dict[str, Any] | None]
    ) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:  # not ours (the zygote's own output goes to its log)
                logger.warning("zygote pid %d: unexpected output %r", proc.pid, line[:200])
                continue
            if "exit" in msg:
                with self._exit_lock:
                    self._exits[int(msg["exit"])] = int(msg["code"])
                if self._on_exit is not None:
                    self._on_exit()
            else:
                replies.put(msg)
        with self._exit_lock:
            self._running = False  # after every exit it reported has been recorded
        replies.put(None)
        if self._on_exit is not None:
            self._on_exit()

    def launch(self, launch_path: pathlib.Path, timeout: float = 60.0) -> int:
        """Fork the supervisor of the run ``launch_path`` describes; returns its pid (the run's
        process group). Starts the zygote if it does not run.

        Raises:
            ZygoteError: The zygote could not be started or could not fork.
        """
        with self._lock:
            if not self._running:
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({"launch": str(launch_path)}) + "\n").encode())
                proc.stdin.flush()
                reply = self._replies.get(timeout=timeout)
            except (OSError, queue.Empty) as e:
                raise ZygoteError(f"zygote pid {proc.pid} did not answer: {e!r}") from e
            if reply is None:
                raise ZygoteError(
                    f"zygote pid {proc.pid} exited (code {proc.wait()}); see {self._log_path}"
                )
            if "error" in reply:
                raise ZygoteError(f"zygote could not fork the run: {reply['error']}")
            pid = int(reply["pid"])
            with self._exit_lock:
                self._children.add(pid)
            return pid

    def exit_code(self, pid: int) -> int | None:
        """The exit code of supervisor ``pid``, if the zygote saw it exit."""
        with self._exit_lock:
            return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        """Drop what is known of supervisor ``pid`` (its exit has been handled)."""
        with self._exit_lock:
            self._exits.pop(pid, None)
            self._children.discard(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """End the zygote (its runs go on running)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if self._reader is not None:
                self._reader.join(timeout)
            self._proc = None


def is_zygote_child(pid: int, run_dir: pathlib.Path) -> bool:
    """Whether ``pid`` is a supervisor the zygote forked for ``run_dir``: a process with the
    zygote's command line whose working directory is the run directory."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return MODULE.encode() in argv and cwd == os.path.realpath(run_dir)


if __name__ == "__main__":
    serve()
