"""The torch_distributed launcher in a gang of several containers (the Ray backend's ranks):
global ranks, world size and the chief's address come from the cluster info and the
supervisor's MASTER_ADDR/MASTER_PORT."""

from __future__ import annotations

import json
import pathlib

import pytest

from core_api._info import get_cluster_info
from core_api.launch.torch_distributed import gang_place, rank_env


def _info(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, **extra: object) -> None:
    doc = {"master": "127.0.0.1:1", "trial_id": 1, "experiment_id": 1, "run_id": 1, **extra}
    path = tmp_path / "cluster_info.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("DET_CLUSTER_INFO", str(path))


def test_second_of_three_containers_starts_at_its_global_rank(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _info(
        tmp_path,
        monkeypatch,
        slots_per_trial=4,
        container_rank=1,
        container_slot_counts=[1, 2, 1],
        container_addrs=["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        agent_id="node-b",
    )
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    info = get_cluster_info()
    assert info is not None
    assert (info.container_rank, info.agent_id) == (1, "node-b")
    assert gang_place() == (1, 4, 1, "10.0.0.1", 29500)
    env = rank_env(1, 2, "10.0.0.1", 29500, first_rank=1, world=4, node=1)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (
        "2",
        "1",
        "4",
        "2",
    )
    assert (env["NODE_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("1", "10.0.0.1", "29500")


def test_one_container_is_the_whole_gang(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _info(tmp_path, monkeypatch, slots_per_trial=2)
    assert gang_place() is None
    env = rank_env(1, 2, "127.0.0.1", 1234)
    assert (env["RANK"], env["WORLD_SIZE"], env["NODE_RANK"]) == ("1", "2", "0")
