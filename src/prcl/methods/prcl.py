"""PRCL: the mean teacher plus the probabilistic representation contrast (docs/method.md).

Everything here is what PRCL adds to :class:`MeanTeacher`: the probability head and its optimiser
group, the contrast on the representation means and variances, its weight lambda and the contrast's
state carried across steps (global prototypes).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from prcl.losses import ContrastOptions, PRCLLoss
from prcl.models import ProbabilityHead, unwrap_model
from prcl.models.deeplab import FEATURE_CHANNELS, REPRESENTATION_DIM
from prcl.schedules import contrast_weight

from .base import Networks, StepInput, nearest_resize
from .mean_teacher import MeanTeacher, pseudo_label_probe

if TYPE_CHECKING:
    from prcl.config import Config


class PRCL(MeanTeacher):
    name = "prcl"
    uses_representation = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.weak_threshold = cfg.method.weak_threshold
        # What the method hands the contrast: the head's variances times variance_scale, or, with
        # deterministic, no head and every variance 0.5 x variance_scale.
        self.variance_scale = cfg.prcl.variance_scale
        self.deterministic = cfg.prcl.deterministic
        self.contrast = PRCLLoss(contrast_options(cfg), num_classes=cfg.data.num_classes, dim=REPRESENTATION_DIM)

    def build_networks(self, student: nn.Module) -> Networks:
        nets = super().build_networks(student)
        if not self.deterministic:  # the probability head reads the student's 304-channel feature F
            nets["probability_head"] = ProbabilityHead(FEATURE_CHANNELS, REPRESENTATION_DIM)
        return nets

    def optimizer_groups(self, nets: Networks) -> list[dict]:
        groups = super().optimizer_groups(nets)
        if "probability_head" in nets:
            groups.append({"name": "probability_head", "lr": self.cfg.optim.uncer_lr,
                           "params": list(nets["probability_head"].parameters())})
        return groups

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor | float]:
        outputs, strong_labels, strong_confidence, strong_truth = self.student_pass(nets, batch)
        logits, sup, unsup = self.label_losses(outputs, batch, strong_labels, strong_confidence)
        mu = torch.cat([out.mu for out in outputs])
        num_labeled = batch.labeled_images.shape[0]

        if self.deterministic:
            head_var = None
            var = torch.full_like(mu, 0.5 * self.variance_scale, dtype=torch.float32)
        else:
            # One call on both passes' features, as the release: the head's BatchNorm normalises the
            # labeled and strong-view pixels together, whatever the student's passes were.
            features = torch.cat([out.features for out in outputs]) if len(outputs) > 1 else outputs[0].features
            head_var = nets["probability_head"](features)
            var = head_var * self.variance_scale if self.variance_scale != 1.0 else head_var

        # Contrast on the stride-4 maps of labeled and unlabeled images together: labeled pixels
        # with a label, unlabeled pixels whose pseudo-label's confidence reaches the weak threshold.
        size = mu.shape[-2:]
        labels = nearest_resize(torch.cat([batch.labels, strong_labels]), size)
        confidence = nearest_resize(strong_confidence, size)
        valid = contrast_mask(labels, confidence, self.weak_threshold)
        prob = torch.softmax(logits.detach().float(), dim=1)
        if batch.probe:
            contrast, details = self.contrast(mu, var, labels, valid, prob, generator=batch.generator,
                                              return_details=True)
        else:
            contrast, details = self.contrast(mu, var, labels, valid, prob, generator=batch.generator), {}

        weight = contrast_weight(batch.step, self.cfg)
        loss = sup + unsup + weight * contrast
        losses = {"loss": loss, "sup": sup.detach(), "unsup": unsup.detach(), "prcl": contrast.detach(),
                  "contrast_weight": weight}
        if head_var is not None:
            losses["variance"] = head_var.detach().mean()
        if batch.probe:
            losses["unlabeled_above_un_threshold"] = (strong_confidence >= self.un_threshold).float().mean()
            losses["unlabeled_above_weak_threshold"] = valid[num_labeled:].float().mean()
            losses.update({f"prcl_{key}": value for key, value in details.items() if key != "variance_gap_loss"})
            losses.update(self._probes(sup, contrast, weight, details, [out.features for out in outputs]))
            if strong_truth is not None:
                unlabeled_var = head_var[num_labeled:].detach() if head_var is not None else None
                losses.update(pseudo_label_probe(strong_labels, strong_confidence, strong_truth, self.thresholds(),
                                                 unlabeled_var))
        return losses

    def thresholds(self) -> dict[str, float]:
        return {"un_threshold": self.un_threshold, "weak_threshold": self.weak_threshold}

    def strong_view_variance(self, nets: Networks, strong_images: torch.Tensor) -> torch.Tensor | None:
        """(N, H, W): the head's variance (N, D, h, w) on the student's features of the strong view, averaged
        over the D dimensions and upsampled (nearest) to the image; None with ``prcl.deterministic`` (no head).
        The networks run in the caller's mode."""
        if "probability_head" not in nets:
            return None
        features = unwrap_model(nets["student"])(strong_images, representation=False).features
        variance = unwrap_model(nets["probability_head"])(features).float().mean(dim=1)
        return nearest_resize(variance, strong_images.shape[-2:])

    @staticmethod
    def _probes(sup: torch.Tensor, contrast: torch.Tensor, weight: float, details: dict[str, torch.Tensor],
                features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Is the contrast alive? Two numbers, at logged steps only.

        ``prcl_gap_share``: the loss of the same sample with every mean made equal, over the loss:
        near 1, the variances alone decide the InfoNCE and the means hardly matter.
        ``prcl_grad_ratio``: |d(lambda L_prcl)/dF| / |d L_sup/dF| on the shared 304-channel feature F
        (both passes): how strongly the contrast pulls on what the classifier reads.
        """
        probes = {}
        if "variance_gap_loss" in details:
            value = contrast.detach()
            gap = details["variance_gap_loss"]
            probes["prcl_gap_share"] = torch.where(value > 0, gap / value.clamp_min(1e-12), torch.zeros_like(gap))

        def norm(loss: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
            return torch.sqrt(sum((g.float().square().sum() for g in grads if g is not None), torch.zeros(())))

        if torch.is_grad_enabled() and sup.requires_grad and contrast.requires_grad:
            probes["prcl_grad_ratio"] = weight * norm(contrast) / norm(sup).clamp_min(1e-12)
        return probes

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The global prototypes' statistics when GDP is on (saved in checkpoints)."""
        return self.contrast.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.contrast.load_state_dict(state)


def contrast_options(cfg: Config) -> ContrastOptions:
    """The contrast's options: each field from the ``cfg.prcl`` key of its name, ``strong_threshold``
    from ``cfg.method``; with ``prcl.deterministic``, prototype variance "mean".
    """
    options = ContrastOptions(strong_threshold=cfg.method.strong_threshold,
                              **{field.name: getattr(cfg.prcl, field.name) for field in fields(ContrastOptions)
                                 if field.name != "strong_threshold"})
    if cfg.prcl.deterministic:  # a point contrast: every variance equal, and the prototypes keep it
        options = replace(options, prototype_variance="mean")
    return options


def contrast_mask(labels: torch.Tensor, confidence: torch.Tensor, weak_threshold: float) -> torch.Tensor:
    """Which pixels the contrast may use: (N, h, w) bool.

    labels: (N, h, w) int64, the Bl labeled images first, then the Bu strong views (-1 = ignore);
    confidence: (Bu, h, w) the strong views' pseudo-label confidences. A labeled pixel is valid
    when it has a label; an unlabeled one when it has a pseudo-label (not cut out by the mix) whose
    confidence reaches ``weak_threshold``.
    """
    valid = labels >= 0
    num_labeled = labels.shape[0] - confidence.shape[0]
    valid[num_labeled:] &= confidence >= weak_threshold
    return valid
