"""Evaluation: confusion matrix, mIoU, and the inference protocols (docs/method.md).

Protocols:

- ``whole``: the whole image in one forward pass (standard for VOC).
- ``sliding``: overlapping ``window`` crops every ``stride`` pixels; the image is padded
  (bottom/right, zeros in normalised space) when smaller than the window, and each pixel's
  probabilities are averaged over the windows that cover it (standard for Cityscapes).
- ``center``: image and label are cropped to ``window`` around the centre, then ``whole``.
- ``random-crop``: image and label are cropped to ``window`` at a seeded random position, then
  ``whole``. This is what the reference scores (one random crop per validation image).

Crops never pad: an image smaller than the window keeps its size along that side.

Multi-scale and flip testing average softmax probabilities: each view is resized / flipped back
to the input size (bilinear, align_corners=True) before averaging.

One path serves training, ``prcl eval`` and the Predictor: :func:`dense_maps` (model -> softmax
probabilities at the input size, plus optional extra maps) -> :func:`average_views` (scales x
flips x sliding windows) -> argmax -> :class:`ConfusionMatrix`. :func:`evaluate_model` scores a
dataset; under torchrun each rank scores every world_size-th image and the counts are summed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from prcl.data.transforms import as_pair
from prcl.engine.distributed import is_distributed, rank, world_size
from prcl.engine.sampling import ignore_stop_signals
from prcl.engine.uncertainty import UncertaintyMeter

if TYPE_CHECKING:
    from prcl.config import Config

PROTOCOLS = ("whole", "sliding", "center", "random-crop")
INFERENCE_PROTOCOLS = ("whole", "sliding")  # the ones that run the model; the others crop first

MapFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# confusion matrix
# --------------------------------------------------------------------------------------------


class ConfusionMatrix:
    """A (C, C) int64 count matrix on ``device``: rows are ground-truth classes, columns predictions.

    Labels below 0 (``-1``, the package's ignore value) are not counted. ``all_reduce`` sums the
    counts over ranks when a process group is initialised (call it once, after the last update).
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: pred (N, H, W) int64 in [0, C), target (N, H, W) int64 with -1 = ignore."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = pred.to(self.matrix.device, torch.int64).reshape(-1)
        target = target.to(self.matrix.device, torch.int64).reshape(-1)
        valid = target >= 0
        pred, target = pred[valid], target[valid]
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(
                f"label {int(target.max())} is out of range for {self.num_classes} classes (use -1 to ignore)"
            )
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op without an initialised process group)."""
        if is_distributed():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def iou(self) -> torch.Tensor:
        """(C,) float64 IoU per class; NaN for a class absent from both ground truth and prediction."""
        matrix = self.matrix.double()
        intersection = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, math.nan))

    def present(self) -> torch.Tensor:
        """(C,) bool: the classes that occur in the ground truth."""
        return self.matrix.sum(1) > 0

    def miou(self, average: str = "present") -> float:
        """Mean IoU.

        ``average="present"`` (our default): mean over the classes that occur in the ground truth
        (a class only predicted, never labeled, does not count; NaN when nothing was labeled).
        ``average="all"``: the reference's plain mean over all C classes, NaN when any class is
        absent from both ground truth and prediction.
        """
        iou = self.iou()
        if average == "present":
            present = self.present()
            return float(iou[present].mean()) if bool(present.any()) else math.nan
        if average == "all":
            return float(iou.mean())
        raise ValueError(f"average must be 'present' or 'all', got {average!r}")

    def pixel_accuracy(self) -> float:
        """Correct pixels / labeled pixels (NaN when nothing was labeled)."""
        total = int(self.matrix.sum())
        return int(self.matrix.diagonal().sum()) / total if total else math.nan


# --------------------------------------------------------------------------------------------
# inference protocols
# --------------------------------------------------------------------------------------------


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

    def map_fn(x: torch.Tensor) -> torch.Tensor:
        output = model(x)
        logits = as_logits(output).float()
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} class scores, expected {num_classes}")
        probabilities = _resize(logits, x.shape[-2:]).softmax(dim=1)
        if extra is None:
            return probabilities
        return torch.cat([probabilities, _resize(extra(output).float(), x.shape[-2:])], dim=1)

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


# --------------------------------------------------------------------------------------------
# evaluation loop
# --------------------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], Any],
    loader: Iterable[dict[str, Any]],
    num_classes: int,
    device: torch.device | str,
    protocol: str = "whole",
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    progress: bool = False,
    seed: int = 0,
    ids: Sequence[int] | None = None,
    variance: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Score ``model`` over this rank's ``loader`` with a confusion matrix summed over ranks.

    The loader yields dicts with "image" float (N, 3, H, W) and "mask" int (N, H, W), -1 = ignore
    (a dataset's items, collated). ``model`` is called as it is (put it in eval mode first; see
    :func:`evaluate_model`). "random-crop" draws batch k's crop from a generator seeded with
    ``seed`` and ``ids[k]`` (default k): the dataset index, so the crops do not depend on how the
    images are split over ranks.

    ``variance(output)`` (optional; PRCL's probability head: the mean variance (N, 1, h', w') of
    the model's output) adds "uncertainty": how well that variance and the softmax baselines find
    the prediction's errors, and the softmax's calibration (prcl.engine.uncertainty), over the
    scored pixels, the variance averaged over the views like the probabilities.

    Returns a JSON-ready dict: miou (over classes present in the ground truth), miou_all_classes
    (the reference's mean over all classes; None when a class is absent), per_class_iou (list,
    None for absent classes), pixel_accuracy, protocol, flip, scales, images (over all ranks), and
    uncertainty with ``variance``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    device = torch.device(device)
    inference_protocol = protocol if protocol in INFERENCE_PROTOCOLS else "whole"
    map_fn = dense_maps(model, num_classes, extra=variance)
    confusion = ConfusionMatrix(num_classes, device)
    meter = UncertaintyMeter(num_classes, device) if variance is not None else None
    images = torch.zeros((), dtype=torch.int64, device=device)
    batches = loader
    if progress and rank() == 0:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"eval ({protocol})", leave=False, dynamic_ncols=True)
    for k, batch in enumerate(batches):
        image = batch["image"].to(device, non_blocking=True).float()
        label = batch["mask"].to(device, non_blocking=True).long()
        generator = None
        if protocol == "random-crop":
            generator = torch.Generator().manual_seed((seed << 32) + (ids[k] if ids is not None else k))
        image, label = crop_for_protocol(image, label, protocol, window, generator)
        maps = average_views(map_fn, image, inference_protocol, window, stride, flip, scales)
        probabilities = maps[:, :num_classes]
        confusion.update(probabilities.argmax(dim=1), label)
        if meter is not None:
            meter.update(probabilities, label, maps[:, num_classes])
        images += image.shape[0]

    confusion.all_reduce()
    if is_distributed():
        dist.all_reduce(images, op=dist.ReduceOp.SUM)
    uncertainty = {}
    if meter is not None:
        meter.all_reduce()
        uncertainty = {"uncertainty": meter.result()}
    return {
        "miou": _finite_or_none(confusion.miou("present")),
        "miou_all_classes": _finite_or_none(confusion.miou("all")),
        "per_class_iou": [_finite_or_none(float(v)) for v in confusion.iou().tolist()],
        "pixel_accuracy": _finite_or_none(confusion.pixel_accuracy()),
        "protocol": protocol,
        "flip": bool(flip),
        "scales": [float(s) for s in scales],
        "images": int(images),
        **uncertainty,
    }


def mean_variance(probability_head: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The probability head's variance averaged over its dimensions, from a segmenter's output: (N, 1, h, w)."""
    def fn(output: Any) -> torch.Tensor:
        return probability_head(output.features).float().mean(dim=1, keepdim=True)
    return fn


