"""What every method shares: the networks it trains and the pieces of a step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Networks:
    """The trained networks. ``student``/``probability_head`` may be DDP-wrapped; the teacher never is."""

    student: nn.Module
    teacher: nn.Module | None = None
    probability_head: nn.Module | None = None


@dataclass
class StepInput:
    """One step's data on the device.

    labeled_images: (Bl, 3, H, W) float, normalised; labels: (Bl, H, W) int64, -1 = ignore.
    unlabeled_images: (Bu, 3, H, W) or None for methods without unlabeled data.
    progress: training progress in [0, 1] seen by the schedules; contrast_weight: lambda.
    generator: torch.Generator on the device for the method's own sampling.
    probe: this step is logged; a method may add diagnostics that cost extra work.
    """

    labeled_images: torch.Tensor
    labels: torch.Tensor
    unlabeled_images: torch.Tensor | None
    progress: float
    contrast_weight: float
    generator: torch.Generator | None = None
    probe: bool = False


class Method:
    """A training method: one ``train_step`` returning named losses, ``loss`` being the total."""

    name = "base"
    uses_teacher = False
    uses_unlabeled = False
    uses_probability_head = False

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State the method carries across steps (saved in checkpoints); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, *size), bilinear with align_corners=True like the reference."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of stride-4 ``logits`` (N, C, h, w) upsampled to ``labels`` (N, H, W), ignore -1."""
    return F.cross_entropy(upsample(logits, labels.shape[-2:]).float(), labels, ignore_index=-1)


@torch.no_grad()
def teacher_pseudo_labels(teacher: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels y^ (N, H, W) int64 and confidences q (N, H, W) from the teacher's softmax.

    The teacher runs in train mode, as in the reference: BN uses batch statistics.
    """
    teacher.train()
    probabilities = torch.softmax(upsample(teacher(images).logits, images.shape[-2:]).float(), dim=1)
    confidence, pseudo_labels = probabilities.max(dim=1)
    return pseudo_labels, confidence


def nearest_resize(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) map (labels or confidences) -> (N, *size), nearest, like the reference."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)
