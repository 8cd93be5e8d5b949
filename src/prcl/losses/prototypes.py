"""Distribution prototypes: the precision-weighted fusion of a class's pixel Gaussians."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def prototype_statistics(
    mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sufficient statistics of the per-class prototypes.

    Args:
        mu: (P, D) unnormalised means of the valid pixels.
        var: (P, D) variances of the same pixels, in (0, 1).
        labels: (P,) int64 class of each pixel, in [0, num_classes).
        num_classes: C.
    Returns:
        ``precision_sum`` (C, D) = sum_i 1/var_i and ``weighted_mu_sum`` (C, D) = sum_i mu_i/var_i,
        zero for classes without pixels.
    """
    precision = var.reciprocal()
    precision_sum = mu.new_zeros(num_classes, mu.shape[1]).index_add_(0, labels, precision)
    weighted_mu_sum = mu.new_zeros(num_classes, mu.shape[1]).index_add_(0, labels, mu * precision)
    return precision_sum, weighted_mu_sum


def all_reduce_statistics(*tensors: torch.Tensor) -> None:
    """Sum tensors in place over all ranks when a process group is running (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


@torch.no_grad()
def class_statistics(
    mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class ``precision_sum`` (C, D), ``weighted_mu_sum`` (C, D) and pixel ``count`` (C,),
    all-reduced over ranks (shapes and arguments as in :func:`prototype_statistics`)."""
    precision_sum, weighted_mu_sum = prototype_statistics(mu.float(), var.float(), labels, num_classes)
    count = torch.bincount(labels, minlength=num_classes).to(precision_sum.dtype)
    all_reduce_statistics(precision_sum, weighted_mu_sum, count)
    return precision_sum, weighted_mu_sum, count


def prototypes_from_statistics(
    precision_sum: torch.Tensor, weighted_mu_sum: torch.Tensor, count: torch.Tensor, variance: str = "fused"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``proto_mu`` (C, D) = weighted_mu_sum / precision_sum and ``proto_var`` (C, D).

    ``variance="fused"`` (the release): ``1 / precision_sum``, the fused Gaussian's variance, about
    1/N of a pixel's. ``"mean"``: ``count / precision_sum``, the harmonic mean of the pixels'
    variances, which does not shrink with the number of pixels N. Classes without pixels: mu 0, var inf.
    """
    if variance not in ("fused", "mean"):
        raise ValueError(f"variance must be 'fused' or 'mean', got {variance!r}")
    fused_var = precision_sum.reciprocal()
    proto_mu = torch.nan_to_num(weighted_mu_sum * fused_var, nan=0.0)
    if variance == "fused":
        return proto_mu, fused_var
    return proto_mu, torch.nan_to_num(count[:, None] * fused_var, nan=float("inf"))


@torch.no_grad()
def distribution_prototypes(
    mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution prototype of every class (docs/method.md), exact under data parallelism.

    ``var_c = 1 / sum_i(1/var_i)`` and ``mu_c = sum_i (var_c / var_i) * mu_i`` over the class's
    valid pixels i. The sums are all-reduced over ranks, so every rank gets the global prototype.

    Args:
        mu: (P, D) unnormalised means of valid pixels; var: (P, D); labels: (P,) int64.
    Returns:
        ``proto_mu`` (C, D) and ``proto_var`` (C, D); rows of classes with no pixel on any rank
        are 0 (mu) and +inf (var).
    """
    return prototypes_from_statistics(*class_statistics(mu, var, labels, num_classes))


class GlobalPrototypes(nn.Module):
    """Global distribution prototypes (GDP, the extended PRCL): one Gaussian per class over training.

    The state is the sufficient statistics of a precision-weighted fusion: ``precision`` (C, D),
    ``weighted_mu`` (C, D) and ``count`` (C,). Each step fuses the batch's all-reduced statistics
    into it, ``state <- (1 - decay) * state + batch``; with ``decay = 0`` this is the fusion rule
    ``var_g <- 1 / (1/var_g + 1/var_b)``, ``mu_g <- var_g * (mu_g/var_g + mu_b/var_b)`` (pure
    accumulation: var_g shrinks towards 0); ``decay > 0`` forgets old batches geometrically. The
    state is identical on every rank and is saved in checkpoints (buffers).
    """

    def __init__(self, num_classes: int, dim: int, decay: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("precision", torch.zeros(num_classes, dim))
        self.register_buffer("weighted_mu", torch.zeros(num_classes, dim))
        self.register_buffer("count", torch.zeros(num_classes))

    @torch.no_grad()
    def update(self, precision_sum: torch.Tensor, weighted_mu_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Fuse one batch's (all-reduced) class statistics into the state."""
        if self.precision.device != precision_sum.device:
            self.to(precision_sum.device)
        keep = 1.0 - self.decay
        self.precision.mul_(keep).add_(precision_sum)
        self.weighted_mu.mul_(keep).add_(weighted_mu_sum)
        self.count.mul_(keep).add_(count)

    def prototypes(self, variance: str = "fused") -> tuple[torch.Tensor, torch.Tensor]:
        """(proto_mu, proto_var), both (C, D); classes never seen: mu 0, var inf."""
        return prototypes_from_statistics(self.precision, self.weighted_mu, self.count, variance)

    def seen(self) -> torch.Tensor:
        """(C,) bool: classes with a global prototype."""
        return self.count > 0
