"""Distribution prototypes: the precision-weighted fusion of a class's pixel Gaussians."""

from __future__ import annotations

import torch
import torch.distributed as dist


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
    precision_sum, weighted_mu_sum = prototype_statistics(mu.float(), var.float(), labels, num_classes)
    all_reduce_statistics(precision_sum, weighted_mu_sum)
    proto_var = precision_sum.reciprocal()
    proto_mu = torch.nan_to_num(weighted_mu_sum * proto_var, nan=0.0)
    return proto_mu, proto_var
