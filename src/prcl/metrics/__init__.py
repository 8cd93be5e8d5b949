"""Scores of a prediction against the ground truth: the confusion matrix (mIoU, pixel accuracy) and how
well a per-pixel uncertainty finds the errors (AUROC, calibration), summed over processes."""

from prcl.metrics.confusion import ConfusionMatrix
from prcl.metrics.uncertainty import (
    SCORES,
    UncertaintyMeter,
    auroc_from_histograms,
    error_auroc,
    error_histograms,
    format_uncertainty,
    normalised_entropy,
)

__all__ = [
    "SCORES",
    "ConfusionMatrix",
    "UncertaintyMeter",
    "auroc_from_histograms",
    "error_auroc",
    "error_histograms",
    "format_uncertainty",
    "normalised_entropy",
]
