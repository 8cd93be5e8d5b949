"""Mean teacher: an exponential moving average of the student's parameters (docs/method.md).

Only parameters are averaged; buffers (BN running statistics) are not: the teacher keeps its own,
updated by its own forward passes in train mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the student with requires_grad False on every parameter."""
    teacher = copy.deepcopy(unwrap_model(student))
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def ema_decay(step: int, alpha: float = 0.99) -> float:
    """decay = min(1 - 1/(step + 1), alpha): 0 at step 0, 0.5 at step 1, alpha from step 1/(1-alpha) - 1."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, alpha: float = 0.99) -> float:
    """teacher_param <- d * teacher_param + (1 - d) * student_param, d = ema_decay(step, alpha).

    Buffers are left alone. Returns the decay used.
    """
    decay = ema_decay(step, alpha)
    teacher_params = list(unwrap_model(teacher).named_parameters())
    student_params = list(unwrap_model(student).named_parameters())
    if [n for n, _ in teacher_params] != [n for n, _ in student_params]:
        raise ValueError("teacher and student have different parameters; build the teacher with make_teacher")
    for (_, t), (_, s) in zip(teacher_params, student_params):
        t.lerp_(s.detach(), 1.0 - decay)
    return decay
