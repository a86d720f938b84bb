"""Local launcher: one supervisor process per trial run, in its own run directory.

For each run the launcher makes ``DATA_DIR/runs/trial-<id>/run-<n>/``, unpacks the experiment's
model code there, writes ``cluster_info.json`` and ``launch.json``, and has the zygote
(:mod:`master_server.zygote`, one warm process per launcher) fork the run's supervisor in a new
session (process group); if the zygote cannot, it starts ``python -m master_server.supervisor
launch.json`` instead. The supervisor runs the entrypoint (one process per rank), owns its
stdout/stderr, ships the lines to the master and reports the exit code. A reaper thread notices
supervisors that died without reporting (killed) and reports for them; the service ignores a
second report for the same run. A supervisor the zygote forked leaves an ordinary exit to the
zygote, whose report of it wakes the reaper at once.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from determined_sdk.model_dir import extract_archive
from master_server.rm.base import ExitCallback, LaunchSpec, LiveRun
from master_server.zygote import Zygote, ZygoteError, is_zygote_child

logger = logging.getLogger(__name__)

TokenFactory = Callable[[int, int], str]  # (trial_id, run_id) -> the run's trial token

#: Variables of the master's own environment a trial keeps: what a process needs to run at all
#: (paths, locale, user, temp dir), which devices and threads the operator gave the master, and
#: nothing else (the master's secrets stay with it). See docs/trial-environment.md.
PASSTHROUGH_ENV = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "SYSTEMROOT",
    }
)


def passthrough_environment(base: dict[str, str]) -> dict[str, str]:
    """What a trial (and the zygote) keeps of the master's environment ``base``:
    :data:`PASSTHROUGH_ENV` and ``LC_*``."""
    return {k: v for k, v in base.items() if k in PASSTHROUGH_ENV or k.startswith("LC_")}


def trial_environment(
    *,
    base: dict[str, str],
    config_env: dict[str, str],
    master: str,
    trial_id: int,
    experiment_id: int,
    run_id: int,
    slots: int,
    cluster_info_path: str,
    token: str,
    cert_file: str | None,
) -> dict[str, str]:
    """The whole environment of a trial run (the one place it is built).

    Args:
        base: The master's environment; only :data:`PASSTHROUGH_ENV` and ``LC_*`` survive.
        config_env: The experiment's ``environment.environment_variables``.
        master: The master's address for the trial (``grpcs://`` when it serves TLS).
        trial_id: The trial.
        experiment_id: Its experiment.
        run_id: The run.
        slots: ``resources.slots_per_trial``.
        cluster_info_path: The run's cluster-info JSON file.
        token: The run's trial-scoped token.
        cert_file: The master's certificate, when it serves TLS with one the trial must trust.
    """
    env = passthrough_environment(base)
    env.update(config_env)
    python_bin = os.path.dirname(sys.executable)
    env.update(
        {
            "DET_MASTER": master,
            "DET_TRIAL_ID": str(trial_id),
            "DET_EXPERIMENT_ID": str(experiment_id),
            "DET_RUN_ID": str(run_id),
            "DET_CLUSTER_INFO": cluster_info_path,
            "DET_SLOTS_PER_TRIAL": str(slots),
            "DET_SESSION_TOKEN": token,
            "PYTHONUNBUFFERED": "1",
            "PATH": python_bin + os.pathsep + env.get("PATH", ""),
        }
    )
    if cert_file:
        env["DET_MASTER_CERT_FILE"] = cert_file
    return env


def _write_private(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a new file only its owner may read (it holds the trial's token)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class _Run:
    trial_id: int
    run_id: int
    pid: int
    run_dir: pathlib.Path
    proc: subprocess.Popen[bytes] | None  # None: forked by the zygote, or adopted
    ended: int | None = None  # the exit code of a run that ended before it was adopted
    zygote: Zygote | None = None  # the zygote that forked it (its parent)

    def exit_code(self) -> int | None:
        """The run's exit code once its supervisor is gone, else None."""
        if self.ended is not None:
            return self.ended
        if self.proc is not None:
            return self.proc.poll()
        if self.zygote is not None:
            if self.zygote.is_parent_of(self.pid):  # it reports the exit; until then it runs
                return self.zygote.exit_code(self.pid)
            code = self.zygote.exit_code(self.pid)  # read before it ended, or lost with it
            if code is not None:
                return code
        if _alive(self.pid):
            return None
        # Not our child: the supervisor wrote its code before exiting (-1 when it could not).
        try:
            return int((self.run_dir / ".det" / "exit_code").read_text())
        except (OSError, ValueError):
            return -1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_supervisor_of(pid: int, run_dir: pathlib.Path) -> bool:
    """Whether ``pid`` is the supervisor started for ``run_dir`` (not a reused pid)."""
    if is_zygote_child(pid, run_dir):
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return str(run_dir / ".det" / "launch.json").encode() in argv


