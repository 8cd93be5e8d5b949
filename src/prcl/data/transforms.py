"""Loader-side joint image/mask augmentation (torchvision transforms v2).

The pipelines take a sample dict ``{"image": tv_tensors.Image uint8 (3, H, W),
"mask": tv_tensors.Mask int64 (H, W) (optional), ...}`` and return the same keys as plain
tensors: image float32 (3, h, w) normalised with ImageNet mean/std, mask int64 (h, w) with
-1 = ignore. Other entries (e.g. ``"id"``) pass through unchanged. Randomness comes from the
global torch RNG (the trainer seeds it per sample: see :mod:`prcl.engine.sampling`).

Geometric steps move image and mask together (bilinear for the image, nearest for the mask);
colour jitter and blur touch only the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from prcl.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

BLUR_SIGMA = (0.15, 1.15)
BLUR_KERNEL_SIZE = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1  # covers +-3 sigma of the widest blur


def as_pair(value: int | Sequence[int] | None, name: str = "size") -> tuple[int, int]:
    """``(height, width)`` from one int (a square) or a pair; both must be positive.

    ``name`` is what the error messages call the value. None, a sequence that is not a pair and a
    side below 1 raise ValueError.
    """
    if value is None:
        raise ValueError(f"{name} is required (an int or a (height, width) pair), got None")
    sides = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(sides) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value}")
    height, width = sides
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return height, width


class _V2Compat(v2.Transform):
    """Route torchvision < 0.21's private hook names to the public ones used here."""

    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:  # torchvision < 0.21
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # torchvision < 0.21
        return self.transform(inpt, params)


class RandomRescale(_V2Compat):
    """Resize by one factor drawn uniformly from ``scale_range`` (same factor for image and mask).

    The new size is ``int(H * s), int(W * s)``; the image is resized bilinearly (antialiased),
    the mask by nearest neighbour.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 1.5)) -> None:
        super().__init__()
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + float(torch.rand(())) * (high - low)
        return {"size": [max(1, int(height * scale)), max(1, int(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class PadToSize(_V2Compat):
    """Pad right/bottom up to ``size`` (h, w) when smaller: image by reflection, mask with -1.

    Reflection needs the pad to be smaller than the side; larger pads reflect repeatedly.
    """

    def __init__(self, size: int | Sequence[int], mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = as_pair(size)
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"bottom": max(self.size[0] - height, 0), "right": max(self.size[1] - width, 0)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        bottom, right = params["bottom"], params["right"]
        if bottom == 0 and right == 0:
            return inpt
        if isinstance(inpt, tv_tensors.Mask):
            return F.pad(inpt, [0, 0, right, bottom], fill=self.mask_fill, padding_mode="constant")
        while bottom > 0 or right > 0:  # reflect in steps smaller than the current side
            height, width = inpt.shape[-2:]
            step_bottom, step_right = min(bottom, height - 1), min(right, width - 1)
            mode = "reflect" if height > 1 and width > 1 else "edge"
            if mode == "edge":
                step_bottom, step_right = bottom, right
            inpt = self._call_kernel(
                F.pad, inpt, [0, 0, step_right, step_bottom], padding_mode=mode
            )
            bottom, right = bottom - step_bottom, right - step_right
        return inpt


def normalise() -> v2.Transform:
    """uint8 image -> float32 in [0, 1] -> ImageNet mean/std; masks stay int64; plain tensors
    out."""
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            v2.ToPureTensor(),
        ]
    )


def train_transform(
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] = (0.5, 1.5),
    strong: bool = True,
) -> v2.Transform:
    """Labeled pipeline (docs/method.md, "Data pipelines"): rescale, pad + random crop,
    [colour jitter p=0.8, blur p=0.5], horizontal flip p=0.5, normalisation.

    ``strong=False`` leaves out colour jitter and blur (geometry and normalisation only).
    Output: image float32 (3, crop_h, crop_w), mask int64 (crop_h, crop_w), -1 = ignore.
    """
    size = as_pair(crop_size, "crop_size")
    steps: list[v2.Transform] = [RandomRescale(scale_range), PadToSize(size), v2.RandomCrop(size)]
    if strong:
        steps += [
            v2.RandomApply(
                [v2.ColorJitter(brightness=(0.75, 1.25), contrast=(0.75, 1.25),
                                saturation=(0.75, 1.25), hue=(-0.25, 0.25))],
                p=0.8,
            ),
            v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL_SIZE, sigma=BLUR_SIGMA)], p=0.5),
        ]
    steps += [v2.RandomHorizontalFlip(p=0.5), normalise()]
    return v2.Compose(steps)


def unlabeled_transform(crop_size: int | Sequence[int]) -> v2.Transform:
    """Unlabeled pipeline: pad + random crop at scale 1, then normalisation (the strong view is
    made later, batched on the device). Output image float32 (3, crop_h, crop_w)."""
    size = as_pair(crop_size, "crop_size")
    return v2.Compose([PadToSize(size), v2.RandomCrop(size), normalise()])


def eval_transform() -> v2.Transform:
    """Evaluation: the whole image, normalised only. Output image float32 (3, H, W)."""
    return normalise()
