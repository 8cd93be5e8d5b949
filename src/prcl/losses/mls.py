"""Mutual likelihood score (MLS) between diagonal Gaussians."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mutual_likelihood_score(
    mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor
) -> torch.Tensor:
    """Mutual likelihood score of Gaussians (mu_a, var_a) and (mu_b, var_b).

    ``MLS = -1/2 * mean_d[(mu_a - mu_b)^2 / (var_a + var_b) + log(var_a + var_b)]`` with both means
    L2-normalised over the last dimension first (docs/method.md; the release takes the mean
    over the D dimensions and drops the 2*pi constant).

    Args:
        mu_a, var_a: (..., D) means and variances; var > 0.
        mu_b, var_b: (..., D), broadcastable against ``mu_a``.
    Returns:
        (...) the broadcast leading shape, last dimension reduced.
    """
    mu_a = F.normalize(mu_a, dim=-1)
    mu_b = F.normalize(mu_b, dim=-1)
    var_sum = var_a + var_b
    return -0.5 * ((mu_a - mu_b).square() / var_sum + var_sum.log()).mean(-1)
