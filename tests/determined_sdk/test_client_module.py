"""Module-level calls over the default client, deprecated names, and the package surface."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

import determined_sdk
from determined_sdk import Experiment, Trial, _default, client
from master_server.app import Master

from .conftest import REPO, config


@pytest.fixture
def logged_in(sdk_master: Master) -> Iterator[None]:
    client.login(master=sdk_master.address)
    yield
    old = _default.replace(None)
    if old is not None:
        old.close()


def test_default_client_from_env(sdk_master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DET_MASTER", sdk_master.address)
    _default.replace(None)
    try:
        assert client.get_master_info().database == "sqlite"
        assert client._default().master == sdk_master.address
    finally:
        client._default().close()
        _default.replace(None)


def test_module_functions(logged_in: None, model_dir: pathlib.Path) -> None:
    exp = client.create_experiment(config(name="module-fn"), model_dir, activate=False)
    assert client.get_experiment(exp.id).name == "module-fn"
    assert exp.id in [e.id for e in client.list_experiments(name="module-fn")]
    exp.activate()
    trial = exp.await_first_trial(timeout=60)
    assert exp.wait(interval=0.1, timeout=120).value == "COMPLETED"
    assert client.get_trial(trial.id).experiment_id == exp.id
    ckpt = exp.list_checkpoints(max_results=1)[0]
    assert client.get_checkpoint(ckpt.uuid).trial_id == trial.id
    assert len(list(client.iter_trials_metrics([trial.id], group="validation"))) == 4
    ws = client.create_workspace("module-ws")
    assert client.get_workspace("module-ws").id == ws.id
    assert "module-ws" in [w.name for w in client.list_workspaces()]
    m = client.create_model("module-model")
    assert client.get_model("module-model").id == m.id
    assert "module-model" in [x.name for x in client.list_models()]
    # A blank resource with no session uses the default client.
    assert Trial(trial.id).hparams == trial.hparams
    with pytest.warns(DeprecationWarning, match="list_models"):
        assert "module-model" in [x.name for x in client.get_models()]
    with pytest.warns(DeprecationWarning, match="list_workspaces"):
        assert client.get_workspaces()
    with pytest.warns(DeprecationWarning, match="list_experiments"):
        assert client.get_experiments(name="module-fn")


def test_deprecated_aliases_warn() -> None:
    with pytest.warns(DeprecationWarning, match="TrialReference"):
        assert client.TrialReference is Trial
    with pytest.warns(DeprecationWarning, match="ExperimentReference"):
        assert client.ExperimentReference is Experiment
    with pytest.warns(DeprecationWarning, match="TrialReference"):
        assert determined_sdk.TrialReference is Trial  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = client.NoSuchThing  # type: ignore[attr-defined]
    assert determined_sdk.client is client
    for name in (
        "ExperimentState",
        "TrialState",
        "CheckpointState",
        "CheckpointSortBy",
        "OrderBy",
        "LogLevel",
    ):
        assert getattr(client, name) is getattr(determined_sdk, name)


def test_import_is_light() -> None:
    code = (
        "import sys, determined_sdk, determined_sdk.client; "
        "bad = [m for m in ('torch', 'numpy', 'rich', 'master_server') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
