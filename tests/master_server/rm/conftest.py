"""Fixtures of the resource-manager tests: a real two-node Ray cluster on loopback, shared by
the session (started only when a test asks for it; Ray tests skip when ray is not installed),
and a factory of resource managers of either backend wired to a real master."""

from __future__ import annotations

import os
import pathlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from master_server.app import Master
from master_server.rm.base import ResourceManager
from master_server.rm.local import LocalResourceManager

# Before Ray is imported anywhere: Ray reads it when it starts a node (loopback only).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

#: Every node of the test cluster: two CPUs, a small object store, loopback only.
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 2,
    "node_ip_address": "127.0.0.1",
    "object_store_memory": 80 * 2**20,
}


@dataclass
class RayCluster:
    """The session's Ray cluster: a head and one worker, two CPUs each."""

    cluster: Any
    address: str
    worker: Any

    def add_node(self, **resources: float) -> Any:
        """Start one more worker node (two CPUs; ``resources`` are custom Ray resources)."""
        return self.cluster.add_node(**NODE_ARGS, resources=dict(resources))

    def remove_node(self, node: Any) -> None:
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real two-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray.cluster_utils import Cluster

    # Ray gives a starting node 30 s to register, fixed: on a loaded machine (2 cores shared
    # with other test runs) that can run out, so a failed start is tried again, twice at most.
    for attempt in range(3):
        cluster = Cluster()
        try:
            cluster.add_node(**NODE_ARGS, include_dashboard=False)
            worker = cluster.add_node(**NODE_ARGS)
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    try:
        yield RayCluster(cluster, cluster.address, worker)
    finally:
        cluster.shutdown()


BACKENDS = ["local", "ray"]


@dataclass
class Backend:
    """Makes resource managers of one backend, all calling back one real master."""

    name: str
    master: Master
    data_dir: pathlib.Path
    make: Callable[[], ResourceManager]
    #: Slots the backend has (the local one is given as many as the Ray cluster has CPUs).
    slots: int


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    master_factory: Callable[..., Master],
    tmp_path: pathlib.Path,
) -> Iterator[Backend]:
    """Each test runs against the local backend and the Ray backend."""
    master = master_factory()
    auth = master.parts["auth"]
    data_dir = tmp_path / "rm"
    data_dir.mkdir()
    made: list[ResourceManager] = []
    if request.param == "local":

        def make() -> ResourceManager:
            rm = LocalResourceManager(
                data_dir, 4, lambda: master.address, trial_token=auth.trial_token
            )
            made.append(rm)
            return rm

    else:
        cluster: RayCluster = request.getfixturevalue("ray_cluster")
        from master_server.rm.ray import RayResourceManager

        namespace, secret = f"test-{uuid.uuid4().hex[:12]}", secrets.token_hex(8)

        def make() -> ResourceManager:
            rm = RayResourceManager(
                address=cluster.address,
                master_address=lambda: master.address,
                trial_token=auth.trial_token,
                namespace=namespace,
                secret=secret,
                run_root=str(data_dir / "runs"),
                placement_strategy="SPREAD",
            )
            made.append(rm)
            return rm

    yield Backend(request.param, master, data_dir, make, 4)
    for rm in made:
        rm.stop()
