"""What every method shares: the interface the trainer runs, the step's input, and small loss pieces.

A method owns its whole step (docs/method.md, "The training step"): which networks it needs and how
they are built, its optimiser groups, its losses, weights and schedules, its state carried across
steps, and its update after the optimiser step (the EMA teacher). The trainer knows none of this:
it moves the networks to the device, wraps the trained ones for data parallelism, steps the
optimiser and runs :meth:`Method.train_step` / :meth:`Method.after_step`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from prcl.constants import IGNORE_INDEX
from prcl.models import unwrap_model

if TYPE_CHECKING:
    from prcl.config import Config

# Named networks of a method: "student" always; "teacher", "probability_head" where the method has them.
# The trainer may wrap trained ones in DistributedDataParallel; use ``unwrap_model`` to reach the module.
Networks = dict[str, nn.Module]


@dataclass
class StepInput:
    """One step's data on the device.

    labeled_images: (Bl, 3, H, W) float, normalised; labels: (Bl, H, W) int64, -1 = ignore.
    unlabeled_images: (Bu, 3, H, W), or None for a method without unlabeled data.
    step: 0-based index of this optimiser step (the schedules read it); with ``train.accumulate`` the
      same for each of the step's micro-batches.
    generator: torch.Generator on the device for the method's own sampling.
    probe: this step is logged; a method may add diagnostics that cost extra work.
    unlabeled_masks: (Bu, H, W) int64 ground truth of the unlabeled images, -1 = ignore, given at
      probe steps only (None otherwise) and where the data has it (the demo, VOC): never trained
      on, read only by the probe.
    """

    labeled_images: torch.Tensor
    labels: torch.Tensor
    unlabeled_images: torch.Tensor | None
    step: int
    generator: torch.Generator | None = None
    probe: bool = False
    unlabeled_masks: torch.Tensor | None = None


@dataclass
class PseudoLabelPictures:
    """What a method's pseudo-labels look like on a few unlabeled images, for TensorBoard's pictures.

    strong_images: (N, 3, H, W) float, normalised: the strong view the student is trained on.
    pseudo_labels: (N, H, W) int64, the teacher's class per pixel moved into the strong view; -1 where
      there is none (the rescale's padding, a CutOut box): the pixels the pseudo-label loss ignores.
    confidence: (N, H, W) float in [0, 1]: the teacher's confidence q, moved (and quantised) alike.
    thresholds: the confidence thresholds the losses compare q with, by name (e.g. ``un_threshold``).
    variance: (N, H, W) float, the probability head's variance (mean over the representation's
      dimensions) on the strong view, upsampled (nearest) from stride 4; None for a method without one.
    """

    strong_images: torch.Tensor
    pseudo_labels: torch.Tensor
    confidence: torch.Tensor
    thresholds: dict[str, float]
    variance: torch.Tensor | None = None


class Method:
    """A training method, run by the generic trainer through these methods.

    ``train_step`` returns named values for one batch: ``loss`` is the total to minimise (with its
    graph), the others (detached tensors, floats or None) are logged. With ``train.accumulate: N``
    the trainer calls it N times per optimiser step, once per micro-batch, divides each loss by N
    and logs each value's mean; whatever the step updates as it runs (BatchNorm statistics, PRCL's
    global prototypes) is then updated per micro-batch. ``after_step`` runs once per optimiser step.
    """

    name = "base"
    uses_unlabeled = False  # the trainer loads unlabeled batches only for methods that read them
    uses_representation = False  # whether any loss reads the student's representation head (mu)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def build_networks(self, student: nn.Module) -> Networks:
        """Every network of the method by name, built around the freshly initialised student.

        The student's representation head is frozen when no loss reads it, so that each trained
        parameter receives a gradient at every step (data parallelism then needs no search for
        unused parameters).
        """
        if not self.uses_representation:
            student.representation.requires_grad_(False)
        return {"student": student}

    def optimizer_groups(self, nets: Networks) -> list[dict]:
        """SGD parameter groups, each ``{"name", "params", "lr"}``; the lr is the base of the poly schedule."""
        return [{"name": "student", "lr": self.cfg.optim.lr,
                 "params": [p for p in nets["student"].parameters() if p.requires_grad]}]

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    def after_step(self, nets: Networks, step: int) -> None:
        """Called after the optimiser updated the weights at ``step`` (0-based); nothing by default."""

    def eval_network(self, nets: Networks) -> nn.Module:
        """The network that is evaluated, saved for inference and exported: the student by default."""
        return unwrap_model(nets["student"])

    def pseudo_label_pictures(self, nets: Networks, images: torch.Tensor,
                              generator: torch.Generator) -> PseudoLabelPictures | None:
        """The pseudo-labels this method would train on for ``images`` (N, 3, H, W), normalised, on the
        device; random draws from ``generator`` only. None (the default) for a method without pseudo-labels.
        Called outside training: it must change no network, buffer or random state of the run."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State the method carries across steps besides its networks (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, *size), bilinear with align_corners=True like the release."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of stride-4 ``logits`` (N, C, h, w) upsampled to ``labels`` (N, H, W), ignore -1."""
    return F.cross_entropy(upsample(logits, labels.shape[-2:]).float(), labels, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def teacher_pseudo_labels(teacher: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels y^ (N, H, W) int64 and confidences q (N, H, W) from the teacher's softmax.

    images: (N, 3, H, W); the teacher's logits are upsampled to (H, W) before the softmax. The
    teacher runs in whatever mode the caller set.
    """
    logits = teacher(images, representation=False).logits  # no loss reads the teacher's mu
    probabilities = torch.softmax(upsample(logits, images.shape[-2:]).float(), dim=1)
    confidence, pseudo_labels = probabilities.max(dim=1)
    return pseudo_labels, confidence


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """The modules in eval mode (BatchNorm reads its running statistics and updates nothing), each put
    back in the mode it had afterwards."""
    modes = [(module, module.training) for module in modules]
    try:
        for module, _ in modes:
            module.eval()
        yield
    finally:
        for module, training in modes:
            module.train(training)


def nearest_resize(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) map (labels or confidences) -> (N, *size), nearest, like the release."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)
