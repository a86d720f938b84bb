"""What Determined configs ask that this master answers differently: creation warnings for keys
accepted without effect and for slots beyond capacity, and warm starts from
``searcher.source_trial_id`` / ``searcher.source_checkpoint_uuid``.

Kept apart from the experiment engine so the engine only asks two questions: "what should the
user be told about this config?" and "which checkpoint does a new trial of it start from?".
"""

from __future__ import annotations

import logging
from typing import Any

from determined_sdk.errors import InvalidArgumentError, NotFoundError
from master_server.domain import CheckpointState
from master_server.store.base import Store

logger = logging.getLogger(__name__)
JSONDict = dict[str, Any]

# Keys a Determined config may hold that the local backend accepts and does not act on, with
# the reason shown to the user.
_NO_EFFECT: tuple[tuple[tuple[str, ...], str], ...] = (
    (("environment", "image"), "trials run in the master's Python environment, not a container"),
    (("environment", "force_pull_image"), "there are no container images to pull"),
    (("environment", "pod_spec"), "there is no Kubernetes backend"),
    (("environment", "registry_auth"), "there are no container images to pull"),
    (("environment", "add_capabilities"), "trials run as plain processes"),
    (("environment", "drop_capabilities"), "trials run as plain processes"),
    (("environment", "proxy_ports"), "trials run as plain processes"),
    (("environment", "ports"), "trials run as plain processes"),
    (("bind_mounts",), "trials run on this machine and see its filesystem as it is"),
    (("resources", "resource_pool"), "the local backend has one pool"),
    (("resources", "priority"), "the local scheduler is first in, first out"),
    (("resources", "weight"), "the local scheduler is first in, first out"),
    (("resources", "shm_size"), "trials run as plain processes"),
    (("resources", "devices"), "trials run as plain processes"),
    (("optimizations",), "it configures Determined's Trial APIs, which are not here"),
    (("profiling",), "there is no profiler"),
)


def creation_warnings(config: JSONDict, total_slots: int, *, pools: bool = False) -> list[str]:
    """What to tell the user about a validated config: one line per key without effect, and
    slots beyond this master's capacity. ``pools``: the resource manager has resource pools
    (``resources.resource_pool`` has an effect)."""
    out: list[str] = []
    for path, why in _NO_EFFECT:
        if pools and path == ("resources", "resource_pool"):
            continue
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out.append(f"{'.'.join(path)}: accepted but has no effect here ({why})")
    slots = int(config["resources"]["slots_per_trial"])
    if slots > total_slots:
        out.append(
            f"resources.slots_per_trial: {slots} is more than this master's {total_slots} "
            f"slots; its trials wait QUEUED until the master has that many"
        )
    return out


def check_warm_start(store: Store, config: JSONDict) -> None:
    """Fail the create call when ``searcher.source_*`` names nothing usable.

    Raises:
        InvalidArgumentError: naming the field: no such trial, a trial without a checkpoint, or
            no such (or a deleted) checkpoint.
    """
    searcher = config.get("searcher") or {}
    trial_id = searcher.get("source_trial_id")
    if trial_id is not None:
        try:
            trial = store.get_trial(int(trial_id))
        except NotFoundError:
            raise InvalidArgumentError(
                f"searcher.source_trial_id: trial {trial_id} not found"
            ) from None
        if not trial.latest_checkpoint_uuid:
            raise InvalidArgumentError(
                f"searcher.source_trial_id: trial {trial_id} has no checkpoint to start from"
            )
    uuid = searcher.get("source_checkpoint_uuid")
    if uuid is not None:
        try:
            ckpt = store.get_checkpoint(str(uuid))
        except NotFoundError:
            raise InvalidArgumentError(
                f"searcher.source_checkpoint_uuid: checkpoint {uuid!r} not found"
            ) from None
        if ckpt.state not in (CheckpointState.COMPLETED, CheckpointState.PARTIALLY_DELETED):
            raise InvalidArgumentError(
                f"searcher.source_checkpoint_uuid: checkpoint {uuid!r} is {ckpt.state.value}"
            )


def warm_start_checkpoint(store: Store, config: JSONDict) -> str | None:
    """The checkpoint a new trial of this config starts from (``latest_checkpoint`` in its
    cluster info), or None: ``source_checkpoint_uuid``, else ``source_trial_id``'s latest."""
    searcher = config.get("searcher") or {}
    uuid = searcher.get("source_checkpoint_uuid")
    if uuid:
        return str(uuid)
    trial_id = searcher.get("source_trial_id")
    if trial_id is not None:
        try:
            return store.get_trial(int(trial_id)).latest_checkpoint_uuid or None
        except NotFoundError:
            logger.warning("searcher.source_trial_id: trial %s is gone; starting fresh", trial_id)
    return None
