"""The PRCL contrastive loss (docs/method.md), vectorised over anchors, negatives and classes.

Two steps, kept apart so each can be read and tested on its own:
- ``sample_contrast``: no gradient. Valid pixels, distribution prototypes, hard anchors and
  prototype-driven negatives, returned as indices into one key pool;
- ``PRCLLoss``: scores each anchor against its keys with the fused gather kernel and takes the
  InfoNCE with the prototype as the positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mls import mutual_likelihood_score
from .options import ContrastOptions
from .prototypes import GlobalPrototypes, class_statistics, prototypes_from_statistics
from .scores import KERNELS, gathered_mls


@dataclass
class ContrastSample:
    """What the loss compares, as indices. P valid pixels, A anchors, K = 1 + negatives per anchor.

    pixel_index: (batch, row, col) index tensors of the P valid pixels in the (N, H, W) maps.
    pixel_labels: (P,) class of each valid pixel.
    anchors: (A,) anchor positions in [0, P); anchor_classes: (A,) their classes.
    negatives: (A, K - 1) negative positions in [0, P).
    key_mu, key_var: (P + C, D) key pool, normalised means: the P valid pixels then the C prototypes.
    key_index: (A, K) rows of the pool; column 0 is the anchor's prototype (the positive).
    num_present: number of classes with at least one valid pixel.
    """

    pixel_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    pixel_labels: torch.Tensor
    anchors: torch.Tensor
    anchor_classes: torch.Tensor
    negatives: torch.Tensor
    key_mu: torch.Tensor
    key_var: torch.Tensor
    key_index: torch.Tensor
    num_present: int


def _uniform_pick(offsets: torch.Tensor, counts: torch.Tensor, groups: torch.Tensor,
                  generator: torch.Generator | None) -> torch.Tensor:
    """For each entry of ``groups``, a position drawn uniformly (with replacement) inside its group.

    Members of group g occupy positions ``offsets[g] .. offsets[g] + counts[g] - 1`` of a sorted list.
    Args: offsets, counts: (G,) int64; groups: any shape, int64 in [0, G), every used group non-empty.
    Returns: positions, same shape as ``groups``.
    """
    u = torch.rand(groups.shape, device=groups.device, generator=generator)
    count = counts[groups]
    return offsets[groups] + torch.minimum((u * count).long(), count - 1)


def _group_layout(groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets, counts), both (G,), of items already sorted by group."""
    counts = torch.bincount(groups, minlength=num_groups)
    return torch.cumsum(counts, 0) - counts, counts