class LocalLauncher:
    """Starts, signals and reaps trial supervisors on this machine.

    Args:
        data_dir: The master's data directory.
        master_address: The address trials call back.
        trial_token: Makes each run's trial-scoped token.
        cert_file: The master's TLS certificate trials must trust, if any.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        master_address: Callable[[], str],
        *,
        trial_token: TokenFactory,
        cert_file: str | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._master_address = master_address
        self._trial_token = trial_token
        self._cert_file = cert_file
        self._runs: dict[int, _Run] = {}  # trial_id -> the current run
        self._lock = threading.Lock()
        self._on_exit: ExitCallback | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # the zygote saw a supervisor exit: reap now
        self._reaper: threading.Thread | None = None
        # Started on the first launch; with only what a trial keeps of the master's environment.
        self._zygote = Zygote(
            {**passthrough_environment(dict(os.environ)), "PYTHONUNBUFFERED": "1"},
            data_dir / "zygote.log",
            on_exit=self._wake.set,
        )

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the zygote while it runs."""
        return self._zygote.pid

    def start(self, on_exit: ExitCallback) -> None:
        """Start the reaper; ``on_exit`` is called for runs that ended without a report."""
        self._on_exit = on_exit
        self._reaper = threading.Thread(target=self._reap_loop, name="launcher-reaper", daemon=True)
        self._reaper.start()

    def run_dir(self, trial_id: int, run_id: int) -> pathlib.Path:
        return self._data_dir / "runs" / f"trial-{trial_id}" / f"run-{run_id}"

    def _model_dir(self, experiment_id: int, data: Callable[[], bytes]) -> pathlib.Path:
        """The experiment's model code, unpacked once and copied into each run directory."""
        d = self._data_dir / "experiments" / str(experiment_id) / "model"
        if not (d.parent / "model.ready").exists():
            tmp = d.parent / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            extract_archive(data(), tmp)
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
            (d.parent / "model.ready").touch()
        return d

    def launch(self, spec: LaunchSpec) -> None:
        """Prepare the run directory and start the supervisor.

        A previous run of the trial that is somehow still alive (the master considers it ended)
        is killed first, so one trial never has two runs.
        """
        with self._lock:
            old = self._runs.pop(spec.trial_id, None)
        if old is not None and old.exit_code() is None:  # children and adopted runs alike
            logger.warning(
                "trial %d: run %d still alive as run %d starts; killing it",
                spec.trial_id,
                old.run_id,
                spec.run_id,
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.pid, signal.SIGKILL)
            if old.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    old.proc.wait(timeout=10)
        run_dir = self.run_dir(spec.trial_id, spec.run_id)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(self._model_dir(spec.experiment_id, spec.model_definition), run_dir)
        info_path = run_dir / ".det" / "cluster_info.json"
        info_path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(info_path, json.dumps(spec.cluster_info, indent=1))
        env = trial_environment(
            base=dict(os.environ),
            config_env=spec.env,
            master=self._master_address(),
            trial_id=spec.trial_id,
            experiment_id=spec.experiment_id,
            run_id=spec.run_id,
            slots=spec.slots,
            cluster_info_path=str(info_path),
            token=self._trial_token(spec.trial_id, spec.run_id),
            cert_file=self._cert_file,
        )
        launch = {
            "master": self._master_address(),
            "trial_id": spec.trial_id,
            "run_id": spec.run_id,
            "entrypoint": spec.entrypoint,
            "slots": spec.slots,
            "env": env,
            "run_dir": str(run_dir),
        }
        launch_path = run_dir / ".det" / "launch.json"
        _write_private(launch_path, json.dumps(launch))
        run = self._start_supervisor(spec, run_dir, launch_path, env)
        (run_dir / ".det" / "supervisor.pid").write_text(str(run.pid))
        with self._lock:
            self._runs[spec.trial_id] = run
        logger.info(
            "trial %d run %d: started supervisor pid %d in %s",
            spec.trial_id,
            spec.run_id,
            run.pid,
            run_dir,
        )

    def _start_supervisor(
        self,
        spec: LaunchSpec,
        run_dir: pathlib.Path,
        launch_path: pathlib.Path,
        env: dict[str, str],
    ) -> _Run:
        """The run's supervisor, forked by the zygote, or a process of its own without one."""
        try:
            pid = self._zygote.launch(launch_path)
            return _Run(spec.trial_id, spec.run_id, pid, run_dir, None, zygote=self._zygote)
        except ZygoteError as e:
            logger.warning("trial %d: %s; starting its supervisor alone", spec.trial_id, e)
        log = open(run_dir / ".det" / "supervisor.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "master_server.supervisor", str(launch_path)],
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        return _Run(spec.trial_id, spec.run_id, proc.pid, run_dir, proc)

    def signal(self, trial_id: int, run_id: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to run ``run_id``'s supervisor (which forwards it).

        False when that run is not the trial's live run (it ended, or a newer run replaced it).
        """
        with self._lock:
            run = self._runs.get(trial_id)
        if run is None or run.run_id != run_id or run.exit_code() is not None:
            return False
        try:
            os.kill(run.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self, trial_id: int, run_id: int) -> bool:
        """Kill the whole process group of run ``run_id`` at once; False if it is not live."""
        with self._lock:
            run = self._runs.get(trial_id)
        if run is None or run.run_id != run_id or run.exit_code() is not None:
            return False
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def adopt(self, run: LiveRun) -> bool:
        """Watch a supervisor a previous master started; False if it is not that supervisor.

        A run is this master's when its run directory holds the run's trial token, which only
        a master with this database's signing key can make (the secret is in the run directory
        and the database): a run directory some other master wrote (another database on the
        same data directory, a restored backup) is never adopted, nor its exit code taken.
        """
        run_dir = self.run_dir(run.trial_id, run.run_id)
        if not self._signed_by_us(run_dir, run.trial_id, run.run_id):
            logger.warning(
                "trial %d run %d: its run directory does not hold this master's token for it; "
                "not adopted",
                run.trial_id,
                run.run_id,
            )
            return False
        if run.exit_code is not None:  # it ended during the outage: its exit is handled now
            with self._lock:
                self._runs[run.trial_id] = _Run(
                    run.trial_id, run.run_id, run.pid, run_dir, None, run.exit_code
                )
            logger.info(
                "trial %d run %d: ended with exit code %d while no master ran",
                run.trial_id,
                run.run_id,
                run.exit_code,
            )
            return True
        if not (_alive(run.pid) and _is_supervisor_of(run.pid, run_dir)):
            return False
        with self._lock:
            self._runs[run.trial_id] = _Run(run.trial_id, run.run_id, run.pid, run_dir, None)
        logger.info("trial %d run %d: adopted supervisor pid %d", run.trial_id, run.run_id, run.pid)
        return True

    def _signed_by_us(self, run_dir: pathlib.Path, trial_id: int, run_id: int) -> bool:
        try:
            launch = json.loads((run_dir / ".det" / "launch.json").read_text())
            token = str(launch["env"]["DET_SESSION_TOKEN"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return hmac.compare_digest(token, self._trial_token(trial_id, run_id))

    def _reap_loop(self) -> None:
        while True:
            # An exit the zygote reports wakes this at once (for most runs it is the only
            # report); others (adopted runs, killed supervisors) are found by polling.
            self._wake.wait(0.2)
            self._wake.clear()  # before the scan: an exit recorded after this wakes the next
            if self._stop.is_set():
                return
            with self._lock:
                done = [(r, c) for r in self._runs.values() if (c := r.exit_code()) is not None]
                for r, _ in done:
                    del self._runs[r.trial_id]
            for r, code in done:
                # Kill leftovers of the gang (ranks whose supervisor was SIGKILLed); not for a
                # run that ended long ago (its process group id may belong to others now).
                if r.ended is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(r.pid, signal.SIGKILL)
                if r.zygote is not None:
                    r.zygote.forget(r.pid)
                if self._on_exit is not None:
                    try:
                        self._on_exit(r.trial_id, r.run_id, code)
                    except Exception:
                        logger.exception("trial %d: exit handling failed", r.trial_id)
                        continue  # a later master finds the run ended and handles its exit
                # Handled: a later master must not find this run again. Not sooner: a master
                # that dies while it handles the exit (for most runs the zygote's report, the
                # only one) leaves the run for the next master to find, ended, with its code.
                (r.run_dir / ".det" / "supervisor.pid").unlink(missing_ok=True)

    def stop(self, grace_s: float = 5.0, *, keep_runs: bool = False) -> None:
        """Stop the reaper; terminate every supervisor still running unless ``keep_runs``.

        Kept runs go on training; the next master on this data directory adopts them.
        """
        self._stop.set()
        self._wake.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        if keep_runs:
            self._zygote.stop()  # its runs go on; the next master adopts them
            return
        for r in runs:
            # Stopped by the master, not ended on its own: the next master must not take its
            # exit code (SIGTERM) for the run's end (see find_live_runs), but rerun the trial.
            (r.run_dir / ".det" / "supervisor.pid").unlink(missing_ok=True)
            try:
                os.killpg(r.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace_s
        for r in runs:
            while r.exit_code() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # polling a process that is not our child
            if r.exit_code() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pid, signal.SIGKILL)
            if r.proc is not None:
                r.proc.wait()
        self._zygote.stop()


def find_live_runs(data_dir: pathlib.Path) -> list[LiveRun]:
    """Supervisors left alive by a previous master process, from their run directories."""
    out: list[LiveRun] = []
    for pid_file in sorted(data_dir.glob("runs/trial-*/run-*/.det/supervisor.pid")):
        run_dir = pid_file.parent.parent
        try:
            pid = int(pid_file.read_text())
            trial_id = int(run_dir.parent.name.removeprefix("trial-"))
            run_id = int(run_dir.name.removeprefix("run-"))
        except (OSError, ValueError):
            continue
        if not (_alive(pid) and _is_supervisor_of(pid, run_dir)):
            # Its supervisor is gone. If it left the run's exit code (it could not report it
            # to any master: the outage outlasted its retries), the run ended during the
            # outage and the exit is still to be handled; else the run is lost.
            code = _exit_code_file(run_dir)
            if code is not None:
                out.append(LiveRun(trial_id=trial_id, run_id=run_id, pid=pid, exit_code=code))
            else:
                pid_file.unlink(missing_ok=True)
            continue
        out.append(LiveRun(trial_id=trial_id, run_id=run_id, pid=pid))
    return out


def _exit_code_file(run_dir: pathlib.Path) -> int | None:
    try:
        return int((run_dir / ".det" / "exit_code").read_text())
    except (OSError, ValueError):
        return None


def discard_run(data_dir: pathlib.Path, run: LiveRun) -> None:
    """Kill a run left by a previous master (its whole process group) and forget its pid (a
    run that had already ended is only forgotten)."""
    if run.exit_code is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
    pid_file = data_dir / "runs" / f"trial-{run.trial_id}" / f"run-{run.run_id}" / ".det"
    (pid_file / "supervisor.pid").unlink(missing_ok=True)
