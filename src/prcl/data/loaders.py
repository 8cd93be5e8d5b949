"""DataLoaders with explicit seeds, and an endless batch iterator for iteration-based training.

Shuffling order comes from a ``torch.Generator`` seeded with ``seed``. In worker processes torch
seeds each worker from that generator; :func:`seed_worker` also seeds ``random`` and ``numpy``
from it. With ``num_workers=0`` the transforms run in the main process and draw from the global
torch RNG (seed it, e.g. with ``torch.manual_seed``, for repeatable augmentation).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from prcl.errors import UserError


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class InfiniteLoader:
    """Yield batches forever; each pass over the loader is a new epoch with a new shuffle.

    ``epoch`` counts the passes started so far; with a ``DistributedSampler``, ``set_epoch`` is
    called with it before every pass so all ranks reshuffle consistently.
    """

    def __init__(self, loader: DataLoader) -> None:
        if len(loader) == 0:
            raise UserError(
                f"the data loader yields no batches: {len(loader.sampler)} images (on this rank) "
                f"and batch size {loader.batch_size} with drop_last; use more images or a "
                "smaller batch"
            )
        self.loader = loader
        self.epoch = 0
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Any:
        while True:
            if self._iterator is None:
                sampler = self.loader.sampler
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
                self.epoch += 1
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    infinite: bool = False,
    distributed: bool = False,
    pin_memory: bool = False,
) -> DataLoader | InfiniteLoader:
    """A ``DataLoader`` over ``dataset`` (or, with ``infinite=True``, an :class:`InfiniteLoader`).

    ``distributed=True`` shards the data over the ranks of the initialised process group with a
    ``DistributedSampler`` (seeded with ``seed``); call ``loader.sampler.set_epoch(e)`` per epoch
    yourself unless ``infinite=True``.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0 and infinite,
        pin_memory=pin_memory,
    )
    return InfiniteLoader(loader) if infinite else loader