def evaluate_model(
    model: nn.Module, dataset: Dataset, cfg: Config, device: torch.device | str, progress: bool = False,
    probability_head: nn.Module | None = None,
) -> dict[str, Any]:
    """mIoU of ``model`` on ``dataset`` under ``cfg.eval``'s protocol (the model is left in eval mode).

    ``cfg`` is a prcl Config (reads ``eval.protocol/window/stride/flip/scales``,
    ``data.num_classes`` and ``data.num_workers``); dataset items are dicts with "image" (3, H, W)
    and "mask" (H, W). Under a process group each rank scores the images
    ``range(rank, len(dataset), world_size)``, once each, and the counts are summed over ranks,
    so every rank returns the same result, with ``images == len(dataset)``. With a
    ``probability_head`` (PRCL's, applied to the model's feature F) the result has the
    uncertainty measures. See :func:`evaluate`.
    """
    model.eval()
    variance = None
    if probability_head is not None:
        probability_head.eval()
        variance = mean_variance(probability_head)
    ids = range(rank(), len(dataset), world_size())
    loader = DataLoader(Subset(dataset, ids), batch_size=1, num_workers=cfg.data.num_workers,
                        worker_init_fn=ignore_stop_signals)  # a stop signal is the trainer's to handle
    e = cfg.eval
    return evaluate(model, loader, cfg.data.num_classes, device, e.protocol, e.window, e.stride, e.flip,
                    tuple(e.scales), progress=progress, ids=ids, variance=variance)
