"""Step-indexed sampling: a step's batch depends only on (seed, step, rank)."""

import torch

from prcl.engine.sampling import SeededDataset, StepBatchSampler


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
