"""DeepLabV3+ segmenter with a classifier head and a representation (mu) head (docs/method.md).

Submodule names follow the authors' release checkpoint (ASPP.convs.N, ASPP.project, project,
classifier, representation) so their weights map onto ours by renaming the encoder keys only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPPConv, ASPPPooling

from prcl.errors import UserError
from prcl.models.encoders import Encoder, build_encoder

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
FEATURE_CHANNELS = LOW_LEVEL_CHANNELS + ASPP_CHANNELS  # 304: the feature F
REPRESENTATION_DIM = 256


class SegmenterOutput(NamedTuple):
    """Student outputs at stride 4 (h = ceil-ish H/4, e.g. 81 for H = 321), and the ASPP's map at the encoder's
    output stride (h' = 21 for H = 321 at 16)."""

    logits: torch.Tensor  # (N, C, h, w) class scores before softmax
    # (N, 256, h, w) representation means (not normalised); None when not asked for. Only PRCL's student trains them.
    mu: torch.Tensor | None
    features: torch.Tensor  # (N, 304, h, w) the feature F fed to the heads and the probability head
    # (N, 256, h', w') the ASPP output at the encoder's output stride, before its bilinear (align_corners)
    # upsampling into F's last 256 channels: a per-pixel linear map of F can run its part on these at the
    # coarse size (the probability head in evaluation does). None where a model does not give it.
    context: torch.Tensor | None = None


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, and image pooling; 5 x 256 -> 256.

    Every conv has no bias and is followed by BN + ReLU; no dropout after the projection.
    (N, in_channels, h, w) -> (N, 256, h, w).
    """

    def __init__(self, in_channels: int, rates: tuple[int, int, int], out_channels: int = ASPP_CHANNELS):
        super().__init__()
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ),
                *(ASPPConv(in_channels, out_channels, rate) for rate in rates),
                ASPPPooling(in_channels, out_channels),  # pooled, 1x1 conv, BN, ReLU, upsampled
            ]
        )
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias), BN, ReLU, 1x1 conv with bias: (N, in, h, w) -> (N, out, h, w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 256, 3, padding=1, bias=False),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, out_channels, 1),
    )


class Segmenter(nn.Module):
    """Encoder + DeepLabV3+ decoder + classifier head + representation head (the PRCL student).

    forward(x (N, 3, H, W)) -> SegmenterOutput(logits (N, C, h, w), mu (N, 256, h, w),
    features (N, 304, h, w), context (N, 256, h', w')) at the encoder's stride-4 resolution, context at its
    output stride. ``representation=False`` skips the
    representation head (mu is None): only PRCL's student reads mu, and the head is a 3 x 3 convolution
    304 -> 256 at stride 4, as costly as the classifier head (12 % of a ResNet-101 forward at 321 x 321,
    21 % of the demo's; docs/benchmarks.md). Where it never runs (the teacher, the supervised and mean-teacher
    students) its BatchNorm statistics keep their initial values, so the mu of such a network means nothing.
    """

    def __init__(self, encoder: Encoder, num_classes: int, representation_dim: int = REPRESENTATION_DIM):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.output_stride = encoder.output_stride
        self.ASPP = ASPP(encoder.deep_channels, ASPP_RATES[encoder.output_stride])
        self.project = nn.Sequential(
            nn.Conv2d(encoder.low_level_channels, LOW_LEVEL_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(LOW_LEVEL_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.classifier = _head(FEATURE_CHANNELS, num_classes)
        self.representation = _head(FEATURE_CHANNELS, representation_dim)

    def forward(self, x: torch.Tensor, representation: bool = True) -> SegmenterOutput:
        low_level, deep = self.encoder(x)
        context = self.ASPP(deep)
        upsampled = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        # Order as in the release: low-level 48 channels first, then the 256 ASPP channels.
        features = torch.cat([self.project(low_level), upsampled], dim=1)
        mu = self.representation(features) if representation else None
        return SegmenterOutput(self.classifier(features), mu, features, context)


def build_segmenter(
    encoder: str = "resnet101",
    num_classes: int = 21,
    output_stride: int = 16,
    weights: str | Path | None = None,
) -> Segmenter:
    """Build the DeepLabV3+ student. `weights` goes to the encoder (see `build_encoder`)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f"number of classes {num_classes!r} is invalid; give a positive integer")
    return Segmenter(build_encoder(encoder, output_stride, weights), num_classes)


def without_representation(model: Callable[..., Any]) -> Callable[[torch.Tensor], Any]:
    """``model`` called with ``representation=False`` when it is a :class:`Segmenter` (possibly wrapped), else as it
    is: what inference calls, which never reads mu."""
    from prcl.models.teacher import unwrap_model

    if isinstance(model, nn.Module) and isinstance(unwrap_model(model), Segmenter):
        return functools.partial(model, representation=False)
    return model
