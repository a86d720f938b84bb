"""The ``detsdk`` command line against a real master."""

from __future__ import annotations

import csv
import functools
import io
import json
import pathlib
from collections.abc import Callable

import pytest
import yaml
from click.testing import CliRunner, Result

import determined_sdk
from determined_sdk import Determined, Experiment
from determined_sdk.cli import cli
from master_server.app import Master

from .conftest import FAST_RETRY, config


@pytest.fixture
def run(sdk_master: Master) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(
            cli, ["-m", sdk_master.address, *args], input=input, env={"COLUMNS": "250"}
        )

    return invoke


def test_master_info(run: Callable[..., Result], sdk_master: Master) -> None:
    r = run("master", "info")
    assert r.exit_code == 0, r.output
    assert "sqlite" in r.stdout and sdk_master.address in r.stdout


def test_master_from_env(sdk_master: Master) -> None:
    r = CliRunner().invoke(cli, ["master", "info"], env={"DET_MASTER": sdk_master.address})
    assert r.exit_code == 0 and "sqlite" in r.stdout


def test_experiment_commands(
    run: Callable[..., Result], tmp_path: pathlib.Path, model_dir: pathlib.Path, det: Determined
) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(config(name="cli-exp")))
    r = run("experiment", "create", str(cfg), str(model_dir), "--follow")
    assert r.exit_code == 0, r.output
    assert "Created experiment" in r.stdout and "step 4 loss=" in r.stdout
    assert "ended COMPLETED" in r.stdout
    exp_id = int(r.stdout.split("Created experiment ")[1].split()[0])

    r = run("experiment", "list")
    assert r.exit_code == 0 and "cli-exp" in r.stdout
    r = run("experiment", "describe", str(exp_id))
    assert r.exit_code == 0 and "COMPLETED" in r.stdout and "Trials" in r.stdout
    r = run("experiment", "set-name", str(exp_id), "cli-renamed")
    assert r.exit_code == 0 and det.get_experiment(exp_id).name == "cli-renamed"
    r = run("experiment", "archive", str(exp_id))
    assert r.exit_code == 0 and det.get_experiment(exp_id).archived
    r = run("experiment", "unarchive", str(exp_id))
    assert r.exit_code == 0

    trial_id = det.get_experiment(exp_id).list_trials()[0].id
    r = run("trial", "describe", str(trial_id))
    assert r.exit_code == 0 and "validation_metrics" in r.stdout and "Checkpoints" in r.stdout
    r = run("trial", "logs", str(trial_id), "--tail", "1", "--raw")
    assert r.exit_code == 0 and r.stdout.strip() == "done"
    r = run("trial", "logs", str(trial_id), "--search", "plateau", "--level", "warning")
    assert r.exit_code == 0 and "plateau" in r.stdout and len(r.stdout.splitlines()) == 1

    r = run("checkpoint", "list", str(exp_id), "--sort-by", "batch_number", "--order", "desc")
    assert r.exit_code == 0, r.output
    ckpts = det.get_experiment(exp_id).list_checkpoints()
    for c in ckpts:
        assert c.uuid in r.stdout
    uuid = ckpts[0].uuid
    r = run("checkpoint", "list", str(exp_id), "--sort-by", "accuracy", "--limit", "1")
    assert r.exit_code == 0 and sum(c.uuid in r.stdout for c in ckpts) == 1
    r = run("checkpoint", "describe", uuid)
    assert r.exit_code == 0 and "model.bin" in r.stdout
    r = run("checkpoint", "download", uuid, str(tmp_path / "dl"), "--mode", "master")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "dl" / "model.bin").stat().st_size == 3000
    r = run("checkpoint", "delete", uuid, "--yes")
    assert r.exit_code == 0 and det.get_checkpoint(uuid).state.value == "DELETED"

    r = run("experiment", "delete", str(exp_id), input="n\n")
    assert r.exit_code == 1  # aborted at the prompt
    r = run("experiment", "delete", str(exp_id), "--yes")
    assert r.exit_code == 0, r.output


