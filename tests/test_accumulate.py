"""Gradient accumulation (``train.accumulate``): N micro-batches per optimiser step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prcl.engine.trainer as trainer_module
from prcl.engine.trainer import Trainer, TrainingDiverged, _mean_record
from prcl.methods import Method

from tiny_run import assert_same_weights, tiny_config

NUM_CLASSES = 4  # the tiny runs' demo classes


class ToyNet(nn.Module):
    """Two convolutions and no BatchNorm: an image's gradient does not depend on the other images of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class ToyMethod(Method):
    """A labeled and an unlabeled term, each a mean over pixels; every image has all its pixels, so the mean of
    two one-image means is the two-image mean."""

    name = "toy"
    uses_unlabeled = True

    def build_networks(self, student: nn.Module) -> dict[str, nn.Module]:
        return {"student": student}

    def train_step(self, nets, batch):
        sup = F.cross_entropy(nets["student"](batch.labeled_images), batch.labels)
        unsup = nets["student"](batch.unlabeled_images).logsumexp(dim=1).mean()
        return {"loss": sup + unsup, "sup": sup.detach(), "unsup": unsup.detach()}


def toy_trainer(demo_root, out_dir, setattr) -> Trainer:
    """A Trainer of ``ToyMethod`` and ``ToyNet`` (``setattr``: monkeypatch.setattr, or the builtin in a worker)."""
    setattr(trainer_module, "build_method", ToyMethod)
    setattr(trainer_module, "build_segmenter", lambda *args, **kwargs: ToyNet())
    # momentum 0 and no weight decay: the first step's change is -lr x the gradient, nothing else
    return Trainer(tiny_config(demo_root, out_dir, **{"train.accumulate": 2, "optim.momentum": 0.0,
                                                      "optim.nesterov": "false", "optim.weight_decay": 0.0}))


