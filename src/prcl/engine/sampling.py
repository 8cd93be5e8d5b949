"""Step-indexed sampling: the batch of step s is a pure function of (seed, s, rank).

Training resumes exactly where it stopped: which images a step sees and how each is augmented
depend only on the seed, the step and the rank, never on how many workers ran or whether the run
was interrupted. Pass p over a dataset of n images uses its own seeded permutation; position g of
the endless stream is image ``perm_{g // n}[g % n]``, augmented under the torch seed of ``(seed, g)``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from prcl import distributed
from prcl.devices import usable_cpus

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
    """Loader workers leave SIGINT and SIGTERM to the process that owns them.

    Both are ignored, not only SIGINT: a terminal's Ctrl-C reaches the whole process group, and schedulers send
    SIGTERM to every process of a job (SLURM's ``--signal``, systemd's stop), so a worker that died of either
    would take the batch the trainer still needs to finish its step (torch then raises "DataLoader worker
    exited unexpectedly" in the middle of it) instead of letting it save. The cost is that multiprocessing's
    own way to end a worker at exit (SIGTERM, then waiting for it) cannot end these: their owner stops them
    instead (:class:`LoaderBatches`: ``close``, ending with SIGKILL, and at the latest at exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


WORKER_EXIT_SECONDS = 5.0
"""How long :meth:`LoaderBatches.close` waits for a killed worker to be gone."""

_OPEN_LOADERS: weakref.WeakSet[LoaderBatches] = weakref.WeakSet()


class LoaderBatches:
    """The batches of a DataLoader, owning its worker processes: ``close()`` (or the end of a ``with`` block, or
    the exit of the process) stops every worker it started, whatever state the loader is in.

    Iterate it like the loader's own iterator (``next(batches)``); ``len`` is the loader's (a TypeError for the
    endless step loaders).
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._iterator: Iterator[Any] | None = None
        before = set(multiprocessing.active_children())
        try:
            self._iterator = iter(loader)  # starts the workers (none with num_workers=0)
        finally:
            # The workers are the children this process started just now (the public way to know them); when a
            # stop signal came while they started, those already running are stopped at once.
            self._workers = [child for child in multiprocessing.active_children() if child not in before]
            _OPEN_LOADERS.add(self)
            if self._iterator is None:
                self.close()

    def __iter__(self) -> LoaderBatches:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self.loader)

    def __enter__(self) -> LoaderBatches:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: first the loader's own shutdown (it tells them to finish and waits for them), then
        SIGKILL for any still alive (they ignore SIGTERM, see :func:`ignore_stop_signals`). Idempotent."""
        iterator, self._iterator = self._iterator, None
        _OPEN_LOADERS.discard(self)
        # Dropping our reference is not enough: when a stop signal interrupted ``next``, the exception's
        # traceback still holds the iterator, so its ``__del__`` (which shuts the workers down) would run later,
        # and killing the workers before that shutdown makes torch's SIGCHLD handler raise "DataLoader worker
        # exited unexpectedly". So this calls the shutdown ``__del__`` would: torch's ``_shutdown_workers``,
        # private but the only way to shut a loader's workers down; a second call does nothing.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del iterator
        for worker in self._workers:
            if worker.is_alive():
                worker.kill()
            worker.join(timeout=WORKER_EXIT_SECONDS)
        self._workers = []

    def __del__(self) -> None:
        if getattr(self, "_iterator", None) is not None:  # dropped without close(): stop the workers now
            self.close()


def _close_open_loaders() -> None:
    """At exit, before multiprocessing's exit handler (which would SIGTERM these workers and then wait for them
    forever: they ignore SIGTERM), stop the workers of every loader nobody closed."""
    for batches in list(_OPEN_LOADERS):
        batches.close()


# atexit runs the last registered first: this runs before multiprocessing's handler and before torch marks the
# interpreter as exiting (after which a loader's shutdown does nothing), both registered when torch was imported.
atexit.register(_close_open_loaders)


def close_loaders(*loaders: LoaderBatches | None) -> None:
    """Close each loader given (None: skipped)."""
    for batches in loaders:
        if batches is not None:
            batches.close()


_NOTICED: set[int] = set()


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
                rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> LoaderBatches:
    """An endless iterator over the batches of steps ``start_step, start_step + 1, ...``; ``close()`` it when
    done (its workers are stopped at exit otherwise)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, rank, world_size)  # type: ignore[arg-type]
    loader = DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=loader_workers(num_workers),
                        pin_memory=pin_memory, persistent_workers=False,
                        worker_init_fn=ignore_stop_signals)
    return LoaderBatches(loader)