@torch.no_grad()
def sample_contrast(mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                    prob: torch.Tensor, options: ContrastOptions = ContrastOptions(),
                    generator: torch.Generator | None = None, *,
                    global_prototypes: GlobalPrototypes | None = None) -> ContrastSample | None:
    """Draw anchors and negatives for the PRCL loss. Shapes as in ``PRCLLoss.forward``.

    ``options``: see :class:`ContrastOptions` (``kernel`` is not used here). ``global_prototypes``:
    the GDP state (``PRCLLoss`` holds it when ``options.global_prototypes``); when given, the batch
    statistics are fused into it and its prototypes serve as the positives and for the
    negative-class sampling; None: the batch's own prototypes.

    Returns None when fewer than two classes are present or no class has a hard pixel.
    Prototypes are all-reduced over ranks, so every rank must call this at the same step.
    """
    num_queries, num_negatives = options.num_queries, options.num_negatives
    num_classes = prob.shape[1]
    batch_idx, row_idx, col_idx = (valid & (labels >= 0)).nonzero(as_tuple=True)
    pixel_labels = labels[batch_idx, row_idx, col_idx]  # (P,)
    # Pixel-major views (N, H, W, D): indexing them gathers (P, D) rows without copying the maps.
    pixel_mu = mu.permute(0, 2, 3, 1)[batch_idx, row_idx, col_idx].float()
    pixel_var = var.permute(0, 2, 3, 1)[batch_idx, row_idx, col_idx].float()

    # Every rank takes part in the prototype all-reduce before any early exit.
    statistics = class_statistics(pixel_mu, pixel_var, pixel_labels, num_classes)
    if global_prototypes is not None:
        global_prototypes.update(*statistics)
        proto_mu, proto_var = global_prototypes.prototypes(options.prototype_variance)
        has_prototype = global_prototypes.seen()
    else:
        proto_mu, proto_var = prototypes_from_statistics(*statistics, variance=options.prototype_variance)
        has_prototype = statistics[2] > 0

    order = torch.argsort(pixel_labels, stable=True)  # valid pixels sorted by class
    offsets, counts = _group_layout(pixel_labels[order], num_classes)
    present = (counts > 0).nonzero().squeeze(1)  # (Cp,)
    num_present = present.numel()
    if num_present < 2:
        return None

    # Anchors: hard pixels (own-class probability below the strong threshold), uniform per class.
    own_prob = prob[batch_idx, pixel_labels, row_idx, col_idx]
    hard_order = order[own_prob[order] < options.strong_threshold]  # hard pixels, still sorted by class
    hard_offsets, hard_counts = _group_layout(pixel_labels[hard_order], num_classes)
    anchor_groups = (hard_counts > 0).nonzero().squeeze(1)  # (Ca,) classes that have anchors
    if anchor_groups.numel() == 0:
        return None
    anchor_classes = anchor_groups.repeat_interleave(num_queries)  # (A,)
    anchors = hard_order[_uniform_pick(hard_offsets, hard_counts, anchor_classes, generator)]

    # Negative classes: softmax over the other present classes of MLS(proto_c, proto_k) / T.
    present_mu, present_var = proto_mu[present], proto_var[present]
    proto_scores = mutual_likelihood_score(present_mu[:, None], present_var[:, None],
                                           present_mu[None], present_var[None]) / options.temperature
    proto_scores.fill_diagonal_(float("-inf"))
    slot = torch.full((num_classes,), -1, dtype=torch.long, device=mu.device)
    slot[present] = torch.arange(num_present, device=mu.device)
    group_prob = torch.softmax(proto_scores[slot[anchor_groups]], dim=1)  # (Ca, Cp)
    drawn = torch.multinomial(group_prob, num_queries * num_negatives, replacement=True, generator=generator)
    negative_classes = present[drawn].reshape(-1, num_negatives)  # (A, K - 1)
    negatives = order[_uniform_pick(offsets, counts, negative_classes, generator)]

    # Key pool: the valid pixels, then the prototypes (, then the virtual negatives); column 0 of
    # each row is the positive.
    key_mu = [F.normalize(pixel_mu, dim=1), F.normalize(proto_mu, dim=1)]
    key_var = [pixel_var, proto_var]
    key_index = [(pixel_labels.numel() + anchor_classes)[:, None], negatives]
    if options.virtual_negatives > 0:
        virtual_mu, virtual_var = _virtual_negatives(proto_mu, proto_var, has_prototype, anchor_classes,
                                                     options.virtual_negatives, options.vn_radius,
                                                     options.vn_variance, generator)
        first = pixel_labels.numel() + num_classes
        key_mu.append(F.normalize(virtual_mu.flatten(0, 1), dim=1))
        key_var.append(virtual_var.flatten(0, 1))
        per_anchor = virtual_mu.shape[1]
        key_index.append(first + torch.arange(anchors.numel() * per_anchor, device=mu.device).reshape(-1, per_anchor))
    return ContrastSample((batch_idx, row_idx, col_idx), pixel_labels, anchors, anchor_classes, negatives,
                          torch.cat(key_mu), torch.cat(key_var), torch.cat(key_index, dim=1), num_present)