def test_errors_are_one_red_line(run: Callable[..., Result]) -> None:
    r = run("experiment", "describe", "424242")
    assert r.exit_code == 1
    assert r.stderr.strip().startswith("Error:") and "424242" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    r = run("trial", "logs", "1", "--head", "1", "--tail", "1")
    assert r.exit_code == 1 and "head and tail" in r.stderr
    r = run("checkpoint", "list", "1", "--limit", "-3")
    assert r.exit_code == 1 and "max_results" in r.stderr


def test_unreachable_master_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import determined_sdk.cli as cli_module

    monkeypatch.setattr(cli_module, "Determined", functools.partial(Determined, retry=FAST_RETRY))
    r = CliRunner().invoke(cli, ["-m", "127.0.0.1:9", "experiment", "list"])
    assert r.exit_code == 1 and "cannot reach the master" in r.stderr


def test_workspace_project_model_commands(
    run: Callable[..., Result], finished: Experiment, det: Determined
) -> None:
    assert run("workspace", "create", "cli-ws").exit_code == 0
    r = run("workspace", "list")
    assert r.exit_code == 0 and "cli-ws" in r.stdout
    assert run("project", "create", "cli-ws", "cli-proj", "--description", "d").exit_code == 0
    r = run("project", "list", "cli-ws")
    assert r.exit_code == 0 and "cli-proj" in r.stdout
    assert run("project", "describe", "cli-ws", "cli-proj").exit_code == 0
    r = run("workspace", "describe", "cli-ws")
    assert r.exit_code == 0 and "cli-proj" in r.stdout
    assert run("model", "create", "cli-model", "--label", "l1").exit_code == 0
    uuid = finished.list_checkpoints(max_results=1)[0].uuid
    r = run("model", "register-version", "cli-model", uuid, "--comment", "c")
    assert r.exit_code == 0 and "version 1" in r.stdout
    r = run("model", "describe", "cli-model")
    assert r.exit_code == 0 and uuid in r.stdout
    r = run("model", "list")
    assert r.exit_code == 0 and "cli-model" in r.stdout
    assert run("model", "delete", "cli-model", "--yes").exit_code == 0
    r = run("workspace", "delete", "Uncategorized", "--yes")
    assert r.exit_code == 1 and r.stderr.startswith("Error")  # the default one stays
    assert run("workspace", "delete", "cli-ws", "--yes").exit_code == 0
    assert "cli-ws" not in [w.name for w in det.list_workspaces()]


