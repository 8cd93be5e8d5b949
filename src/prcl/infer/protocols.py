"""The inference protocols (docs/method.md): a model's dense maps, averaged over views, as scored and predicted.

Protocols:

- ``whole``: the whole image in one forward pass (standard for VOC).
- ``sliding``: overlapping ``window`` crops every ``stride`` pixels; the image is padded
  (bottom/right, zeros in normalised space) when smaller than the window, and each pixel's
  probabilities are averaged over the windows that cover it (standard for Cityscapes).
- ``center``: image and label are cropped to ``window`` around the centre, then ``whole``.
- ``random-crop``: image and label are cropped to ``window`` at a seeded random position, then
  ``whole``. This is what the release scores (one random crop per validation image).

Crops never pad: an image smaller than the window keeps its size along that side.

Multi-scale and flip testing average softmax probabilities: each view is resized / flipped back
to the input size (bilinear, align_corners=True) before averaging.

One path serves training, ``prcl eval`` and the Predictor: :func:`dense_maps` (model -> softmax
probabilities at the input size, plus optional extra maps) -> :func:`average_views` (scales x
flips x sliding windows) -> :func:`class_map` (scored by :func:`prcl.engine.evaluate.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prcl.data.transforms import as_pair
from prcl.models.deeplab import without_representation

PROTOCOLS = ("whole", "sliding", "center", "random-crop")
INFERENCE_PROTOCOLS = ("whole", "sliding")  # the ones that run the model; the others crop first

MapFn = Callable[[torch.Tensor], torch.Tensor]


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one side: every ``stride`` pixels, plus one flush with the far edge."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def as_logits(output: Any) -> torch.Tensor:
    """A model's logits: the tensor itself, or ``output.logits`` (e.g. a SegmenterOutput)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)


def dense_maps(
    model: Callable[[torch.Tensor], Any], num_classes: int, extra: Callable[[Any], torch.Tensor] | None = None
) -> MapFn:
    """The model as a dense-map function: x (N, 3, h, w) -> (N, C (+K), h, w) float32.

    ``model(x)`` returns logits (N, C, h', w') at any stride, or an object with ``.logits`` (a
    SegmenterOutput); they are upsampled bilinearly (align_corners=True) to the input size, then
    softmaxed. ``extra(output)`` (optional) gives K more maps (N, K, h', w') from the model's output,
    e.g. the probability head's mean variance; they are upsampled alike and appended after the C
    probabilities. This is what :func:`average_views` averages, in evaluation and in the Predictor.
    """

    forward = without_representation(model)

    def map_fn(x: torch.Tensor) -> torch.Tensor:
        output = forward(x)
        logits = as_logits(output).float()
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} class scores, expected {num_classes}")
        if extra is None:
            return _resize(logits, x.shape[-2:]).softmax(dim=1)
        more = extra(output).float()
        if more.shape[-2:] != logits.shape[-2:]:
            return torch.cat([_resize(logits, x.shape[-2:]).softmax(dim=1), _resize(more, x.shape[-2:])], dim=1)
        # one resize of every map at once (bilinear acts per channel), then the softmax in place
        maps = _resize(torch.cat([logits, more], dim=1), x.shape[-2:])
        maps[:, :num_classes] = maps[:, :num_classes].softmax(dim=1)
        return maps

    return map_fn