def _virtual_negatives(proto_mu: torch.Tensor, proto_var: torch.Tensor, has_prototype: torch.Tensor,
                       anchor_classes: torch.Tensor, per_class: int, radius: float, variance: str,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Virtual negatives: for each anchor, ``per_class`` samples of every other class's prototype Gaussian.

    Sample ``mu_k + radius * eps * sqrt(var_k)``, eps ~ N(0, I) (unnormalised; the caller
    normalises them like every key).
    Args:
        proto_mu, proto_var: (C, D) prototypes; has_prototype: (C,) bool classes to draw from.
        anchor_classes: (A,) class of each anchor (each has a prototype).
    Returns:
        ``virtual_mu`` (A, M, D) and ``virtual_var`` (A, M, D), M = per_class x (classes with a
        prototype - 1); the variance is the prototype's (``variance="global"``) or 0 (``"zero"``).
    """
    if variance not in ("global", "zero"):
        raise ValueError(f"variance must be 'global' or 'zero', got {variance!r}")
    classes = has_prototype.nonzero().squeeze(1)  # (Cs,)
    others = classes[None, :].expand(anchor_classes.numel(), -1)
    others = others[others != anchor_classes[:, None]].reshape(anchor_classes.numel(), -1)  # (A, Cs - 1)
    drawn_classes = others.repeat_interleave(per_class, dim=1)  # (A, M)
    mean, spread = proto_mu[drawn_classes], proto_var[drawn_classes]
    eps = torch.randn(mean.shape, device=mean.device, generator=generator)
    virtual_mu = mean + radius * eps * spread.sqrt()
    virtual_var = spread if variance == "global" else torch.zeros_like(spread)
    return virtual_mu, virtual_var


class PRCLLoss(nn.Module):
    """Probabilistic representation contrastive loss.

    For every class c present among the valid pixels: ``num_queries`` anchors drawn from its hard
    pixels (student probability for c below ``strong_threshold``), each contrasted by an InfoNCE over
    ``[MLS(anchor, prototype_c), MLS(anchor, negative_1..num_negatives)] / T``; negatives are valid
    pixels of other classes, their classes drawn with probabilities ``softmax_k(MLS(proto_c, proto_k) / T)``.
    Mean over anchors, sum over classes, divided by the number of classes present. Prototypes and
    negatives carry no gradient; only anchors do. With ``options.global_prototypes`` the GDP state
    (``self.global_prototypes``, a :class:`GlobalPrototypes`) is this module's state_dict.

    Args:
        options: the contrast's options; their meanings and defaults are in :class:`ContrastOptions`.
        num_classes: C, for the GDP state; needed only with ``options.global_prototypes``.
        dim: D, the representation's channels, for the GDP state.
    """

    def __init__(self, options: ContrastOptions = ContrastOptions(), *, num_classes: int | None = None,
                 dim: int = 256) -> None:
        super().__init__()
        if options.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {options.kernel!r}")
        if options.global_prototypes and num_classes is None:
            raise ValueError("global_prototypes needs num_classes")
        self.options = options
        self.global_prototypes = (GlobalPrototypes(num_classes, dim, options.gdp_decay)
                                  if options.global_prototypes else None)

    def forward(self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                prob: torch.Tensor, generator: torch.Generator | None = None,
                return_details: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """
        Args:
            mu: (N, D, H, W) representation means (unnormalised).
            var: (N, D, H, W) variances in (0, 1).
            labels: (N, H, W) int64 class per pixel, -1 = ignore.
            valid: (N, H, W) bool pixels allowed in the loss (labeled, or confident pseudo-label).
            prob: (N, C, H, W) student class probabilities (no gradient is taken through them).
            generator: optional torch.Generator on the tensors' device for the sampling.
            return_details: also return a dict of logged details: ``variance_gap_loss``, the loss
                of the same sample with every mean made equal (what the variances alone decide);
                ``anchors``, the anchors drawn; ``anchor_classes``, the classes they were drawn
                from (num_queries each); ``present_classes``, the classes among the valid pixels.
        Returns:
            scalar loss; a zero that belongs to the graph when fewer than two classes are present
            (or none has a hard pixel).
        """
        sample = sample_contrast(mu, var, labels, valid, prob.detach(), self.options, generator,
                                 global_prototypes=self.global_prototypes)
        if sample is None:
            zero = (mu.sum() + var.sum()) * 0.0
            return (zero, {}) if return_details else zero
        # Only anchors carry gradient: gather them from the maps themselves.
        at = tuple(index[sample.anchors] for index in sample.pixel_index)
        anchor_mu = F.normalize(mu.permute(0, 2, 3, 1)[at].float(), dim=1)  # (A, D)
        anchor_var = var.permute(0, 2, 3, 1)[at].float()
        loss = self._info_nce(anchor_mu, anchor_var, sample.key_mu, sample.key_var, sample)
        if not return_details:
            return loss
        with torch.no_grad():
            gap = self._info_nce(torch.zeros_like(anchor_mu), anchor_var, torch.zeros_like(sample.key_mu),
                                 sample.key_var, sample)
        anchor_classes = sample.anchors.numel() // self.options.num_queries
        return loss, {"variance_gap_loss": gap, "anchors": float(sample.anchors.numel()),
                      "anchor_classes": float(anchor_classes), "present_classes": float(sample.num_present)}

    def _info_nce(self, anchor_mu: torch.Tensor, anchor_var: torch.Tensor, key_mu: torch.Tensor,
                  key_var: torch.Tensor, sample: ContrastSample) -> torch.Tensor:
        """InfoNCE of the anchors against their keys, the prototype (column 0) positive; a scalar.

        anchor_mu, anchor_var: (A, D); key_mu, key_var: (P + C [+ virtual], D), the pool that
        ``sample.key_index`` (A, K) indexes.
        """
        options = self.options
        scores = gathered_mls(anchor_mu, anchor_var, key_mu, key_var, sample.key_index, options.kernel)
        scores = scores / options.temperature
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        per_anchor = F.cross_entropy(scores, target, reduction="none")
        # Every anchor class has num_queries anchors: mean per class, summed, over the classes present.
        return per_anchor.sum() / (options.num_queries * sample.num_present)
