"""The confusion matrix of a segmentation, and the mIoU and pixel accuracy read from it."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from prcl.distributed import is_distributed


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
        ``average="all"``: the release's plain mean over all C classes, NaN when any class is
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
