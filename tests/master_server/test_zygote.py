"""Runs forked by the zygote, through a real master: a ``python`` trial runs in a fork of the
warm zygote with its own environment (none of the master's secrets), a kill of one run leaves
the zygote and the other runs alive, a kept run is adopted by the next master, distributed
ranks fork too, anything else is exec'd, a bad entrypoint says why in the trial's logs, and the
zygote reports an ordinary exit so that a run that prints nothing never connects its
supervisor."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest

from determined_sdk.proto import logs_pb2
from master_server.admission import Admission
from master_server.app import Master
from master_server.launcher import LocalLauncher
from master_server.zygote import MODULE
from tests.support import Stubs, single_config, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

SECRET = "DETSDK_ZYGOTE_TEST_SECRET"

REPORT = """
    import json, os, sys
    def cmdline(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\\0", b" ").decode()
    def parent(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    print("REPORT " + json.dumps({
        "name": __name__,
        "file": __file__,
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "cmdline": cmdline(os.getpid()),
        "supervisor": parent(os.getpid()),
        "supervisor_cmdline": cmdline(parent(os.getpid())),
        "zygote": parent(parent(os.getpid())),
        "env": sorted(os.environ),
        "rank": os.environ.get("RANK"),
    }))
"""

LOOP = """
    import os, pathlib, time
    progress, gate = pathlib.Path(PROGRESS), pathlib.Path(GATE)
    n = 0
    while not gate.exists():
        n += 1
        progress.write_text(str(n))
        time.sleep(0.02)
"""


def _launcher(master: Master) -> LocalLauncher:
    launcher: LocalLauncher = master.parts["rm"].launcher
    return launcher


def _lines(stubs: Stubs, trial_id: int) -> list[str]:
    req = logs_pb2.TrialLogsRequest(trial_id=trial_id)
    return [x.message for page in stubs.logs.TrialLogs(req) for x in page.lines]


def _reports(stubs: Stubs, trial_id: int, n: int = 1) -> list[dict[str, Any]]:
    def got() -> list[dict[str, Any]]:
        out = [json.loads(x[7:]) for x in _lines(stubs, trial_id) if x.startswith("REPORT ")]
        return out if len(out) >= n else []

    return wait_for(got, 60, f"{n} report(s) in trial {trial_id}'s logs")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _loop_model(
    tmp_path: pathlib.Path, name: str
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    progress, gate = tmp_path / f"{name}.progress", tmp_path / f"{name}.gate"
    body = LOOP.replace("PROGRESS", repr(str(progress))).replace("GATE", repr(str(gate)))
    return write_model_dir(tmp_path / name, {"main.py": body}), progress, gate


def _progress(path: pathlib.Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def test_a_python_trial_runs_in_a_fork_of_the_zygote_without_the_masters_secrets(
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET, "hunter2")  # in the master's environment, never a trial's
    master = master_factory()
    stubs = Stubs.connect(master.address)
    md = write_model_dir(tmp_path / "model", {"main.py": REPORT})
    cfg = single_config(
        "python main.py a 'b c'", environment={"environment_variables": ["FOO=bar"]}
    )
    exp = stubs.create(cfg, md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (r,) = _reports(stubs, 1)
    zygote = _launcher(master).zygote_pid
    assert zygote is not None and r["zygote"] == zygote
    assert MODULE in r["cmdline"]  # not a new interpreter: a fork of the zygote's
    run_dir = os.path.realpath(_launcher(master).run_dir(1, 1))
    assert (r["name"], r["argv"], r["cwd"]) == ("__main__", ["main.py", "a", "b c"], run_dir)
    assert (r["file"], r["path0"]) == (os.path.join(run_dir, "main.py"), run_dir)
    assert SECRET not in r["env"]
    assert {"FOO", "DET_SESSION_TOKEN", "DET_TRIAL_ID", "PATH"} <= set(r["env"])
    with open(f"/proc/{zygote}/environ", "rb") as f:
        assert SECRET.encode() not in f.read()  # nor does the zygote carry them
    stubs.channel.close()


def test_an_entrypoint_a_fork_cannot_run_is_execd(
    stubs: Stubs, master: Master, tmp_path: pathlib.Path
) -> None:
    # A start-up variable of its own: a fresh interpreter, as before the zygote.
    md = write_model_dir(tmp_path / "model", {"main.py": REPORT})
    cfg = single_config(
        "python -u main.py", environment={"environment_variables": ["PYTHONHASHSEED=7"]}
    )
    exp = stubs.create(cfg, md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (r,) = _reports(stubs, 1)
    assert MODULE not in r["cmdline"] and "main.py" in r["cmdline"]
    assert r["zygote"] == _launcher(master).zygote_pid  # its supervisor is still a fork


def test_distributed_ranks_are_forks_with_their_rank_variables(
    stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    md = write_model_dir(tmp_path / "model", {"main.py": REPORT})
    cfg = single_config("python -m main", resources={"slots_per_trial": 2})
    exp = stubs.create(cfg, md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    reports = _reports(stubs, 1, 2)
    assert sorted(r["rank"] for r in reports) == ["0", "1"]
    assert all(MODULE in r["cmdline"] and r["name"] == "__main__" for r in reports)
    assert len({r["supervisor"] for r in reports}) == 1


def test_killing_one_run_leaves_the_zygote_and_the_other_runs_alive(
    stubs: Stubs, master: Master, tmp_path: pathlib.Path
) -> None:
    md_a, progress_a, _ = _loop_model(tmp_path, "a")
    md_b, progress_b, gate_b = _loop_model(tmp_path, "b")
    a = stubs.create(single_config("python main.py"), md_a)
    b = stubs.create(single_config("python main.py"), md_b)
    wait_for(lambda: _progress(progress_a) > 5 and _progress(progress_b) > 5, 60, "both to run")
    zygote = _launcher(master).zygote_pid
    assert zygote is not None
    stubs.action(a.id, "kill")
    assert stubs.wait_exp(a.id, "CANCELED", "ERROR", "COMPLETED") == "CANCELED"
    assert _alive(zygote) and _launcher(master).zygote_pid == zygote
    now = _progress(progress_b)
    wait_for(lambda: _progress(progress_b) > now + 5, 60, "the other run to go on")
    gate_b.touch()
    assert stubs.wait_exp(b.id, "COMPLETED", "ERROR") == "COMPLETED"


def test_a_kept_run_outlives_the_zygote_and_the_next_master_adopts_it(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    md, progress, gate = _loop_model(tmp_path, "m")
    data_dir = tmp_path / "data"
    first = master_factory(data_dir=data_dir, keep_runs_on_stop=True)
    stubs = Stubs.connect(first.address)
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(lambda: _progress(progress) > 5, 60, "the trial to run")
    zygote = _launcher(first).zygote_pid
    supervisor = int((_launcher(first).run_dir(1, 1) / ".det" / "supervisor.pid").read_text())
    stubs.channel.close()
    first.stop()
    assert zygote is not None and not _alive(zygote)  # the zygote ends with its master
    assert _alive(supervisor)  # its run does not
    now = _progress(progress)
    wait_for(lambda: _progress(progress) > now + 5, 60, "training while no master runs")
    second = master_factory(data_dir=data_dir)
    stubs = Stubs.connect(second.address)
    t = stubs.trial(1)
    assert (trial_state(t), t.run_id, t.restarts) == ("RUNNING", 1, 0)
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    assert stubs.trial(1).run_id == 1
    stubs.channel.close()


@pytest.mark.parametrize(
    ("entrypoint", "files", "want"),
    [
        ("python missing.py", {}, "can't open file"),
        ("python -m no_such_module", {}, "No module named no_such_module"),
        ("python main.py", {"main.py": "def f(:\n"}, "SyntaxError"),
        ("python main.py", {"main.py": "raise RuntimeError('boom')\n"}, "RuntimeError: boom"),
        ("no-such-program", {}, "could not start entrypoint"),
    ],
)
def test_a_bad_entrypoint_says_why_in_the_trial_logs(
    stubs: Stubs, tmp_path: pathlib.Path, entrypoint: str, files: dict[str, str], want: str
) -> None:
    md = write_model_dir(tmp_path / "model", {"other.py": "", **files})
    exp = stubs.create(single_config(entrypoint), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "ERROR"
    lines = wait_for(
        lambda: [x for x in _lines(stubs, 1) if want in x], 60, f"{want!r} in the trial logs"
    )
    assert lines
    # The traceback starts in the user's code, as python's own would.
    assert not any("inprocess.py" in x for x in _lines(stubs, 1))


def test_runs_outlive_a_killed_zygote_and_the_next_launch_starts_a_new_one(
    stubs: Stubs, master: Master, tmp_path: pathlib.Path
) -> None:
    md, progress, gate = _loop_model(tmp_path, "m")
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(lambda: _progress(progress) > 5, 60, "the trial to run")
    zygote = _launcher(master).zygote_pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    wait_for(lambda: _launcher(master).zygote_pid is None, 60, "the launcher to see it gone")
    now = _progress(progress)
    wait_for(lambda: _progress(progress) > now + 5, 60, "the run to go on without its zygote")
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    md2 = write_model_dir(tmp_path / "model2", {"main.py": REPORT})
    exp2 = stubs.create(single_config("python main.py"), md2)
    assert stubs.wait_exp(exp2.id, "COMPLETED", "ERROR") == "COMPLETED"
    (r,) = _reports(stubs, 2)
    assert r["zygote"] == _launcher(master).zygote_pid != zygote


def test_which_entrypoints_a_fork_runs() -> None:
    from master_server.inprocess import PythonEntry, python_entry

    bin_dir = os.path.dirname(sys.executable)
    env = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    zygote_env = {"PYTHONUNBUFFERED": "1", "PATH": "/elsewhere"}

    def entry(argv: list[str], **extra: str) -> PythonEntry | None:
        return python_entry(argv, {**env, **extra}, zygote_env)

    assert entry(["python", "t.py", "-x"]) == PythonEntry("t.py", ("-x",), module=False)
    assert entry([sys.executable, "-u", "-m", "pkg.mod", "a"]) == PythonEntry(
        "pkg.mod", ("a",), module=True
    )
    assert entry(["python", "-c", "pass"]) is None  # an option other than -u
    assert entry(["python", "-X", "dev", "t.py"]) is None
    assert entry(["python"]) is None
    assert entry(["sh", "-c", "python t.py"]) is None  # not this interpreter
    assert entry(["/usr/bin/env", "python", "t.py"]) is None
    assert entry(["python", "t.py"], PYTHONHASHSEED="0") is None  # a start-up variable differs
    assert entry(["python", "t.py"], LD_PRELOAD="x.so") is None
    assert entry(["python", "t.py"], FOO="bar") is not None  # any other variable is fine


def test_without_a_zygote_each_supervisor_is_a_process_of_its_own(
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import master_server.zygote

    monkeypatch.setattr(master_server.zygote, "MODULE", "master_server.no_such_zygote")
    master = master_factory()
    stubs = Stubs.connect(master.address)
    md = write_model_dir(tmp_path / "model", {"main.py": REPORT})
    exp = stubs.create(single_config("python main.py"), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    (r,) = _reports(stubs, 1)
    assert "main.py" in r["cmdline"] and "zygote" not in r["cmdline"]
    assert "master_server.supervisor" in r["supervisor_cmdline"]
    stubs.channel.close()


@pytest.fixture
def master_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every call the masters started after this fixture receive, in order."""
    seen: list[str] = []
    spied = Admission.intercept_service

    async def spy(self: Admission, continuation: Any, details: Any) -> Any:
        seen.append(details.method.rsplit("/", 1)[-1])
        return await spied(self, continuation, details)

    monkeypatch.setattr(Admission, "intercept_service", spy)
    return seen


@pytest.mark.parametrize(
    ("body", "state", "reason", "reported"),
    [
        ("", "COMPLETED", "finished training", False),
        ("raise SystemExit(3)", "ERROR", "crashed with exit code 3", False),
        # A rank killed by a signal: the supervisor's exit status (128+9) would read as another
        # reason, so the supervisor reports the code itself.
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "ERROR",
            "killed by SIGKILL",
            True,
        ),
    ],
)
def test_the_zygote_reports_a_quiet_runs_exit_and_its_supervisor_never_connects(
    master_calls: list[str],
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
    body: str,
    state: str,
    reason: str,
    reported: bool,
) -> None:
    master = master_factory()
    stubs = Stubs.connect(master.address)
    md = write_model_dir(tmp_path / "model", {"main.py": body + "\n"})
    exp = stubs.create(single_config("python main.py"), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == state
    t = stubs.trial(1)
    assert t.exit_reason.startswith(reason), t.exit_reason
    # The run printed nothing: no log line to ship; the exit came through the zygote.
    assert "ShipLogs" not in master_calls
    assert master_calls.count("ReportTrialExit") == (1 if reported else 0)
    stubs.channel.close()


def test_a_run_that_prints_still_ships_its_lines_and_the_zygote_reports_its_exit(
    master_calls: list[str], master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    master = master_factory()
    stubs = Stubs.connect(master.address)
    md = write_model_dir(tmp_path / "model", {"main.py": "print('hello from the trial')\n"})
    exp = stubs.create(single_config("python main.py"), md)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR") == "COMPLETED"
    wait_for(lambda: "hello from the trial" in _lines(stubs, 1), 60, "the line in the logs")
    assert "ShipLogs" in master_calls and "ReportTrialExit" not in master_calls
    stubs.channel.close()