def test_scriptable_output(
    run: Callable[..., Result], finished: Experiment, det: Determined, tmp_path: pathlib.Path
) -> None:
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"detsdk {determined_sdk.__version__}"

    # --json keeps values typed; the short aliases and `ls` reach the same commands.
    r = run("e", "ls", "--json")
    assert r.exit_code == 0, r.output
    exps = json.loads(r.stdout)
    assert finished.id in [e["id"] for e in exps]
    r = run("experiment", "list", "--csv", "--state", "completed")  # any case
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][:3] == ["id", "name", "state"]
    assert {row[2] for row in rows[1:]} == {"COMPLETED"}
    r = run("experiment", "list", "--state", "finished")
    assert r.exit_code == 1 and "--state" in r.stderr and "COMPLETED" in r.stderr
    r = run("e", "ls", "--json", "--csv")
    assert r.exit_code == 2 and "--json" in r.output

    trials = finished.list_trials()
    r = run("e", "list-trials", str(finished.id), "--json")
    assert r.exit_code == 0, r.output
    assert [t["id"] for t in json.loads(r.stdout)] == [t.id for t in trials]
    assert run("e", "list-trials", str(finished.id), "--state", "running").stdout.count("\n") == 1

    tid = trials[0].id
    r = run("t", "describe", str(tid), "--metrics", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["id"] == tid and len(d["checkpoints"]) == 3
    assert [(m["group"], m["steps"]) for m in d["metrics"]][:2] == [
        ("training", 10),
        ("validation", 10),
    ]
    assert d["metrics"][1]["accuracy"] == pytest.approx(
        next(trials[0].iter_metrics("validation")).metrics["accuracy"]
    )

    # Piped: plain columns, nothing cut (a uuid is whole, the value `download` needs).
    r = CliRunner().invoke(
        cli,
        ["-m", det._session.master, "checkpoint", "list", str(finished.id)],
        env={"COLUMNS": "60"},
    )
    assert r.exit_code == 0, r.output
    for ck in finished.list_checkpoints():
        assert ck.uuid in r.stdout
    assert "…" not in r.stdout

    r = run("trial", "logs", str(tid), "--regex", r"^step [0-9] loss=0\.", "--raw")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 6, r.output
    r = run("trial", "logs", str(tid), "--regex", "(")
    assert r.exit_code == 1 and "regex" in r.stderr

    r = run("experiment", "wait", str(finished.id))
    assert r.exit_code == 0 and r.stdout.strip() == "COMPLETED"
    assert f"experiment {finished.id}: COMPLETED, 100% done, 2 trials" in r.stderr


def test_uuid_prefixes_ls_and_cp(
    run: Callable[..., Result], finished: Experiment, det: Determined, tmp_path: pathlib.Path
) -> None:
    trial = finished.list_trials()[0]
    ck = det.get_checkpoint(trial.latest_checkpoint_uuid or "")
    r = run("checkpoint", "describe", ck.uuid[:8], "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["uuid"] == ck.uuid
    assert det.get_checkpoint(ck.uuid[:8]).uuid == ck.uuid  # the SDK takes prefixes too
    r = run("checkpoint", "describe", "zzzz")
    assert r.exit_code == 1 and "zzzz" in r.stderr
    all_uuids = [c.uuid for c in finished.list_checkpoints()]
    # Random uuids: a prefix shared by two of the kept checkpoints may not exist (GC keeps few).
    shared = next(
        (
            a[:n]
            for n in range(4, 0, -1)
            for a in all_uuids
            if sum(b.startswith(a[:n]) for b in all_uuids) > 1
        ),
        None,
    )
    if shared is not None:
        r = run("checkpoint", "describe", shared)
        assert r.exit_code == 1 and ("several" in r.stderr or "not found" in r.stderr)

    r = run("ls", f"trials/{trial.id}")
    assert r.exit_code == 0, r.output
    assert f"{ck.uuid} (latest)" in r.stdout and r.stdout.count("\n") == 4
    r = run("ls", f"trials/{trial.id}/latest", "--json")
    assert r.exit_code == 0, r.output
    assert {f["path"] for f in json.loads(r.stdout)} == {"model.bin", "sub/state.json", "empty.txt"}
    r = run("ls", f"checkpoints/{ck.uuid[:8]}/sub")
    assert r.exit_code == 0 and "sub/state.json" in r.stdout and "model.bin" not in r.stdout

    r = run("cp", f"trials/{trial.id}/latest/model.bin", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model.bin").stat().st_size == 3000
    r = run("cp", f"checkpoints/{ck.uuid[:8]}/sub/state.json", str(tmp_path / "s.json"))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text()) == {"step": 6}
    r = run("cp", f"trials/{trial.id}/best", str(tmp_path / "whole"))
    assert r.exit_code == 0 and (tmp_path / "whole" / "sub" / "state.json").exists()

    for bad, words in (
        (f"trials/{trial.id}/latest/nope.bin", "nope.bin"),
        ("trials/x/latest", "trial id"),
        ("nothing/here", "names no checkpoint"),
        ("trials/99999/latest", "99999"),
    ):
        r = run("cp", bad, str(tmp_path))
        assert r.exit_code == 1 and words in r.stderr, (bad, r.output)


def test_experiment_wait_progress_line(
    finished: Experiment, capsys: pytest.CaptureFixture[str]
) -> None:
    assert finished.wait(interval=0.1, progress=True).value == "COMPLETED"
    assert capsys.readouterr().err == (
        f"experiment {finished.id}: COMPLETED, 100% done, 2 trials (0s)\n"
    )
    finished.wait(interval=0.1)  # stderr is no terminal here: quiet by default
    assert capsys.readouterr().err == ""
