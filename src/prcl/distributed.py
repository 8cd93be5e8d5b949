"""One code path for one process and many: helpers that are no-ops without a process group."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from prcl.errors import UserError

T = TypeVar("T")


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

    resolved = resolve_device(device)  # a GPU that is not there: one clear line, before any work
    wants_cuda = resolved.type == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        _init_process_group("nccl" if wants_cuda else "gloo")
    if wants_cuda:
        if is_distributed():
            index = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            index = resolved.index or 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def restart_count() -> int:
    """How often torchrun (``--max-restarts``) has started this process again after a failure; 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _init_process_group(backend: str) -> None:
    """Join torchrun's process group; after a restart, under a key prefix of that attempt.

    torchrun's agent keeps its key-value store across ``--max-restarts``: the addresses the failed
    attempt's processes published are still there, and a restarted process could read a dead peer's
    address before the new peer replaces it (gloo: "connectFullMesh failed ... Connection refused").
    A prefix per attempt keeps each attempt's keys apart.
    """
    restarts = restart_count()
    if restarts == 0:
        dist.init_process_group(backend)
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0 and not agent_hosts_store, timeout=timedelta(minutes=30))
    dist.init_process_group(backend, store=dist.PrefixStore(f"prcl/attempt-{restarts}", store), rank=rank,
                            world_size=size)


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


def in_turn(work: Callable[[], T]) -> T:
    """``work()`` on the first process, then on the first process of each other machine, then on the rest:
    a download into a cache runs once, and the later turns find the file (a cache on a disk of each machine
    is filled once per machine). Each turn ends when all processes agree that no UserError was raised in
    it; after one, every process raises (the others with a line pointing to it) instead of waiting.
    Without a process group: just ``work()``."""
    if not is_distributed():
        return work()
    turn = 0 if rank() == 0 else 1 if int(os.environ.get("LOCAL_RANK", "0")) == 0 else 2
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    result, error = None, None
    for current in range(3):
        if current == turn:
            try:
                result = work()
            except UserError as raised:
                error = raised
        if not all_true(error is None, device):
            raise error or UserError("stopped because another process failed (its message says why)")
    return result


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
