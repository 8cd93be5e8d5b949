"""Encoders: timm `features_only` backbones that return a stride-4 map and a deep map.

The deep map has stride 16 or 8 (timm dilates the last stages through `output_stride`). Weights come
from a local file (`weights.py`) or, with `weights="imagenet"`, from the file `imagenet.py` makes local:
torchvision's for the ResNets, the packaged one for tf_efficientnet_lite0, timm's own (`pretrained=True`,
read from timm's cache) for other timm encoders.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
from prcl.errors import UserError
from prcl.models.imagenet import IMAGENET, download_errors, fetch_imagenet, imagenet_source
from prcl.models.weights import load_encoder_weights

OUTPUT_STRIDES = (8, 16)

# Names that are not plain timm names: (timm architecture, extra keyword arguments).
# "resnet101c" is ResNet-101-C with the deep stem 3-64-64-128 (three 3x3 convs with BN/ReLU) used by
# the public "resnet101 stem" checkpoint. timm's own `resnet101c` uses a narrower stem (3-32-32-64),
# so we build it from timm's `resnet101` with stem_type="deep", stem_width=64.
_ALIASES: dict[str, tuple[str, dict]] = {
    "resnet101c": ("resnet101", {"stem_type": "deep", "stem_width": 64}),
}


class Encoder(nn.Module):
    """A timm feature extractor that returns `(low_level, deep)`.

    Attributes:
        name: the encoder name it was built from (e.g. "resnet101", "resnet101c").
        body: the timm `features_only` model; its state-dict keys are the timm/torchvision ones
            (conv1.*, bn1.*, layer1..4.* for ResNets; conv_stem.*, bn1.*, blocks.* for EfficientNets).
        low_level_channels, deep_channels: channels of the two maps.
        output_stride: stride of the deep map (8 or 16).
        mean, std: per-channel input normalisation the architecture's ImageNet weights expect
            (images in [0, 1]).
    """

    def __init__(self, name: str, output_stride: int = 16, timm_pretrained: bool = False) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise UserError(
                f"output stride {output_stride!r} is not supported; set model.output_stride to 8 or 16"
            )
        arch, kwargs = _ALIASES.get(name, (name, {}))
        self.name = name
        self.arch = arch
        self.arch_kwargs = dict(kwargs)
        self.output_stride = output_stride
        self.body = _create_features_model(name, arch, output_stride, kwargs, timm_pretrained)

        info = self.body.feature_info
        reductions = info.reduction()
        channels = info.channels()
        stride4 = [i for i, r in enumerate(reductions) if r == 4]
        if not stride4:
            raise UserError(
                f"encoder {name!r} has no stride-4 feature map (its feature strides are {reductions}); "
                "choose a convolutional encoder such as resnet101"
            )
        if reductions[-1] != output_stride:
            raise UserError(
                f"encoder {name!r} cannot give a deep map at output stride {output_stride} (its feature "
                f"strides are {reductions}); choose another model.output_stride or model.encoder"
            )
        self.low_level_index = stride4[-1]
        self.deep_index = len(reductions) - 1
        self.low_level_channels: int = channels[self.low_level_index]
        self.deep_channels: int = channels[self.deep_index]

        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(cfg.get("std", IMAGENET_STD))
        # The data pipeline always normalises with ImageNet mean/std; an architecture whose weights
        # expect another normalisation gets an exact per-channel affine map to it (not saved).
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.renormalise = not (torch.allclose(mean, imagenet_mean) and torch.allclose(std, imagenet_std))
        self.register_buffer("input_scale", (imagenet_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((imagenet_mean - mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 3, H, W) -> (low_level (N, C_low, ~H/4, ~W/4), deep (N, C_deep, ~H/s, ~W/s)).

        x is normalised with ImageNet mean/std (as the data pipeline does); s is the output stride;
        sizes round up (321 -> 81 at stride 4, 21 at stride 16).
        """
        if self.renormalise:
            x = x * self.input_scale + self.input_shift
        features = self.body(x)
        return features[self.low_level_index], features[self.deep_index]

    def create_classifier_model(self) -> nn.Module:
        """The full timm classification model of the same architecture (random weights, no download)."""
        return timm.create_model(self.arch, pretrained=False, **self.arch_kwargs)


def _create_features_model(name: str, arch: str, output_stride: int, kwargs: dict,
                            pretrained: bool = False) -> nn.Module:
    """timm's `features_only` model; ``pretrained``: with timm's ImageNet weights (from its cache, or
    downloaded by timm)."""
    if not timm.is_model(arch):
        raise UserError(
            f"unknown encoder {name!r}; set model.encoder to resnet18, resnet50, resnet101, resnet101c, "
            "tf_efficientnet_lite0 or another timm model name (see timm.list_models())"
        )
    try:
        if pretrained:
            with download_errors(imagenet_source(name)):
                return timm.create_model(
                    arch, pretrained=True, features_only=True, output_stride=output_stride, **kwargs
                )
        return timm.create_model(
            arch, pretrained=False, features_only=True, output_stride=output_stride, **kwargs
        )
    except (TypeError, RuntimeError, ValueError, AssertionError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"encoder {name!r} cannot be built as a feature extractor with output stride {output_stride} "
            f"({first_line}); choose a convolutional timm encoder such as resnet101"
        ) from None


def build_encoder(name: str, output_stride: int = 16, weights: str | Path | None = None) -> Encoder:
    """Build an encoder and optionally load ImageNet weights.

    Args:
        name: resnet18, resnet50, resnet101 (torchvision layout, 7x7 stem), resnet101c (deep stem
            3-64-64-128), tf_efficientnet_lite0, or any timm model that works with `features_only`
            and `output_stride` and has a stride-4 feature.
        output_stride: 16 or 8 (stride of the deep map).
        weights: None (random init), a path to a local checkpoint (see `load_encoder_weights`), or
            "imagenet": downloaded into its cache when not there yet (`imagenet.fetch_imagenet`; one
            process: under torchrun, `imagenet.fetch_weights` first).
    """
    if weights is not None and str(weights) == IMAGENET:
        if imagenet_source(name).kind == "timm":
            return Encoder(name, output_stride, timm_pretrained=True)
        weights = fetch_imagenet(name)
    encoder = Encoder(name, output_stride)
    if weights is not None:
        load_encoder_weights(encoder, weights)
    return encoder
