"""Probability head: per-pixel variance of the Gaussian representation (docs/method.md).

Applied on the 304-channel feature F (not detached). Each "linear" layer is a per-pixel linear map
over channels, computed as a 1x1 convolution whose (out, in) weight matrix has its rows
L2-normalised at every forward. Parameter names follow the release's `uncer_head`
(fc1, fc2 as plain (out, in) matrices, bn1, bn2, gamma, beta) so its weights load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_EPS = math.log(1e-6)


class ProbabilityHead(nn.Module):
    """(N, in_channels, h, w) feature -> variance (N, dim, h, w) in (0, 1).

    fc1 (no bias, rows normalised) -> BN (affine) -> ReLU -> fc2 (rows normalised) -> BN (no affine)
    -> gamma * x + beta -> log(exp(x) + 1e-6) -> sigmoid.
    """

    def __init__(self, in_channels: int = 304, dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Parameter(torch.empty(dim, in_channels))
        self.bn1 = nn.BatchNorm2d(dim, affine=True)
        self.fc2 = nn.Parameter(torch.empty(dim, dim))
        self.bn2 = nn.BatchNorm2d(dim, affine=False)
        self.gamma = nn.Parameter(torch.ones(1))  # learnable scale
        self.beta = nn.Parameter(torch.zeros(1))  # learnable shift
        # The release's init (defaults, a = 0): row norms near sqrt(2). The rows are normalised in
        # the forward, so the init leaves the outputs alone, but SGD turns a row by about lr / |w|^2
        # per step: smaller rows would make the soft-frozen head move several times faster.
        nn.init.kaiming_normal_(self.fc1)
        nn.init.kaiming_normal_(self.fc2)

    @staticmethod
    def _normalised_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-pixel x @ normalize(weight).T: (N, in, h, w), (out, in) -> (N, out, h, w)."""
        return F.conv2d(x, F.normalize(weight, dim=1)[:, :, None, None])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self._normalised_linear(features, self.fc1)))
        x = self.bn2(self._normalised_linear(x, self.fc2))
        x = self.gamma * x + self.beta
        # log(exp(x) + 1e-6) without overflow for large x.
        x = torch.logaddexp(x, torch.full_like(x, LOG_EPS))
        return torch.sigmoid(x)