def toy_images(count: int) -> list[tuple[dict, dict]]:
    """``count`` one-image (labeled, unlabeled) batches of 12 x 12 random images, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    labeled = torch.randn(count, 3, 12, 12, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count, 12, 12), generator=generator)
    unlabeled = torch.randn(count, 3, 12, 12, generator=generator)
    return [({"image": labeled[i:i + 1], "mask": labels[i:i + 1]}, {"image": unlabeled[i:i + 1]})
            for i in range(count)]


def joined(batches: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """The batches as one batch (a step without accumulation)."""
    return [tuple({key: torch.cat([pair[part][key] for pair in batches]) for key in batches[0][part]}
                  for part in (0, 1))]


def float32_sum_tolerance(gradient: torch.Tensor, terms: int) -> float:
    """How far float32 rounding may move a gradient that sums ``terms`` per-pixel terms when the sum is grouped
    otherwise (per micro-batch, scaled by 1/N and added, against one sum over the whole batch).

    Reordering a float32 sum of n terms moves it by at most about n x eps x (the sum of the terms' magnitudes):
    the bound for recursive summation. We take the tensor's largest gradient entry as the magnitude. Rounding
    in practice grows like sqrt(n) x eps, far inside this (measured: 1e-8 against a tolerance of 1e-6); a lost
    micro-batch or a missing 1/N moves the gradient by a quarter to a half of its size.
    """
    return terms * torch.finfo(torch.float32).eps * float(gradient.abs().max())


def test_two_micro_batches_of_one_plus_one_give_the_gradient_of_one_batch_of_two_plus_two(demo_root, tmp_path,
                                                                                        monkeypatch):
    micro = toy_images(2)
    accumulated, big = (toy_trainer(demo_root, tmp_path / name, monkeypatch.setattr) for name in ("micro", "whole"))
    start = {k: v.clone() for k, v in accumulated.nets["student"].state_dict().items()}
    assert all(torch.equal(v, big.nets["student"].state_dict()[k]) for k, v in start.items())  # same seed, same init
    record_micro, record_whole = accumulated.train_step(micro), big.train_step(joined(micro))

    # Each weight's gradient sums one term per output pixel: 2 images x 12 x 12.
    checked = 0
    for (name, a), b in zip(accumulated.nets["student"].named_parameters(), big.nets["student"].parameters()):
        assert a.grad is not None and b.grad is not None, name
        tolerance = float32_sum_tolerance(b.grad, terms=2 * 12 * 12)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=tolerance, msg=name)
        # the step itself: both moved the weights by -lr x their gradient
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=tolerance * record_whole["lr"] + 1e-7,
                                   msg=name)
        checked += float(b.grad.abs().max()) > 0
    assert checked == 4  # both convolutions' weights and biases had a gradient to compare
    # the logged values of the accumulated step are the means over its micro-batches: those of the big batch
    for key in ("loss", "sup", "unsup", "grad_norm"):
        assert record_micro[key] == pytest.approx(record_whole[key], rel=1e-5), key
    assert record_micro["lr"] == record_whole["lr"]


@pytest.mark.slow
def test_under_ddp_two_processes_of_two_micro_batches_give_the_gradient_of_the_four_images(demo_root, tmp_path,
                                                                                          monkeypatch):
    """torchrun, 2 gloo processes, each 2 micro-batches of one image (tests/accumulate_ddp_worker.py): every
    process ends the step with the gradient of the 4 images in one batch, and the gradients were all-reduced
    once per optimiser step (the first micro-batch under ``no_sync``)."""
    worker = Path(__file__).with_name("accumulate_ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
               str(demo_root), str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{rank}.pt") for rank in (0, 1)]
    # one all-reduce round (the hook runs once per gradient bucket) for two micro-batches, as for one batch
    assert ranks[0]["allreduce_calls_accumulated"] == ranks[0]["allreduce_calls_one_batch"] > 0

    big = toy_trainer(demo_root, tmp_path / "one", monkeypatch.setattr)
    big.train_step(joined(toy_images(4)))
    for name, parameter in big.nets["student"].named_parameters():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], parameter.grad, rtol=0,
                                       atol=float32_sum_tolerance(parameter.grad, terms=4 * 12 * 12), msg=name)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name  # all-reduced: the same bits


def test_a_step_logs_each_value_averaged_over_the_micro_batches_that_report_it():
    values = [{"contrast_weight": 0.5, "loss": torch.tensor(1.0), "prcl_anchors": torch.tensor(16),
               "pseudo_label_accuracy_above_un_threshold": None},
              {"contrast_weight": 0.5, "loss": torch.tensor(3.0),
               "pseudo_label_accuracy_above_un_threshold": 0.25}]
    record = _mean_record(values, torch.device("cpu"))
    assert record == {"contrast_weight": 0.5, "loss": 2.0, "prcl_anchors": 16.0,
                      "pseudo_label_accuracy_above_un_threshold": 0.25}
    assert _mean_record([{"loss": torch.tensor(2.0), "above": None}], torch.device("cpu")) == {"loss": 2.0,
                                                                                            "above": None}


def test_one_step_of_two_micro_batches_sees_the_images_of_one_batch_twice_as_large(demo_root, tmp_path):
    """The micro-batches of step s are loader steps s x N ... s x N + N - 1: the images (and augmentations) of
    step s with an N times larger batch, so a run that keeps the global batch this way keeps its data too."""
    images = {}
    for name, batch, accumulate in (("big", 4, 1), ("micro", 2, 2)):
        trainer = Trainer(tiny_config(demo_root, tmp_path / name, **{
            "data.batch_size": batch, "data.unlabeled_batch_size": batch, "train.accumulate": accumulate}))
        trainer.step = 3
        batches = trainer._next_batches(*trainer._loaders())
        assert len(batches) == accumulate
        images[name] = [torch.cat([pair[part]["image"] for pair in batches]) for part in (0, 1)]
    for big, micro in zip(images["big"], images["micro"]):
        assert big.shape[0] == 4 and torch.equal(big, micro)


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_micro_batches_on_fewer_gpus_are_the_eight_gpu_processes_batches(gpus):
    """docs/datasets.md, "Fewer GPUs": micro-batch m of step s on rank r of G GPUs (loader step s x N + m, N = 8 / G)
    draws the images and augmentation seeds of rank G x m + r of step s on 8 GPUs."""
    from itertools import islice

    from prcl.engine.sampling import StepBatchSampler

    accumulate, step = 8 // gpus, 5
    eight = [next(iter(StepBatchSampler(100, 2, seed=3, start_step=step, rank=r, world_size=8))) for r in range(8)]
    for rank in range(gpus):
        stream = StepBatchSampler(100, 2, seed=3, start_step=step * accumulate, rank=rank, world_size=gpus)
        for micro, batch in enumerate(islice(iter(stream), accumulate)):
            assert batch == eight[gpus * micro + rank]


@pytest.mark.slow
def test_a_run_with_accumulation_resumes_exactly(demo_root, tmp_path, monkeypatch):
    """Bit for bit (train.deterministic): 4 steps of 2 micro-batches in one go equal 2 steps, a crash in the second
    micro-batch of step 3 (its first one's gradient already summed), and a resume from the step-2 checkpoint."""
    settings = {"train.deterministic": "true", "train.accumulate": 2, "data.batch_size": 2,
                "data.unlabeled_batch_size": 2}
    Trainer(tiny_config(demo_root, tmp_path / "straight", iterations=4, **settings)).fit()
    interrupted = Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=4, **settings))
    real_step, calls = interrupted.method.train_step, []

    def crash_in_step_three(nets, batch):
        calls.append(batch.step)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(nets, batch)

    monkeypatch.setattr(interrupted.method, "train_step", crash_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert calls == [0, 0, 1, 1, 2, 2]  # the method runs once per micro-batch, told the optimiser step
    resumed = Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=4, **settings), resume="auto")
    assert resumed.step == 2
    resumed.fit()
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    records = [json.loads(line) for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]  # one line per optimiser step


