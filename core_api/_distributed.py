"""Ranks and collectives: :class:`DistributedContext`.

A context knows its place (rank, size, local and cross ranks) and moves small picklable
objects between ranks (``broadcast``, ``gather``, ``allgather`` and their ``_local`` twins). It
does not move tensors: use your framework for that.

Three transports sit behind the same methods:

* single process (``DistributedContext.single()``, the default): collectives are trivial;
* ``torch.distributed`` (:meth:`DistributedContext.from_torch_distributed`): object collectives
  over the process group the user already initialized (gloo or nccl);
* a small TCP transport (stdlib ``multiprocessing.connection``), used when the context is built
  by hand with ``size > 1``: the chief listens on ``chief_ip:port`` and the workers connect.

All ranks must call the same collectives in the same order, as with any collective library.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded by the first multi-rank context (a single rank needs no sockets)
    from multiprocessing.connection import Connection, Listener

logger = logging.getLogger(__name__)

#: Default TCP port of the stdlib transport's chief.
DEFAULT_PORT = 12360
_AUTHKEY_ENV = "DET_DISTRIBUTED_AUTHKEY"


class _Transport(abc.ABC):
    @abc.abstractmethod
    def gather(self, obj: Any) -> list[Any] | None: ...

    @abc.abstractmethod
    def broadcast(self, obj: Any) -> Any: ...

    def allgather(self, obj: Any) -> list[Any]:
        out = self.broadcast(self.gather(obj))
        assert out is not None
        return list(out)

    def close(self) -> None:  # noqa: B027 - most transports own nothing
        pass


class _Single(_Transport):
    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]


class _Torch(_Transport):
    """Object collectives over the default ``torch.distributed`` process group."""

    def __init__(self, rank: int, size: int) -> None:
        import torch.distributed as dist  # lazy: `import core_api` must not import torch

        self._dist = dist
        self._rank = rank
        self._size = size

    def gather(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self._size if self._rank == 0 else None
        self._dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self._rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def allgather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self._size
        self._dist.all_gather_object(out, obj)
        return out


class _Tcp(_Transport):
    """Star topology over TCP: every worker has one connection to the chief."""

    def __init__(
        self, rank: int, size: int, chief_ip: str, port: int, connect_timeout: float
    ) -> None:
        self._rank = rank
        self._size = size
        from multiprocessing.connection import Client, Listener

        authkey = os.environ.get(_AUTHKEY_ENV, "core_api").encode()
        self._listener: Listener | None = None
        self._peers: list[Connection] = []
        self._chief: Connection | None = None
        if rank == 0:
            self._listener = Listener((chief_ip, port), authkey=authkey)
            by_rank: dict[int, Connection] = {}
            while len(by_rank) < size - 1:
                conn = self._listener.accept()
                peer = int(conn.recv())
                by_rank[peer] = conn
            self._peers = [by_rank[r] for r in range(1, size)]
        else:
            deadline = time.monotonic() + connect_timeout
            while True:
                try:
                    self._chief = Client((chief_ip, port), authkey=authkey)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._chief.send(rank)

    def gather(self, obj: Any) -> list[Any] | None:
        if self._chief is not None:
            self._chief.send(obj)
            return None
        return [obj] + [conn.recv() for conn in self._peers]

    def broadcast(self, obj: Any) -> Any:
        if self._chief is not None:
            return self._chief.recv()
        for conn in self._peers:
            conn.send(obj)
        return obj

    def close(self) -> None:
        for conn in self._peers:
            conn.close()
        if self._chief is not None:
            self._chief.close()
        if self._listener is not None:
            self._listener.close()


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None


class DistributedContext:
    """This process's place among the trial's ranks, and collectives between them.

    Args:
        rank: global rank, 0 is the chief.
        size: number of ranks.
        local_rank: rank on this node.
        local_size: ranks on this node.
        cross_rank: this node's index.
        cross_size: number of nodes.
        chief_ip: address the chief's TCP transport listens on / workers connect to (only used
            when ``size > 1``; default ``$MASTER_ADDR`` or ``127.0.0.1``).
        port: the chief's TCP port for the stdlib transport.
        connect_timeout: how long workers wait for the chief to listen, in seconds.
    """

    def __init__(
        self,
        *,
        rank: int,
        size: int,
        local_rank: int,
        local_size: int,
        cross_rank: int,
        cross_size: int,
        chief_ip: str | None = None,
        port: int = DEFAULT_PORT,
        connect_timeout: float = 300.0,
        _transport: _Transport | None = None,
    ) -> None:
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"rank must be in [0, size), got rank={rank} size={size}")
        if local_size < 1 or not 0 <= local_rank < local_size:
            raise ValueError(
                f"local_rank must be in [0, local_size), got {local_rank}/{local_size}"
            )
        if cross_size < 1 or not 0 <= cross_rank < cross_size:
            raise ValueError(
                f"cross_rank must be in [0, cross_size), got {cross_rank}/{cross_size}"
            )
        self._rank = rank
        self._size = size
        self._local_rank = local_rank
        self._local_size = local_size
        self._cross_rank = cross_rank
        self._cross_size = cross_size
        if _transport is None:
            if size == 1:
                _transport = _Single()
            else:
                ip = chief_ip or os.environ.get("MASTER_ADDR") or "127.0.0.1"
                _transport = _Tcp(rank, size, ip, port, connect_timeout)
        self._transport = _transport
        self._closed = False

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def single(cls) -> DistributedContext:
        """The context of a non-distributed process (rank 0 of 1)."""
        return cls(rank=0, size=1, local_rank=0, local_size=1, cross_rank=0, cross_size=1)

    @classmethod
    def from_torch_distributed(cls, chief_ip: str | None = None) -> DistributedContext:
        """Build from ``torch.distributed``, as torchrun or Determined's launcher set it up.

        With an initialized default process group, collectives ride on it. Without one, the
        place comes from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``) and collectives use the TCP transport, as
        Determined's does.

        Args:
            chief_ip: where the chief listens (default ``$MASTER_ADDR`` or ``127.0.0.1``).

        Raises:
            RuntimeError: neither an initialized process group nor torchrun's variables.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = int(dist.get_rank())
            size = int(dist.get_world_size())
            transport: _Transport | None = _Torch(rank, size) if size > 1 else _Single()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank = _env_int("RANK")
            size = _env_int("WORLD_SIZE")
            transport = None
        else:
            raise RuntimeError(
                "torch.distributed is not initialized and RANK/WORLD_SIZE are not set: call "
                "torch.distributed.init_process_group() first or start under a launcher"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        cross_rank = int(os.environ.get("GROUP_RANK", rank // max(local_size, 1)))
        cross_size = max(size // max(local_size, 1), 1)
        return cls(
            rank=rank,
            size=size,
            local_rank=local_rank,
            local_size=local_size,
            cross_rank=cross_rank,
            cross_size=cross_size,
            chief_ip=chief_ip,
            _transport=transport,
        )

    @classmethod
    def from_deepspeed(cls, chief_ip: str | None = None) -> DistributedContext:
        """Build from the variables DeepSpeed's launcher sets (``RANK``, ``LOCAL_RANK``,
        ``WORLD_SIZE``, ``LOCAL_SIZE``/``LOCAL_WORLD_SIZE``, ``CROSS_RANK``, ``CROSS_SIZE``).

        Collectives use the TCP transport, independent of DeepSpeed's process group.

        Args:
            chief_ip: where the chief listens (default ``$MASTER_ADDR`` or ``127.0.0.1``).

        Raises:
            RuntimeError: the variables are missing.
        """
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "from_deepspeed: RANK and WORLD_SIZE are not set (start under deepspeed's "
                "launcher or core_api.launch)"
            )
        rank = _env_int("RANK")
        size = _env_int("WORLD_SIZE")
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_size = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", size)))
        cross_rank = int(os.environ.get("CROSS_RANK", rank // max(local_size, 1)))
        cross_size = int(os.environ.get("CROSS_SIZE", max(size // max(local_size, 1), 1)))
        return cls(
            rank=rank,
            size=size,
            local_rank=local_rank,
            local_size=local_size,
            cross_rank=cross_rank,
            cross_size=cross_size,
            chief_ip=chief_ip,
        )

    @classmethod
    def from_horovod(cls, hvd: Any, chief_ip: str | None = None) -> DistributedContext:
        """Build from an initialized Horovod module (``import horovod.torch as hvd``).

        Args:
            hvd: the Horovod module, after ``hvd.init()``.
            chief_ip: where the chief listens (default ``$MASTER_ADDR`` or ``127.0.0.1``).
        """
        return cls(
            rank=int(hvd.rank()),
            size=int(hvd.size()),
            local_rank=int(hvd.local_rank()),
            local_size=int(hvd.local_size()),
            cross_rank=int(hvd.cross_rank()),
            cross_size=int(hvd.cross_size()),
            chief_ip=chief_ip,
        )

    # -- properties -----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Global rank; 0 is the chief."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._size

    @property
    def local_rank(self) -> int:
        """Rank on this node."""
        return self._local_rank

    @property
    def local_size(self) -> int:
        """Ranks on this node."""
        return self._local_size

    @property
    def cross_rank(self) -> int:
        """This node's index."""
        return self._cross_rank

    @property
    def cross_size(self) -> int:
        """Number of nodes."""
        return self._cross_size

    @property
    def is_chief(self) -> bool:
        """Whether this is rank 0."""
        return self._rank == 0

    @property
    def is_local_chief(self) -> bool:
        """Whether this is local rank 0."""
        return self._local_rank == 0

    def get_rank(self) -> int:
        """Same as :attr:`rank` (Determined's accessor)."""
        return self._rank

    def get_size(self) -> int:
        """Same as :attr:`size`."""
        return self._size

    def get_local_rank(self) -> int:
        """Same as :attr:`local_rank`."""
        return self._local_rank

    def get_local_size(self) -> int:
        """Same as :attr:`local_size`."""
        return self._local_size

    def get_cross_rank(self) -> int:
        """Same as :attr:`cross_rank`."""
        return self._cross_rank

    def get_cross_size(self) -> int:
        """Same as :attr:`cross_size`."""
        return self._cross_size

    # -- collectives ----------------------------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Every rank gets the chief's ``obj`` (the others' arguments are ignored)."""
        self._check_open()
        return self._transport.broadcast(obj)

    def gather(self, obj: Any) -> list[Any] | None:
        """The chief gets every rank's ``obj`` in rank order; the others get None."""
        self._check_open()
        return self._transport.gather(obj)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank gets every rank's ``obj`` in rank order."""
        self._check_open()
        return self._transport.allgather(obj)

    def _local_slice(self, obj: Any) -> list[Any]:
        # Local collectives ride on the global ones: small objects, simple and always correct.
        tagged = self.allgather((self._cross_rank, self._local_rank, obj))
        mine = sorted((lr, o) for cr, lr, o in tagged if cr == self._cross_rank)
        return [o for _, o in mine]

    def broadcast_local(self, obj: Any) -> Any:
        """Every rank gets its local chief's ``obj``."""
        if self._size == 1:
            return obj
        return self._local_slice(obj)[0]

    def gather_local(self, obj: Any) -> list[Any] | None:
        """The local chief gets every local rank's ``obj``; the others get None."""
        if self._size == 1:
            return [obj]
        out = self._local_slice(obj)
        return out if self._local_rank == 0 else None

    def allgather_local(self, obj: Any) -> list[Any]:
        """Every rank gets every local rank's ``obj`` in local-rank order."""
        if self._size == 1:
            return [obj]
        return self._local_slice(obj)

    def close(self) -> None:
        """Release the transport (a torch process group is left to its owner)."""
        if not self._closed:
            self._closed = True
            self._transport.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DistributedContext is closed")

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self._rank}, size={self._size}, "
            f"local_rank={self._local_rank}, local_size={self._local_size}, "
            f"cross_rank={self._cross_rank}, cross_size={self._cross_size})"
        )
