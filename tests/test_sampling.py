"""Step-indexed sampling: a step's batch depends only on (seed, step, rank); the loaders' workers end with them."""

import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from prcl.engine.sampling import SeededDataset, StepBatchSampler, step_loader
from prcl.stopping import Stopped

from processes import HAS_PROC


def take(sampler, steps):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(steps)]


def test_each_pass_is_a_permutation_and_ranks_are_disjoint():
    ranks = [take(StepBatchSampler(12, 3, seed=5, rank=r, world_size=2), 4) for r in range(2)]
    # 4 steps x 2 ranks x 3 images = 24 positions = two passes over 12 images
    positions = [item for step in range(4) for r in range(2) for item in ranks[r][step]]
    indices = [index for index, _ in positions]
    assert sorted(indices[:12]) == list(range(12)) and sorted(indices[12:]) == list(range(12))
    assert indices[:12] != indices[12:]  # each pass has its own order
    assert len({seed for _, seed in positions}) == 24  # every position its own augmentation seed


def test_starting_at_a_step_continues_the_same_stream():
    full = take(StepBatchSampler(10, 4, seed=1), 6)
    assert take(StepBatchSampler(10, 4, seed=1, start_step=3), 3) == full[3:]
    assert take(StepBatchSampler(10, 4, seed=2), 6) != full


def test_seeded_items_repeat_and_leave_the_global_rng_alone():
    dataset = SeededDataset([0, 1, 2])
    dataset.dataset = type("Random", (), {"__getitem__": lambda self, i: torch.rand(2), "__len__": lambda self: 3})()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a, b = dataset[(1, 42)], dataset[(2, 42)]
    assert torch.equal(a, b) and not torch.equal(a, dataset[(1, 43)])
    assert torch.equal(torch.rand(1), before)


class _SlowItems(Dataset):
    """Four items, each taking a while to load."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(0.5)
        return torch.zeros(1)


@pytest.mark.slow  # starts loader workers
@pytest.mark.skipif(not HAS_PROC, reason="looks for the workers in /proc")
def test_close_stops_the_workers_while_an_interrupted_next_still_holds_the_loader():
    """A stop signal raised inside ``next`` leaves the loader's iterator in the exception's traceback; closing
    must still end the workers, which ignore SIGTERM, without torch reporting them as crashed."""
    before = set(multiprocessing.active_children())
    batches = step_loader(_SlowItems(), 1, seed=0, num_workers=2)
    workers = [child.pid for child in multiprocessing.active_children() if child not in before]
    assert len(workers) == 2

    def interrupt(number, frame):
        raise Stopped(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Stopped) as caught:
            next(batches)  # the workers need 0.5 s for an item: the signal lands inside next
        batches.close()
        time.sleep(0.2)  # torch's SIGCHLD handler would raise here for workers it still watched
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert caught.value.__traceback__ is not None  # still held while the workers were stopped
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    with pytest.raises(StopIteration):
        next(batches)


@pytest.mark.slow  # a process that imports torch
@pytest.mark.skipif(not HAS_PROC, reason="looks for the workers in /proc")
def test_workers_nobody_closed_do_not_keep_the_process_from_exiting(start_process):
    """multiprocessing's exit handler sends SIGTERM to a worker and waits for it: forever, for workers that ignore
    SIGTERM. The loader's own exit handler stops them first."""
    program = ("import torch\n"
               "from prcl.engine.sampling import step_loader\n"
               "batches = step_loader(torch.utils.data.TensorDataset(torch.zeros(8, 2)), 2, 0, num_workers=2)\n"
               "next(batches)\n")
    run = start_process([sys.executable, "-c", program], prcl=False)
    try:
        code = run.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the process did not exit: its loader workers held it") from None
    assert code == 0, run.err()[-2000:]
    assert not run.leftovers()