@pytest.mark.slow
def test_a_non_finite_micro_batch_skips_its_whole_optimiser_step(demo_root, tmp_path, monkeypatch):
    """Skipping and ``train.max_nonfinite_steps`` count optimiser steps: step 2 is skipped for its first
    micro-batch, steps 4 and 5 for their second (after the first was summed), and two in a row stop the run."""
    cfg = tiny_config(demo_root, tmp_path / "run", method="supervised", iterations=6,
                      **{"train.accumulate": 2, "data.batch_size": 2, "train.max_nonfinite_steps": 2})
    trainer = Trainer(cfg)
    real_step, calls, weights_at = trainer.method.train_step, [], {}

    def flaky(nets, batch):
        first = not calls or calls[-1] != batch.step
        calls.append(batch.step)
        if first:
            weights_at[batch.step] = {k: v.detach().clone() for k, v in nets["student"].named_parameters()}
        losses = real_step(nets, batch)
        if (batch.step == 1 and first) or (batch.step >= 3 and not first):
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.method, "train_step", flaky)
    with pytest.raises(TrainingDiverged, match="2 non-finite losses in a row at step 5"):
        trainer.fit()
    assert calls == [0, 0, 1, 2, 2, 3, 3, 4, 4]  # a non-finite micro-batch ends its step: step 2's second is not run
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "skipped"] == [2, 4, 5]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 3]
    # a skipped step changes no weight, though half of its gradient had been summed (BatchNorm's running
    # statistics, not compared, move in every forward pass)
    for key, value in weights_at[3].items():
        assert torch.equal(weights_at[4][key], value), key
    assert any(not torch.equal(weights_at[3][k], v) for k, v in weights_at[2].items())  # step 3 trained
