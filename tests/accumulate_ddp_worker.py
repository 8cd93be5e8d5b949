"""Run by tests/test_accumulate.py under torchrun (2 gloo processes): one accumulated step of the toy network.

Usage: torchrun --nproc-per-node 2 tests/accumulate_ddp_worker.py DEMO_ROOT OUT_DIR. Rank r trains on 2
micro-batches, images 2r and 2r + 1 of ``toy_images(4)``, and writes ``OUT_DIR/rank<r>.pt``: its gradients after
the step and how often DDP's all-reduce hook ran in that step and in a step of one batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from test_accumulate import toy_images, toy_trainer


def main(demo_root: str, out_dir: str) -> None:
    trainer = toy_trainer(Path(demo_root), Path(out_dir), setattr)
    rank, calls = dist.get_rank(), {"n": 0}

    def counting_allreduce(state, bucket):
        calls["n"] += 1
        return allreduce_hook(state, bucket)

    student = trainer.nets["student"]
    assert isinstance(student, torch.nn.parallel.DistributedDataParallel)
    student.register_comm_hook(None, counting_allreduce)
    images = toy_images(4)
    assert trainer.train_step(images[2 * rank:2 * rank + 2]) is not None
    grads = {name: p.grad.clone() for name, p in student.module.named_parameters()}
    accumulated = calls["n"]
    assert trainer.train_step(images[rank:rank + 1]) is not None
    torch.save({"grads": grads, "allreduce_calls_accumulated": accumulated,
                "allreduce_calls_one_batch": calls["n"] - accumulated}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
