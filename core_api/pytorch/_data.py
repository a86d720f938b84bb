"""Data-loader handling for the trainer: a seeded order per epoch, sharding across ranks and a
start position inside the epoch, so a trial resumed mid-epoch sees exactly the batches an
uninterrupted one would.

The user's ``DataLoader`` is taken apart (dataset, batch size, shuffle, collate function,
workers) and rebuilt for each epoch with an explicit list of index batches and its own seeded
generator, so creating it never draws from the global RNG. Loaders this cannot rebuild (an
``IterableDataset``, a custom sampler or batch sampler) are iterated as they are; the trainer
then skips already-trained batches by reading them, and exactness depends on the loader.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

logger = logging.getLogger(__name__)


class EpochLoader:
    """One rank's view of a loader, epoch by epoch.

    Args:
        loader: the user's loader.
        rank: this rank.
        size: the number of ranks.
        seed: the trial seed (the shuffle order of epoch ``e`` depends on ``seed`` and ``e``).
        train: a training loader (ranks get equal shares) or a validation one (every record is
            evaluated exactly once across the ranks).
    """

    def __init__(
        self, loader: DataLoader[Any], *, rank: int, size: int, seed: int, train: bool
    ) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"the data loader must be a torch.utils.data.DataLoader, got "
                f"{type(loader).__name__}"
            )
        self.loader = loader
        self._rank = rank
        self._size = size
        self._seed = seed
        self._train = train
        sampler = loader.sampler
        self.rebuilt = (
            not isinstance(loader.dataset, IterableDataset)
            and loader.batch_size is not None
            and type(sampler) in (RandomSampler, SequentialSampler)
            and getattr(sampler, "num_samples", len(loader.dataset)) == len(loader.dataset)  # type: ignore[arg-type]
        )
        if not self.rebuilt:
            logger.warning(
                "the %s loader cannot be rebuilt (iterable dataset or custom sampler): it is "
                "used as it is, and a resumed trial skips batches by reading them",
                "training" if train else "validation",
            )
            if size > 1:
                logger.warning("such a loader must shard the data across ranks itself")
            return
        self._n = len(loader.dataset)  # type: ignore[arg-type]
        assert loader.batch_size is not None
        self.batch_size = int(loader.batch_size)
        self._shuffle = isinstance(sampler, RandomSampler)
        self._drop_last = bool(loader.drop_last)

    def _indices(self, epoch: int) -> list[int]:
        n = self._n
        if self._shuffle:
            g = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self._size > 1:
            if self._train:
                order = order[: (n // self._size) * self._size]
            order = order[self._rank :: self._size]
        return order

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if not self.rebuilt:
            return len(self.loader)
        n = self._n // self._size if (self._train and self._size > 1) else self._n
        if not self._train and self._size > 1:
            n = len(range(self._rank, self._n, self._size))
        return n // self.batch_size if self._drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of ``epoch``, starting after the first ``skip``."""
        if not self.rebuilt:
            it = iter(self.loader)
            for _ in range(skip):
                next(it, None)
            return it
        order = self._indices(epoch)
        bs = self.batch_size
        stop = len(order) - (len(order) % bs if self._drop_last else 0)
        batches = [order[i : i + bs] for i in range(skip * bs, stop, bs)]
        src = self.loader
        kwargs: dict[str, Any] = {
            "batch_sampler": batches,
            "num_workers": src.num_workers,
            "collate_fn": src.collate_fn,
            "pin_memory": src.pin_memory,
            "timeout": src.timeout,
            "worker_init_fn": src.worker_init_fn,
            "generator": torch.Generator().manual_seed(self._seed * 7919 + epoch),
        }
        if src.num_workers > 0:
            kwargs["prefetch_factor"] = src.prefetch_factor
            kwargs["multiprocessing_context"] = src.multiprocessing_context
        return iter(DataLoader(src.dataset, **kwargs))
