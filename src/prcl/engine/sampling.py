"""Step-indexed sampling: the batch of step s is a pure function of (seed, s, rank).

Training resumes exactly where it stopped: which images a step sees and how each is augmented
depend only on the seed, the step and the rank, never on how many workers ran or whether the run
was interrupted. Pass p over a dataset of n images uses its own seeded permutation; position g of
the endless stream is image ``perm_{g // n}[g % n]``, augmented under the torch seed of ``(seed, g)``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from prcl import distributed

_MIX = 0x9E3779B97F4A7C15


def mixed_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * _MIX + part + 1) % (2**63 - 1)
    return value


class StepBatchSampler:
    """Endless batches of ``(index, sample_seed)`` pairs starting at ``start_step``.

    With ``world_size`` ranks, each step takes ``world_size * batch_size`` consecutive positions of
    the stream, and rank r takes its own slice, so ranks never see the same position.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if dataset_size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._pass, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        current = position // self.n
        if current != self._pass:
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, current))
            self._pass, self._perm = current, torch.randperm(self.n, generator=generator)
        return int(self._perm[position % self.n])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield [(self._index(g), mixed_seed(self.seed, g, 7)) for g in range(first, first + self.batch_size)]
            step += 1


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded under ``torch.manual_seed(seed)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT and SIGTERM to the training process, which stops after a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_NOTICED: set[int] = set()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


WORKERS_PER_CPU = 4
"""Loader workers allowed per usable CPU: decoding is CPU work, and a few per CPU cover the waits on disk."""


def loader_workers(requested: int) -> int:
    """``data.num_workers`` bounded by ``WORKERS_PER_CPU`` x the usable CPUs: more loader processes load no
    faster, and each is a process of its own (100000 of them end with the kernel's OOM killer). The first time
    a value is cut, one notice line on stderr (main process) says so. The batches do not depend on the number
    of workers (each sample's seed is its stream position), so cutting it changes nothing but speed."""
    cpus = usable_cpus()
    bound = WORKERS_PER_CPU * cpus
    if requested <= bound:
        return requested
    if requested not in _NOTICED and distributed.is_main():
        _NOTICED.add(requested)
        print(f"prcl: notice: data.num_workers={requested} is more than {WORKERS_PER_CPU} per CPU this process can "
              f"use ({cpus}); loading with {bound} workers", file=sys.stderr)
    return bound


def step_loader(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0, num_workers: int = 0,
                rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> Iterator[Any]:
    """An endless iterator over the batches of steps ``start_step, start_step + 1, ...``."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, rank, world_size)  # type: ignore[arg-type]
    loader = DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=loader_workers(num_workers),
                        pin_memory=pin_memory, persistent_workers=False,
                        worker_init_fn=ignore_stop_signals)
    return iter(loader)
