"""Mean teacher with confidence-weighted pseudo-labels on a strong view (PRCL minus the contrast)."""

from __future__ import annotations

import torch

from prcl.config import Config
from prcl.data.strong_view import StrongView
from prcl.losses import pseudo_label_loss
from prcl.models.deeplab import SegmenterOutput

from .base import Method, Networks, StepInput, supervised_loss, teacher_pseudo_labels


class MeanTeacher(Method):
    name = "mean_teacher"
    uses_teacher = True
    uses_unlabeled = True

    def __init__(self, cfg: Config) -> None:
        self.un_threshold = cfg.method.un_threshold
        self.student_passes = cfg.method.student_passes
        self.strong_view = StrongView(scale_range=tuple(cfg.method.strong_scale_range), mix=cfg.method.mix,
                                      num_classes=cfg.data.num_classes)

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
        pseudo_labels, confidence = teacher_pseudo_labels(nets.teacher, batch.unlabeled_images)
        strong_images, strong_labels, strong_confidence = self.strong_view(
            batch.unlabeled_images, pseudo_labels, confidence, generator=batch.generator)
        if self.student_passes == "separate":
            outputs = [nets.student(batch.labeled_images), nets.student(strong_images)]
        else:
            outputs = [nets.student(torch.cat([batch.labeled_images, strong_images]))]
        return outputs, strong_labels, strong_confidence

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        outputs, strong_labels, strong_confidence = self.student_pass(nets, batch)
        logits = torch.cat([out.logits for out in outputs])
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(logits[:num_labeled], batch.labels)
        unsup = pseudo_label_loss(logits[num_labeled:], strong_labels, strong_confidence, self.un_threshold)
        return {"loss": sup + unsup, "sup": sup.detach(), "unsup": unsup.detach()}
