"""Mean teacher with confidence-weighted pseudo-labels on a strong view (PRCL minus the contrast)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from prcl.data.strong_view import StrongView
from prcl.losses import pseudo_label_loss
from prcl.metrics import error_auroc
from prcl.models import ema_update, make_teacher, unwrap_model
from prcl.models.deeplab import SegmenterOutput

from .base import (Method, Networks, PseudoLabelPictures, StepInput, eval_mode, nearest_resize, supervised_loss,
                   teacher_pseudo_labels)

if TYPE_CHECKING:
    from prcl.config import Config


class StudentPass(NamedTuple):
    """The student's outputs (one per pass, labeled images first), the strong view's pseudo-labels
    and confidences (Bu, H, W), and, at probe steps with unlabeled masks, their ground truth moved
    and mixed alike (Bu, H, W), else None."""

    outputs: list[SegmenterOutput]
    strong_labels: torch.Tensor
    strong_confidence: torch.Tensor
    strong_truth: torch.Tensor | None = None


@torch.no_grad()
def pseudo_label_probe(strong_labels: torch.Tensor, strong_confidence: torch.Tensor, truth: torch.Tensor,
                       thresholds: dict[str, float], variance: torch.Tensor | None = None) -> dict[str, float]:
    """Are the strong view's pseudo-labels right, and does their uncertainty say when they are not?

    At stride 4 (the variance's resolution), over the pixels with a pseudo-label and a ground truth:
    ``pseudo_label_accuracy``, the accuracy above each named confidence threshold
    (``pseudo_label_accuracy_above_<name>``, None when no pixel reaches it), and the AUROC for
    "this pseudo-label is wrong" of ``1 - q`` (``pseudo_label_auroc_confidence``) and, for PRCL, of
    the probability head's mean variance (``pseudo_label_auroc_variance``; variance (Bu, D, h, w)).
    """
    size = variance.shape[-2:] if variance is not None else strong_labels.shape[-2:]
    labels, truth = nearest_resize(strong_labels, size), nearest_resize(truth, size)
    confidence = nearest_resize(strong_confidence, size)
    scored = (labels >= 0) & (truth >= 0)
    if not scored.any():
        return {}
    wrong = (labels != truth)[scored]
    confidence = confidence[scored]
    probes: dict[str, float | None] = {"pseudo_label_accuracy": 1.0 - float(wrong.float().mean())}
    for name, threshold in thresholds.items():
        above = confidence >= threshold
        probes[f"pseudo_label_accuracy_above_{name}"] = 1.0 - float(wrong[above].float().mean()) if above.any() else None
    probes["pseudo_label_auroc_confidence"] = error_auroc(1.0 - confidence, wrong)
    if variance is not None:
        probes["pseudo_label_auroc_variance"] = error_auroc(variance.float().mean(dim=1)[scored], wrong)
    return probes


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

    def student_pass(self, nets: Networks, batch: StepInput) -> StudentPass:
        """Teacher pseudo-labels, the strong view, and the student on labeled + strong images.

        ``method.student_passes = separate`` (the release): one forward pass on the labeled
        batch, then one on the strong view, so BatchNorm takes batch statistics over each batch
        alone and updates its running statistics twice per step. ``joint``: one pass over both
        batches concatenated.

        At probe steps with unlabeled masks, those masks go through the strong view's geometry and
        mixing too (``StudentPass.strong_truth``); the random draws are the same either way.
        """
        teacher = nets["teacher"].train()  # as the release: the teacher's BatchNorm uses batch statistics
        pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
        truth = batch.unlabeled_masks  # given at probe steps only
        strong_images, strong_labels, strong_confidence, *strong_truth = self.strong_view(
            batch.unlabeled_images, pseudo_labels, confidence, generator=batch.generator, true_labels=truth)
        student = functools.partial(nets["student"], representation=self.uses_representation)
        if self.student_passes == "separate":
            outputs = [student(batch.labeled_images), student(strong_images)]
        else:
            outputs = [student(torch.cat([batch.labeled_images, strong_images]))]
        return StudentPass(outputs, strong_labels, strong_confidence, strong_truth[0] if strong_truth else None)

    def thresholds(self) -> dict[str, float]:
        """The confidence thresholds the probe reports pseudo-label accuracy above."""
        return {"un_threshold": self.un_threshold}

    def label_losses(self, outputs: list[SegmenterOutput], batch: StepInput, strong_labels: torch.Tensor,
                     strong_confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (Bl + Bu, C, h, w) of both passes, supervised loss, pseudo-label loss), losses with graph."""
        logits = torch.cat([out.logits for out in outputs])
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(logits[:num_labeled], batch.labels)
        unsup = pseudo_label_loss(logits[num_labeled:], strong_labels, strong_confidence, self.un_threshold)
        return logits, sup, unsup

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        outputs, strong_labels, strong_confidence, strong_truth = self.student_pass(nets, batch)
        _, sup, unsup = self.label_losses(outputs, batch, strong_labels, strong_confidence)
        losses = {"loss": sup + unsup, "sup": sup.detach(), "unsup": unsup.detach()}
        if batch.probe:
            losses["unlabeled_above_un_threshold"] = (strong_confidence >= self.un_threshold).float().mean()
            if strong_truth is not None:
                losses.update(pseudo_label_probe(strong_labels, strong_confidence, strong_truth, self.thresholds()))
        return losses

    @torch.no_grad()
    def pseudo_label_pictures(self, nets: Networks, images: torch.Tensor,
                              generator: torch.Generator) -> PseudoLabelPictures:
        """The teacher's pseudo-labels and confidences on ``images`` (N, 3, H, W), the weak view, moved into
        a strong view drawn from ``generator`` as in training (rescale, crop, mix among these N images,
        colour, blur, flip). Every network runs in eval mode (BatchNorm's running statistics, as
        evaluation runs the teacher; training's teacher uses the batch's statistics, so its
        pseudo-labels can differ a little) and nothing of the run changes."""
        with eval_mode(*nets.values()):
            pseudo_labels, confidence = teacher_pseudo_labels(unwrap_model(nets["teacher"]), images)
            strong_images, strong_labels, strong_confidence = self.strong_view(images, pseudo_labels, confidence,
                                                                               generator=generator)
            variance = self.strong_view_variance(nets, strong_images)
        return PseudoLabelPictures(strong_images, strong_labels, strong_confidence, self.thresholds(), variance)

    def strong_view_variance(self, nets: Networks, strong_images: torch.Tensor) -> torch.Tensor | None:
        """(N, H, W) the probability head's mean variance on the strong view, for the pictures; the mean
        teacher has no head: None."""
        return None

    def after_step(self, nets: Networks, step: int) -> None:
        ema_update(nets["teacher"], nets["student"], step, self.cfg.method.ema_alpha)

    def eval_network(self, nets: Networks) -> nn.Module:
        """The teacher, as in the release."""
        return nets["teacher"]
