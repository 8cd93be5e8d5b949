"""PRCL: mean teacher + probabilistic representation contrast (docs/method.md)."""

from __future__ import annotations

import torch

from prcl.config import Config
from prcl.losses import PRCLLoss, pseudo_label_loss

from .base import Networks, StepInput, nearest_resize, supervised_loss
from .mean_teacher import MeanTeacher


class PRCL(MeanTeacher):
    name = "prcl"
    uses_probability_head = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.weak_threshold = cfg.method.weak_threshold
        self.contrast = PRCLLoss(num_queries=cfg.prcl.num_queries, num_negatives=cfg.prcl.num_negatives,
                                 temperature=cfg.prcl.temperature, strong_threshold=cfg.method.strong_threshold,
                                 kernel=cfg.prcl.kernel)

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        outputs, strong_labels, strong_confidence = self.student_pass(nets, batch)
        logits = torch.cat([out.logits for out in outputs])
        mu = torch.cat([out.mu for out in outputs])
        # The probability head runs on each pass's feature F, so its BatchNorm sees the same batches.
        var = torch.cat([nets.probability_head(out.features) for out in outputs])
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(logits[:num_labeled], batch.labels)
        unsup = pseudo_label_loss(logits[num_labeled:], strong_labels, strong_confidence, self.un_threshold)

        # Contrast on the stride-4 maps of labeled and unlabeled images together.
        size = mu.shape[-2:]
        labels = nearest_resize(torch.cat([batch.labels, strong_labels]), size)
        confidence = nearest_resize(strong_confidence, size)
        valid = labels >= 0
        valid[num_labeled:] &= confidence >= self.weak_threshold
        prob = torch.softmax(logits.detach().float(), dim=1)
        contrast = self.contrast(mu, var, labels, valid, prob, generator=batch.generator)

        loss = sup + unsup + batch.contrast_weight * contrast
        return {"loss": loss, "sup": sup.detach(), "unsup": unsup.detach(), "prcl": contrast.detach(),
                "variance": var.detach().mean()}
