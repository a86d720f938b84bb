"""A ``python`` entrypoint run in a forked copy of a warm interpreter instead of a new one.

The zygote (:mod:`master_server.zygote`) has already imported gRPC, protobuf, ``core_api`` and
the supervisor; a run's supervisor is a fork of it, and each rank of an entrypoint of the form
``python script.py args`` or ``python -m module args`` is a fork of that supervisor which runs
the script as ``__main__`` (what ``python`` itself does) instead of starting a new interpreter
and importing all of that again: most of a trivial trial's CPU.

A rank runs this way only where the result is the same as ``python`` started afresh: the
interpreter is the one the zygote runs (same virtual environment), the only option is ``-u``
(stdout and stderr are unbuffered anyway), and every variable that takes effect only when an
interpreter starts (``PYTHON*``, locale, ``LD_*``, ...) is as the zygote started with. Anything
else is exec'd as before. What stays shared with the zygote: the hash seed of ``str`` (fixed per
interpreter; a trial that needs its own sets ``PYTHONHASHSEED``, which makes it exec'd) and the
modules already imported. ``random`` reseeds itself in a forked child.

Forking is safe only from a process with one thread and no live gRPC channel: the zygote
imports and never connects, and a supervisor forks its ranks before it starts any thread or
channel.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import importlib.machinery
import io
import os
import shutil
import signal
import sys
import threading
import types
from dataclasses import dataclass
from typing import IO, NoReturn

#: Prefixes and names of variables read when an interpreter (or a native library it loads)
#: starts; a rank runs in a fork only if the run's values are the zygote's.
STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_", "GRPC_", "MALLOC_")
STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "HOME", "GLIBC_TUNABLES"})


def startup_variables(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that take effect only when an interpreter starts."""
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES) or k in STARTUP_NAMES}


@dataclass(frozen=True)
class PythonEntry:
    """What ``python`` would run: a script (``module=False``) or a module, with its args."""

    target: str
    args: tuple[str, ...]
    module: bool


def python_entry(
    argv: list[str], env: dict[str, str], zygote_env: dict[str, str]
) -> PythonEntry | None:
    """The script or module ``argv`` runs, if a fork of this interpreter can run it.

    Args:
        argv: The rank's command line.
        env: The rank's environment.
        zygote_env: The environment this interpreter started with.

    Returns:
        None where the entrypoint must be exec'd: not this interpreter, other options than
        ``-u``, or start-up variables that differ from the zygote's.
    """
    if len(argv) < 2:
        return None
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH", ""))
    if exe is None:
        return None
    exe = os.path.abspath(exe)
    here = sys.executable
    # Same directory: the same virtual environment (its python may link to a shared binary).
    if os.path.dirname(exe) != os.path.dirname(here):
        return None
    with contextlib.suppress(OSError):
        if not os.path.samefile(exe, here):
            return None
    if startup_variables(env) != startup_variables(zygote_env):
        return None
    rest = argv[1:]
    while rest and rest[0] == "-u":
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return PythonEntry(rest[1], tuple(rest[2:]), module=True)
    if rest and not rest[0].startswith("-"):
        return PythonEntry(rest[0], tuple(rest[1:]), module=False)
    return None


class ForkedRank:
    """A rank forked from this process: the parts of :class:`subprocess.Popen` a supervisor
    uses (``poll``, ``wait``, ``send_signal``, ``kill``, ``returncode``, ``stdout``,
    ``stderr``); ``wait`` in one thread and ``poll`` in another are safe together."""

    def __init__(self, pid: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._lock = threading.Lock()  # held by a blocking wait; poll does not wait for it

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            self.returncode = 255
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                if self.returncode is None:
                    self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self) -> int:
        with self._lock:
            if self.returncode is None:
                self._reap(0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_rank(
    entry: PythonEntry, env: dict[str, str], run_dir: str, close: list[int]
) -> ForkedRank:
    """Fork a rank that runs ``entry`` with ``env`` in ``run_dir``; its stdout and stderr are
    pipes to this process. ``close``: descriptors of this process the rank must not keep.

    Raises:
        OSError: The fork failed.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    if pid == 0:  # the rank
        try:
            _default_signals()  # first: the supervisor's handlers act on its ranks
            for fd in (out_r, err_r, *close):
                with contextlib.suppress(OSError):
                    os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (null, out_w, err_w):
                os.close(fd)
            run_here(entry, env, run_dir)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(2, f"could not start the rank: {e!r}\n".encode())
        finally:
            os._exit(127)  # only if run_here itself failed before it could exit
    os.close(out_w)
    os.close(err_w)
    return ForkedRank(pid, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))


def _default_signals() -> None:
    """The signal dispositions a new interpreter starts with."""
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)


def _fresh_stdio() -> None:
    """New ``sys.std*`` on descriptors 0-2, as ``python -u`` makes them."""
    enc, errors = sys.__stdout__.encoding if sys.__stdout__ else "utf-8", "strict"
    if sys.__stdout__ is not None:
        errors = sys.__stdout__.errors or "strict"
    sys.stdin = open(0, closefd=False, encoding=enc)  # noqa: SIM115
    setattr(sys, "__stdin__", sys.stdin)  # noqa: B010  (typeshed calls it final)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(
            io.FileIO(fd, "w", closefd=False),
            encoding=enc,
            errors="backslashreplace" if fd == 2 else errors,
            write_through=True,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def run_here(entry: PythonEntry, env: dict[str, str], run_dir: str) -> NoReturn:
    """Become ``python <entry>``: run it as ``__main__`` in this (forked) process and exit as
    the interpreter would (threads joined, ``atexit`` run, the exit code of ``SystemExit``, a
    traceback and 1 for an uncaught exception)."""
    _default_signals()
    os.chdir(run_dir)
    os.environ.clear()
    os.environ.update(env)
    _fresh_stdio()
    code = 0
    try:
        try:
            _run_main(entry)
        finally:
            threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter's exit does
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt as e:
        _print_exception(e)
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException as e:
        _print_exception(e)
        code = 1
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _run_main(entry: PythonEntry) -> None:
    if entry.module:
        import runpy

        sys.argv = ["-m", *entry.args]
        sys.path[0] = os.getcwd()
        runpy._run_module_as_main(entry.target, alter_argv=True)  # type: ignore[attr-defined]
        return
    path = os.path.abspath(entry.target)
    try:
        with io.open_code(path) as f:
            source = f.read()
    except OSError as e:  # python's own words (and code) for a script it cannot open
        why = f"[Errno {e.errno}] {e.strerror}"
        print(f"{sys.executable}: can't open file {path!r}: {why}", file=sys.stderr)
        raise SystemExit(2) from None
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__spec__ = None
    sys.modules["__main__"] = main
    sys.argv = [entry.target, *entry.args]
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)


def _print_exception(e: BaseException) -> None:
    """Print ``e`` as ``python`` would: its traceback starts in the user's code, not here."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    sys.excepthook(type(e), e.with_traceback(tb), tb)


def _exit_code(code: object) -> int:
    """The process exit code of ``SystemExit(code)``, as the interpreter computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
