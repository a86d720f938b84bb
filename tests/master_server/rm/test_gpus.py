"""GPU slots: counted on the local backend (an injected device count here, as this machine has
no CUDA), one ``CUDA_VISIBLE_DEVICES`` per gang; ``num_gpus`` on Ray (a node that declares a
GPU). Runs are real supervisor and rank processes."""

from __future__ import annotations

import pathlib
import secrets
import sys
import threading
import uuid
from collections.abc import Callable

import pytest

from master_server.app import Master, RaySettings
from master_server.rm.base import LaunchSpec, ResourceManager
from master_server.rm.gpus import DeviceSlots, count_gpus, visible_devices
from master_server.rm.local import LocalResourceManager
from tests.master_server.rm.conftest import RayCluster
from tests.support import wait_for

# Writes the run's CUDA_VISIBLE_DEVICES (or "unset") to the file named by argv[1].
SHOW = (
    "import os, pathlib, sys; "
    "pathlib.Path(sys.argv[1]).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
)


def _spec(trial_id: int, slots: int, out: pathlib.Path) -> LaunchSpec:
    return LaunchSpec(
        trial_id=trial_id,
        experiment_id=1,
        run_id=1,
        entrypoint=[sys.executable, "-c", SHOW, str(out)],
        slots=slots,
        env={},
        cluster_info={"trial_id": trial_id, "experiment_id": 1, "run_id": 1},
        model_definition=lambda: b"",
    )


def _run(rm: ResourceManager, trial_id: int, slots: int, tmp: pathlib.Path) -> str:
    """Queue, allocate and start a trial; the CUDA_VISIBLE_DEVICES its run saw."""
    out = tmp / f"cuda-{trial_id}"
    rm.request(trial_id, slots)
    assert trial_id in [a.trial_id for a in rm.allocate()]
    rm.start_run(_spec(trial_id, slots, out))
    return str(wait_for(lambda: out.exists() and out.read_text(), 120, f"trial {trial_id}"))


def test_device_slots_hand_out_distinct_devices() -> None:
    d = DeviceSlots(4)
    assert d.take(1, 2) == [0, 1]
    assert d.take(1, 2) == [0, 1]  # asked again: the same
    assert d.take(2, 1) == [2]
    with pytest.raises(ValueError, match="trial 3: 2 GPUs asked, 1 free"):
        d.take(3, 2)
    d.give_back(1)
    assert d.take(3, 2) == [0, 1]
    d.hold(4, [3])
    assert d.held(4) == [3]
    with pytest.raises(ValueError):
        d.take(5, 1)
    assert visible_devices([0, 3]) == "0,3"


def test_this_machine_without_cuda_counts_no_gpus() -> None:
    if pathlib.Path("/proc/driver/nvidia/gpus").is_dir():
        pytest.skip("this machine has NVIDIA GPUs")
    assert count_gpus() == 0


@pytest.mark.slow
def test_local_gangs_see_only_their_gpus(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    master = master_factory()
    rm = LocalResourceManager(
        tmp_path / "rm",
        3,
        lambda: master.address,
        trial_token=master.parts["auth"].trial_token,
        gpus=3,
    )
    exits: list[tuple[int, int, int]] = []
    done = threading.Event()

    def on_exit(t: int, r: int, c: int) -> None:
        exits.append((t, r, c))
        done.set()

    rm.start(on_exit)
    try:
        assert _run(rm, 1, 2, tmp_path) == "0,1"
        assert _run(rm, 2, 1, tmp_path) == "2"
        wait_for(lambda: {t for t, _, _ in exits} == {1, 2}, 60, "both exits")
        rm.release(1)
        assert _run(rm, 3, 1, tmp_path) == "0"
    finally:
        rm.stop()


def test_local_backend_refuses_more_gpu_slots_than_gpus(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="slots: 4 GPU slots asked, this machine has 2 GPUs"):
        LocalResourceManager(tmp_path, 4, lambda: "", trial_token=lambda t, r: "", gpus=2)


def test_master_with_gpus_has_one_slot_per_gpu(master_factory: Callable[..., Master]) -> None:
    m = master_factory(slots=None, gpus=2)
    assert m.parts["rm"].total_slots == 2
    assert m.parts["rm"].gpus == 2


def test_master_without_gpus_keeps_cpu_slots(master_factory: Callable[..., Master]) -> None:
    m = master_factory(slots=3, gpus=0)
    assert m.parts["rm"].total_slots == 3
    assert m.parts["rm"].gpus == 0


@pytest.mark.slow
def test_ray_gpu_slots_ask_for_num_gpus(
    ray_cluster: RayCluster, master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    from master_server.rm.ray import RayResourceManager

    master = master_factory()
    gpu_node = ray_cluster.cluster.add_node(
        num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 2**20
    )
    rm = None
    try:
        rm = RayResourceManager(
            address=ray_cluster.address,
            master_address=lambda: master.address,
            trial_token=master.parts["auth"].trial_token,
            namespace=f"test-{uuid.uuid4().hex[:12]}",
            secret=secrets.token_hex(8),
            slot_type="gpu",
            run_root=str(tmp_path / "runs"),
        )
        assert rm.total_slots == 1  # the one node that declares a GPU
        rm.start(lambda t, r, c: None)
        # Ray gave the rank actor its GPU and named it in CUDA_VISIBLE_DEVICES.
        assert _run(rm, 1, 1, tmp_path) == "0"
    finally:
        if rm is not None:
            rm.stop()
        ray_cluster.cluster.remove_node(gpu_node)  # graceful: gone from the cluster at once


def test_ray_settings_are_checked_before_connecting() -> None:
    from master_server.rm.ray import RayResourceManager

    def make(**kw: object) -> None:
        args: dict[str, object] = {
            "address": "127.0.0.1:1",
            "master_address": lambda: "",
            "trial_token": lambda t, r: "",
            "namespace": "n",
            "secret": "s",
        }
        args.update(kw)
        RayResourceManager(**args)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="slot_type: must be one of"):
        make(slot_type="tpu")
    with pytest.raises(ValueError, match="placement_strategy: must be one of"):
        make(placement_strategy="RANDOM")
    with pytest.raises(ValueError, match="secret: must not be empty"):
        make(secret="")


def test_master_refuses_an_unknown_resource_manager(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="resource_manager: must be one of"):
        Master(tmp_path, resource_manager="yarn")


@pytest.mark.slow
def test_master_names_a_ray_address_that_does_not_answer(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("ray")
    m = Master(tmp_path, resource_manager="ray", ray=RaySettings(address="127.0.0.1:1"))
    with pytest.raises(RuntimeError, match=r"--ray-address 127\.0\.0\.1:1: no Ray cluster answers"):
        m.start()
    m2 = Master(tmp_path, resource_manager="ray", ray=RaySettings(address="nonsense"))
    with pytest.raises(ValueError, match="--ray-address: expected auto, HOST:PORT"):
        m2.start()
