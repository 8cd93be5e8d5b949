"""Probability head: per-pixel variance of the Gaussian representation (docs/method.md).

Applied on the 304-channel feature F (not detached). Each "linear" layer is a per-pixel linear map
over channels, computed as a 1x1 convolution whose (out, in) weight matrix has its rows
L2-normalised at every forward. Parameter names follow the release's `uncer_head`
(fc1, fc2 as plain (out, in) matrices, bn1, bn2, gamma, beta) so its weights load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6
LOG_EPS = math.log(EPS)


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
        """(N, in_channels, h, w) -> (N, dim, h, w); in eval mode through :meth:`_folded_forward`."""
        if not self.training:
            return self._folded_forward(features)
        x = F.relu(self.bn1(self._normalised_linear(features, self.fc1)))
        x = self.bn2(self._normalised_linear(x, self.fc2))
        x = self.gamma * x + self.beta
        # log(exp(x) + 1e-6) without overflow for large x.
        x = torch.logaddexp(x, torch.full_like(x, LOG_EPS))
        return torch.sigmoid(x)

    def _folded_layers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight1 (dim, in), shift1 (dim,), weight2 (dim, dim), shift2 (dim,)): the eval-mode head as two affine
        per-pixel maps, bn1 folded into fc1 and bn2 with gamma/beta into fc2 (see :meth:`_folded_forward`)."""
        scale1 = self.bn1.weight / torch.sqrt(self.bn1.running_var + self.bn1.eps)
        shift1 = self.bn1.bias - self.bn1.running_mean * scale1
        scale2 = self.gamma / torch.sqrt(self.bn2.running_var + self.bn2.eps)
        shift2 = self.beta - self.bn2.running_mean * scale2
        return (F.normalize(self.fc1, dim=1) * scale1[:, None], shift1,
                F.normalize(self.fc2, dim=1) * scale2[:, None], shift2)

    @torch.no_grad()
    def folded_mean_variance(self) -> Callable[..., torch.Tensor]:
        """The eval-mode variance averaged over its dim dimensions, as a function
        ``(features (N, in, h, w), context (N, k, h', w') or None) -> (N, 1, h, w)``, with the layers folded once
        (:meth:`_folded_layers`) for every image it is called on: for evaluation and prediction, where the weights
        do not change between images. No gradient; the same values as ``self(features).mean(dim=1)`` in eval mode
        up to float32 rounding. The pixels go through as rows (N h w, in), which is a view of a channels-last
        feature map.

        ``context``: the segmenter's ASPP output when features' last k channels are its bilinear
        (align_corners) upsampling (``SegmenterOutput.context``). The first layer is linear per pixel and
        bilinear weights sum to 1, so its part on those channels, shift included, is taken at the coarse size
        and upsampled: ``W1 up(c) + b = up(W1 c + b)``. At output stride 16 that is 16 times fewer pixels for
        256 of the 304 input channels (docs/benchmarks.md)."""
        weight1, shift1, weight2, shift2 = self._folded_layers()  # computed without gradient (no_grad)

        def mean_variance(features: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
            n, channels, height, width = features.shape
            with torch.no_grad():
                if context is None:
                    x = features.permute(0, 2, 3, 1).reshape(-1, channels)  # (N h w, in)
                    x = torch.addmm(shift1, x, weight1.t())
                else:
                    low = channels - context.shape[1]  # features' channels before the upsampled context
                    if context.shape[0] != n or low <= 0:
                        raise ValueError(f"context {tuple(context.shape)} is not the upsampled tail of features "
                                         f"{tuple(features.shape)}")
                    coarse = torch.addmm(shift1, context.permute(0, 2, 3, 1).reshape(-1, context.shape[1]),
                                         weight1[:, low:].t())  # (N h' w', dim)
                    coarse = coarse.view(n, *context.shape[-2:], -1).permute(0, 3, 1, 2)  # channels-last (N, dim, h', w')
                    upsampled = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
                    x = torch.addmm(upsampled.permute(0, 2, 3, 1).reshape(-1, coarse.shape[1]),
                                    features[:, :low].permute(0, 2, 3, 1).reshape(-1, low), weight1[:, :low].t())
                x = torch.addmm(shift2, x.relu_(), weight2.t())
                u = x.clamp_(max=80.0).exp_().add_(EPS)  # _folded_forward's tail, in place (no gradient here)
                variance = u.div_(u + 1.0).mean(dim=1)
            return variance.reshape(n, 1, height, width)

        return mean_variance

    def _folded_forward(self, features: torch.Tensor) -> torch.Tensor:
        """The eval-mode forward with each BN folded into the linear map before it: (N, in, h, w) -> (N, dim, h, w).

        In eval mode a BN is the affine map ``a * x + b`` of its running statistics, and so is
        ``gamma * x + beta``: bn1 folds into fc1's rows and a bias, bn2 and gamma/beta into fc2's.
        Each layer is then one matrix product over the pixels, and the tail ``sigmoid(log(e^x +
        1e-6))`` is ``u / (u + 1)`` with ``u = e^x + 1e-6`` (x clipped at 80, where it is 1 in float32).
        The same values as the layer-by-layer forward up to float32 rounding (a few 1e-7), about 20 %
        cheaper on a CPU (docs/benchmarks.md): evaluation and prediction pay the head on every image.
        """
        weight1, shift1, weight2, shift2 = self._folded_layers()
        n, channels, height, width = features.shape
        x = features.reshape(n, channels, height * width)
        x = torch.baddbmm(shift1[:, None], weight1.expand(n, -1, -1), x).relu_()
        x = torch.baddbmm(shift2[:, None], weight2.expand(n, -1, -1), x)
        u = torch.exp(x.clamp(max=80.0)) + EPS
        return (u / (u + 1.0)).reshape(n, -1, height, width)
