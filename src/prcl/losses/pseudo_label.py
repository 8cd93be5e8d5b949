"""Confidence-weighted cross-entropy on pseudo-labels (the unsupervised loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prcl.constants import IGNORE_INDEX


def pseudo_label_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float = 0.97,
) -> torch.Tensor:
    """Per-image confidence-weighted pixel CE, as the release computes it (docs/method.md).

    Image b gets ``w_b = #(pixels with q >= threshold) / #(pixels with y^ >= 0)``; the loss is
    ``sum(w_b * ce)`` divided by the number of pixels where ``ce > 0`` -- not where ``w_b * ce > 0``:
    an image whose weight is 0 still counts its pixels in the denominator, as in the release.
    An image with no valid pixel gets weight 0 (the release divides 0 by 0 there); when no pixel
    is left the loss is a zero that still belongs to the graph.

    Args:
        logits: (N, C, h, w) student logits; upsampled bilinearly (align_corners=True) to the label
            size when smaller.
        pseudo_labels: (N, H, W) int64, -1 = ignore.
        confidence: (N, H, W) teacher confidence q.
    Returns:
        scalar tensor.
    """
    if logits.shape[-2:] != pseudo_labels.shape[-2:]:
        logits = F.interpolate(logits, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True)
    batch = logits.shape[0]
    confident = (confidence >= threshold).reshape(batch, -1).sum(1).float()
    labelled = (pseudo_labels >= 0).reshape(batch, -1).sum(1).float()
    weight = torch.where(labelled > 0, confident / labelled.clamp_min(1), torch.zeros_like(labelled))
    ce = F.cross_entropy(logits.float(), pseudo_labels, reduction="none", ignore_index=IGNORE_INDEX)
    # Ignored pixels have ce = 0 and are not counted. Written as sum / count so there is no host
    # sync and an empty selection gives 0, not NaN.
    counted = (ce > 0).sum()
    return (weight[:, None, None] * ce).sum() / counted.clamp_min(1)
