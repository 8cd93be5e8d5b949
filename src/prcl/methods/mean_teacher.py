"""Mean teacher with confidence-weighted pseudo-labels on a strong view (PRCL minus the contrast)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from prcl.data.strong_view import StrongView
from prcl.losses import pseudo_label_loss
from prcl.models import ema_update, make_teacher
from prcl.models.deeplab import SegmenterOutput

from .base import Method, Networks, StepInput, supervised_loss, teacher_pseudo_labels

if TYPE_CHECKING:
    from prcl.config import Config


class MeanTeacher(Method):
    """Student trained on labels and on the teacher's pseudo-labels; teacher = EMA of the student."""

    name = "mean_teacher"
    uses_unlabeled = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.un_threshold = cfg.method.un_threshold
        self.student_passes = cfg.method.student_passes
        self.strong_view = StrongView(scale_range=tuple(cfg.method.strong_scale_range), mix=cfg.method.mix,
                                      image_padding=cfg.method.strong_padding,
                                      quantise_confidence=cfg.method.quantise_confidence,
                                      num_classes=cfg.data.num_classes)

    def build_networks(self, student: nn.Module) -> Networks:
        nets = super().build_networks(student)
        nets["teacher"] = make_teacher(student)  # a copy with requires_grad False: never optimised
        return nets

    def student_pass(
        self, nets: Networks, batch: StepInput
    ) -> tuple[list[SegmenterOutput], torch.Tensor, torch.Tensor]:
        """Teacher pseudo-labels, the strong view, and the student on labeled + strong images.

        ``method.student_passes = separate`` (the reference): one forward pass on the labeled
        batch, then one on the strong view, so BatchNorm takes batch statistics over each batch
        alone and updates its running statistics twice per step. ``joint``: one pass over both
        batches concatenated.

        Returns (the student outputs, one per pass, labeled images first; strong-view labels
        (Bu, H, W); their confidences (Bu, H, W)).
        """
        teacher = nets["teacher"].train()  # as the reference: the teacher's BatchNorm uses batch statistics
        pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
        strong_images, strong_labels, strong_confidence = self.strong_view(
            batch.unlabeled_images, pseudo_labels, confidence, generator=batch.generator)
        student = nets["student"]
        if self.student_passes == "separate":
            outputs = [student(batch.labeled_images), student(strong_images)]
        else:
            outputs = [student(torch.cat([batch.labeled_images, strong_images]))]
        return outputs, strong_labels, strong_confidence

    def label_losses(self, outputs: list[SegmenterOutput], batch: StepInput, strong_labels: torch.Tensor,
                     strong_confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (Bl + Bu, C, h, w) of both passes, supervised loss, pseudo-label loss), losses with graph."""
        logits = torch.cat([out.logits for out in outputs])
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(logits[:num_labeled], batch.labels)
        unsup = pseudo_label_loss(logits[num_labeled:], strong_labels, strong_confidence, self.un_threshold)
        return logits, sup, unsup

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        outputs, strong_labels, strong_confidence = self.student_pass(nets, batch)
        _, sup, unsup = self.label_losses(outputs, batch, strong_labels, strong_confidence)
        losses = {"loss": sup + unsup, "sup": sup.detach(), "unsup": unsup.detach()}
        if batch.probe:
            losses["unlabeled_above_un_threshold"] = (strong_confidence >= self.un_threshold).float().mean()
        return losses

    def after_step(self, nets: Networks, step: int) -> None:
        ema_update(nets["teacher"], nets["student"], step, self.cfg.method.ema_alpha)

    def eval_network(self, nets: Networks) -> nn.Module:
        """The teacher, as in the reference."""
        return nets["teacher"]
