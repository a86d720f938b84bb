"""Determined config behaviours: warnings for keys without effect, more slots than there are,
and warm starts from ``searcher.source_trial_id`` / ``source_checkpoint_uuid``."""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from determined_sdk import client
from determined_sdk.cli import cli
from determined_sdk.errors import InvalidArgumentError
from master_server.app import Master
from tests.support import wait_for

from .conftest import HERE

TINY = HERE / "tiny"


def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny",
        "entrypoint": "python3 train.py",
        "searcher": {"name": "single", "metric": "loss", "max_length": 1},
        "max_restarts": 0,
    }
    cfg.update(over)
    return cfg


def _first_line(trial: client.Trial, prefix: str) -> str:
    return next(x for x in trial.logs() if x.startswith(prefix)).rstrip("\n")


def test_keys_without_effect_warn_naming_the_key(det_client: client.Determined) -> None:
    cfg = _config(
        environment={"image": "determinedai/pytorch:latest"},
        bind_mounts=[{"host_path": "/data", "container_path": "/data"}],
        resources={"resource_pool": "gpu-pool"},
    )
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        exp = client.create_experiment(cfg, str(TINY))
    messages = [str(w.message) for w in told if issubclass(w.category, UserWarning)]
    for key in ("environment.image", "bind_mounts", "resources.resource_pool"):
        assert any(m.startswith(f"{key}: accepted but has no effect") for m in messages), messages
    assert exp.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.create_experiment(_config(), str(TINY), activate=False)  # a clean config: silent


def test_more_slots_than_the_master_has_waits_queued(
    det_client: client.Determined, master: Master
) -> None:
    with pytest.warns(UserWarning, match=r"resources\.slots_per_trial: 4 is more than"):
        big = client.create_experiment(_config(resources={"slots_per_trial": 4}), str(TINY))
    trial = big.await_first_trial(timeout=60)
    assert trial.state == client.TrialState.QUEUED
    small = client.create_experiment(_config(), str(TINY))  # queued after it, runs anyway
    assert small.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    trial.reload()
    big.reload()
    assert trial.state == client.TrialState.QUEUED and big.state == client.ExperimentState.ACTIVE
    big.kill()
    wait_for(lambda: big.reload() or big.state.is_terminal, 60, "the big experiment to end")


def test_warm_start_from_a_trial_and_from_a_checkpoint(det_client: client.Determined) -> None:
    first = client.create_experiment(_config(), str(TINY))
    assert first.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    source = first.list_trials()[0]
    uuid = source.list_checkpoints()[0].uuid
    assert _first_line(source, "START FROM") == "START FROM None"

    by_trial = _config(searcher={**_config()["searcher"], "source_trial_id": source.id})
    exp = client.create_experiment(by_trial, str(TINY))
    assert exp.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    trial = exp.list_trials()[0]
    assert trial.warm_start_checkpoint_uuid == uuid
    assert _first_line(trial, "START FROM") == f"START FROM {uuid}"

    by_uuid = _config(searcher={**_config()["searcher"], "source_checkpoint_uuid": uuid})
    exp = client.create_experiment(by_uuid, str(TINY))
    assert exp.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    assert _first_line(exp.list_trials()[0], "START FROM") == f"START FROM {uuid}"


def test_warm_start_names_the_bad_field(det_client: client.Determined) -> None:
    with pytest.raises(InvalidArgumentError, match=r"searcher\.source_trial_id: trial 999"):
        client.create_experiment(
            _config(searcher={**_config()["searcher"], "source_trial_id": 999}), str(TINY)
        )
    with pytest.raises(InvalidArgumentError, match=r"searcher\.source_checkpoint_uuid: checkpoint"):
        client.create_experiment(
            _config(searcher={**_config()["searcher"], "source_checkpoint_uuid": "nope"}),
            str(TINY),
        )


def test_cli_create_from_checkpoint(
    det_client: client.Determined, master: Master, tmp_path: pathlib.Path
) -> None:
    first = client.create_experiment(_config(), str(TINY))
    assert first.wait(interval=0.2, timeout=120) == client.ExperimentState.COMPLETED
    uuid = first.list_checkpoints()[0].uuid
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(environment={"image": "x"})))
    runner = CliRunner()
    base = ["--master", master.address, "experiment", "create", str(path), str(TINY)]
    done = runner.invoke(cli, [*base, "--from-checkpoint", uuid, "--follow"])
    assert done.exit_code == 0, done.output
    assert f"START FROM {uuid}" in done.output
    assert "Warning: environment.image: accepted but has no effect" in done.output
    bad = runner.invoke(cli, [*base, "--from-checkpoint", "missing"])
    assert bad.exit_code != 0 and "searcher.source_checkpoint_uuid" in bad.output
