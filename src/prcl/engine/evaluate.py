"""Evaluation: a model scored over a dataset under an inference protocol (prcl.infer.protocols).

:func:`evaluate` runs the protocol's path (:func:`~prcl.infer.protocols.dense_maps` ->
:func:`~prcl.infer.protocols.average_views` -> :func:`~prcl.infer.protocols.class_map`) over a loader into a
:class:`~prcl.metrics.ConfusionMatrix`; :func:`evaluate_model` scores a dataset; under torchrun each
rank scores every world_size-th image and the counts are summed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from prcl.distributed import is_distributed, rank, world_size
from prcl.engine.sampling import LoaderBatches, ignore_stop_signals, loader_workers
from prcl.infer.protocols import (
    INFERENCE_PROTOCOLS,
    PROTOCOLS,
    average_views,
    class_map,
    crop_for_protocol,
    dense_maps,
    mean_variance,
)
from prcl.metrics import ConfusionMatrix, UncertaintyMeter

if TYPE_CHECKING:
    from prcl.config import Config


class EvaluationStopped(Exception):
    """``evaluate``'s ``stop`` said so between two batches: the evaluation was abandoned."""


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
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Score ``model`` over this rank's ``loader`` with a confusion matrix summed over ranks.

    The loader yields dicts with "image" float (N, 3, H, W) and "mask" int (N, H, W), -1 = ignore
    (a dataset's items, collated). ``model`` is called as it is (put it in eval mode first; see
    :func:`evaluate_model`). "random-crop" draws batch k's crop from a generator seeded with
    ``seed`` and ``ids[k]`` (default k): the dataset index, so the crops do not depend on how the
    images are split over ranks.

    ``variance(output)`` (optional; PRCL's probability head: the mean variance (N, 1, h', w') of
    the model's output) adds "uncertainty": how well that variance and the softmax baselines find
    the prediction's errors, and the softmax's calibration (prcl.metrics.uncertainty), over the
    scored pixels, the variance averaged over the views like the probabilities.

    Returns a JSON-ready dict: miou (over classes present in the ground truth), miou_all_classes
    (the release's mean over all classes; None when a class is absent), per_class_iou (list,
    None for absent classes), pixel_accuracy, protocol, flip, scales, images (over all ranks), and
    uncertainty with ``variance``.

    ``stop`` (optional, one process only: ranks could not agree where to stop without a collective per batch)
    is asked before each batch; when it returns True the evaluation is abandoned with :class:`EvaluationStopped`
    (the trainer passes "a stop signal arrived").
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
        if stop is not None and stop():
            raise EvaluationStopped
        image = batch["image"].to(device, non_blocking=True).float()
        label = batch["mask"].to(device, non_blocking=True).long()
        generator = None
        if protocol == "random-crop":
            generator = torch.Generator().manual_seed((seed << 32) + (ids[k] if ids is not None else k))
        image, label = crop_for_protocol(image, label, protocol, window, generator)
        maps = average_views(map_fn, image, inference_protocol, window, stride, flip, scales)
        probabilities = maps[:, :num_classes]
        prediction = class_map(probabilities)
        confusion.update(prediction, label)
        if meter is not None:
            meter.update(probabilities, label, maps[:, num_classes], prediction=prediction)
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


def evaluate_model(
    model: nn.Module, dataset: Dataset, cfg: Config, device: torch.device | str, progress: bool = False,
    probability_head: nn.Module | None = None, stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """mIoU of ``model`` on ``dataset`` under ``cfg.eval``'s protocol (the model is left in eval mode).

    ``cfg`` is a prcl Config (reads ``eval.protocol/window/stride/flip/scales``,
    ``data.num_classes`` and ``data.num_workers``); dataset items are dicts with "image" (3, H, W)
    and "mask" (H, W). Under a process group each rank scores the images
    ``range(rank, len(dataset), world_size)``, once each, and the counts are summed over ranks,
    so every rank returns the same result, with ``images == len(dataset)``. With a
    ``probability_head`` (PRCL's, applied to the model's feature F) the result has the
    uncertainty measures. ``stop``: see :func:`evaluate`. The loader's workers are stopped before this returns
    or raises.
    """
    model.eval()
    variance = None
    if probability_head is not None:
        probability_head.eval()
        variance = mean_variance(probability_head)
    ids = range(rank(), len(dataset), world_size())
    loader = DataLoader(Subset(dataset, ids), batch_size=1, num_workers=loader_workers(cfg.data.num_workers),
                        worker_init_fn=ignore_stop_signals)  # a stop signal is this process's to handle
    e = cfg.eval
    with LoaderBatches(loader) as batches:
        return evaluate(model, batches, cfg.data.num_classes, device, e.protocol, e.window, e.stride, e.flip,
                        tuple(e.scales), progress=progress, ids=ids, variance=variance, stop=stop)
