"""The ``detsdk`` command line against a real master."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable

import pytest
import yaml
from click.testing import CliRunner, Result

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
