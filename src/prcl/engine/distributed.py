"""One code path for one process and many: helpers that are no-ops without a process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device.

    ``device`` is the config's ``train.device``: auto | cpu | cuda | cuda:N.
    """
    from prcl.devices import resolve_device

    wants_cuda = resolve_device(device).type == "cuda"  # a GPU that is not there: one clear line, before any work
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        dist.init_process_group("nccl" if wants_cuda else "gloo")
    if wants_cuda:
        if is_distributed():
            index = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            index = int(device.split(":")[1]) if ":" in device else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