def _sliding_window(
    map_fn: MapFn, image: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """``map_fn`` averaged over overlapping windows: image (N, 3, H, W) -> (N, K, H, W).

    Each pixel gets the mean over the windows covering it. An image smaller than the window is
    padded bottom/right with zeros, and the padding is cut off again.
    """
    (window_h, window_w), (stride_h, stride_w) = window, stride
    n, _, height, width = image.shape
    pad_h, pad_w = max(window_h - height, 0), max(window_w - width, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    padded_h, padded_w = image.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, padded_h, padded_w, device=image.device)
    for top in _window_starts(padded_h, window_h, stride_h):
        for left in _window_starts(padded_w, window_w, stride_w):
            out = map_fn(image[..., top : top + window_h, left : left + window_w]).float()
            if total is None:
                total = torch.zeros(n, out.shape[1], padded_h, padded_w, device=image.device)
            total[..., top : top + window_h, left : left + window_w] += out
            count[..., top : top + window_h, left : left + window_w] += 1
    assert total is not None
    return (total / count)[..., :height, :width]


def average_views(
    map_fn: MapFn,
    image: torch.Tensor,
    protocol: str = "whole",
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Average a dense map over scales x horizontal flips x (``sliding``) windows.

    image (N, 3, H, W); map_fn(x (N, 3, h, w)) -> (N, K, h, w) at its input's size (e.g.
    :func:`dense_maps`). Returns (N, K, H, W) float32: every view is flipped back and resized to
    (H, W) bilinearly (align_corners=True) before averaging. ``stride`` None: two thirds of the window.
    """
    if protocol not in INFERENCE_PROTOCOLS:
        raise ValueError(
            f"protocol {protocol!r} does not run inference; use 'whole' or 'sliding' "
            "(crop 'center'/'random-crop' pairs first with crop_for_protocol)"
        )
    if protocol == "sliding":
        window = as_pair(window, "window")
        stride = as_pair(stride, "stride") if stride is not None else tuple(max(1, w * 2 // 3) for w in window)
    if not scales:
        raise ValueError("scales must hold at least one scale, e.g. (1.0,)")
    height, width = image.shape[-2:]
    total: torch.Tensor | None = None
    views = 0
    for scale in scales:
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        scaled = _resize(image, size)
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            if protocol == "sliding":
                out = _sliding_window(map_fn, view, window, stride)  # type: ignore[arg-type]
            else:
                out = map_fn(view).float()
            out = _resize(out.flip(-1) if flipped else out, (height, width))
            total = out if total is None else total + out
            views += 1
    assert total is not None
    return total / views


def class_map(maps: torch.Tensor) -> torch.Tensor:
    """The predicted class of each pixel: (N, K, H, W) averaged maps -> (N, H, W) int64, argmax over dim 1.

    Taken as ``max(dim=1).indices`` (the first maximum, as argmax): on CPU, with torch 2.14, argmax over
    the channels of an NCHW map is about 20 times slower (1.45 against 0.075 ms on 6 x 96 x 96,
    docs/benchmarks.md).
    """
    return maps.max(dim=1).indices


def crop_for_protocol(
    image: torch.Tensor,
    label: torch.Tensor,
    protocol: str,
    window: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop image (N, 3, H, W) and label (N, H, W) alike for the "center"/"random-crop" protocols.

    The crop is ``window`` (or the whole side where the image is smaller); "random-crop" draws
    its position from ``generator`` (the same position for every image of the batch). Other
    protocols return the pair unchanged.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol in INFERENCE_PROTOCOLS:
        return image, label
    window_h, window_w = as_pair(window, "window")
    height, width = image.shape[-2:]
    if tuple(label.shape[-2:]) != (height, width):
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in size")
    crop_h, crop_w = min(window_h, height), min(window_w, width)
    if protocol == "center":
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    else:
        top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
    return (
        image[..., top : top + crop_h, left : left + crop_w],
        label[..., top : top + crop_h, left : left + crop_w],
    )


def mean_variance(probability_head: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The probability head's variance averaged over its dimensions, from a segmenter's output: (N, 1, h, w).

    A head in eval mode is folded once, here (``ProbabilityHead.folded_mean_variance``): the function returned is
    for images scored with these weights (one evaluation, one ``predict_batch``), without gradient; make a new one
    after the weights change. An output's ``.context``, where it has one (a :class:`prcl.models.Segmenter`'s ASPP
    map), must be what F's last channels upsample bilinearly (align_corners): the head's first layer takes that
    part at the coarse size."""
    if not probability_head.training and hasattr(probability_head, "folded_mean_variance"):
        folded = probability_head.folded_mean_variance()  # the weights are fixed while it is used: fold them once

        def folded_fn(output: Any) -> torch.Tensor:
            context = getattr(output, "context", None)  # the ASPP output, where the model gives it
            return folded(output.features.float(), None if context is None else context.float())
        return folded_fn

    def fn(output: Any) -> torch.Tensor:
        return probability_head(output.features).float().mean(dim=1, keepdim=True)
    return fn
