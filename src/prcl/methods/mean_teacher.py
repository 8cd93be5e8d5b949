"""Mean teacher with confidence-weighted pseudo-labels on a strong view (PRCL minus the contrast)."""

from __future__ import annotations

import torch

from prcl.config import Config
from prcl.data.strong_view import StrongView
from prcl.losses import pseudo_label_loss

from .base import Method, Networks, StepInput, supervised_loss, teacher_pseudo_labels


class MeanTeacher(Method):
    name = "mean_teacher"
    uses_teacher = True
    uses_unlabeled = True

    def __init__(self, cfg: Config) -> None:
        self.un_threshold = cfg.method.un_threshold
        self.strong_view = StrongView(scale_range=tuple(cfg.method.strong_scale_range), mix=cfg.method.mix,
                                      num_classes=cfg.data.num_classes)

    def student_pass(self, nets: Networks, batch: StepInput):
        """Teacher pseudo-labels, the strong view, and one student pass over labeled + strong images.

        Returns (student output on the concatenated batch, strong-view labels (Bu, H, W), their
        confidences (Bu, H, W)).
        """
        pseudo_labels, confidence = teacher_pseudo_labels(nets.teacher, batch.unlabeled_images)
        strong_images, strong_labels, strong_confidence = self.strong_view(
            batch.unlabeled_images, pseudo_labels, confidence, generator=batch.generator)
        out = nets.student(torch.cat([batch.labeled_images, strong_images]))
        return out, strong_labels, strong_confidence

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        out, strong_labels, strong_confidence = self.student_pass(nets, batch)
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(out.logits[:num_labeled], batch.labels)
        unsup = pseudo_label_loss(out.logits[num_labeled:], strong_labels, strong_confidence, self.un_threshold)
        return {"loss": sup + unsup, "sup": sup.detach(), "unsup": unsup.detach()}
