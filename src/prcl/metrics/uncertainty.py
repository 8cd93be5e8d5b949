"""How well a per-pixel uncertainty finds the prediction's errors, accumulated without keeping pixels.

For every scored pixel (one with a ground truth) we know whether the prediction is wrong and have
uncertainty scores in [0, 1]: the probability head's mean variance (PRCL), ``1 - max softmax
probability`` and the softmax entropy divided by ``log C``. :class:`UncertaintyMeter` keeps, per
score, a histogram of its values over the wrong pixels and one over the right pixels
(``bins`` equal bins on [0, 1]), and the usual calibration bins of the softmax confidence. From
them:

- **AUROC** of a score for "this pixel is wrong": the probability that a wrong pixel scores higher
  than a right one, ties counting one half. Values in one histogram bin count as tied, so it is
  exact when distinct values fall in distinct bins (4096 bins: a resolution of 1/4096) and off by
  at most the fraction of pairs that share a bin otherwise. Undefined (None) when every pixel is
  right or every pixel is wrong.
- **ECE**, the expected calibration error of the softmax: over 15 equal-width bins of the
  confidence ``max p``, ``sum_b (n_b / N) |accuracy_b - mean confidence_b|``. Exact.

Counts are int64 and sums float64 on the device; ``all_reduce`` sums them over processes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from prcl.distributed import is_distributed

SCORES = ("variance", "one_minus_max_prob", "entropy")


def auroc_from_histograms(wrong: torch.Tensor, right: torch.Tensor) -> float | None:
    """P(score of a wrong pixel > score of a right one) + P(tie) / 2, from two histograms over the same bins.

    wrong, right: (bins,) counts, bin k holding the k-th smallest values. None when either is empty.
    """
    wrong, right = wrong.double(), right.double()
    num_wrong, num_right = float(wrong.sum()), float(right.sum())
    if num_wrong == 0 or num_right == 0:
        return None
    right_below = torch.cumsum(right, dim=0) - right  # right pixels in strictly lower bins
    pairs = (wrong * (right_below + 0.5 * right)).sum()
    return float(pairs) / (num_wrong * num_right)


def _bin(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Values in [0, 1] -> bin indices of ``bins`` equal bins (int64, same shape). For a power-of-two ``bins`` (the
    histograms' 4096) the float32 product is exact, so it is taken as it is; other counts (the calibration's 15)
    multiply in float64."""
    exact = values.dtype == torch.float32 and bins & (bins - 1) == 0
    return ((values if exact else values.double()) * bins).long().clamp_(0, bins - 1)


def error_histograms(scores: torch.Tensor, wrong: torch.Tensor, bins: int,
                     scored: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of ``scores`` (values in [0, 1]) over the wrong pixels (row 0) and the right ones (row 1).

    scores: the shape of ``wrong`` (any, bool), or (S, *wrong.shape): S scores of the same pixels;
    scored: optional bool mask of wrong's shape, the pixels to count (default all). Returns
    (2, bins), or (S, 2, bins) for S stacked scores, from one scatter-add of ones (no pixel gathered; a CPU's
    bincount first scans its input for the minimum and the maximum, which costs as much again).
    """
    single = scores.shape == wrong.shape
    stacked = scores.reshape(1 if single else scores.shape[0], wrong.numel())
    index, slots = _histogram_slots(stacked, wrong, bins, scored)
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand_as(index)
    counts = torch.zeros(slots + 1, dtype=torch.int64, device=index.device).scatter_add_(0, index, ones)
    counts = counts[:slots].view(2, stacked.shape[0], bins)
    counts = counts.transpose(0, 1)
    return counts[0] if single else counts


def _histogram_slots(stacked: torch.Tensor, wrong: torch.Tensor, bins: int,
                     scored: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The bincount slot of each (score, pixel) of ``stacked`` (S, P) for histograms (2, S, bins), flat, and
    the number of slots: score s's bin b is slot ``s * bins + b`` over the wrong pixels, ``(S + s) * bins + b``
    over the right ones; pixels not ``scored`` go to one extra slot (the last), to be dropped."""
    num_scores = stacked.shape[0]
    slots = 2 * num_scores * bins
    offsets = bins * torch.arange(num_scores, device=stacked.device)[:, None]
    index = _bin(stacked, bins) + offsets + num_scores * bins * (~wrong.reshape(1, -1)).long()
    if scored is not None:
        index = torch.where(scored.reshape(1, -1), index, slots)
    return index.reshape(-1), slots


def error_auroc(scores: torch.Tensor, wrong: torch.Tensor, bins: int = 4096) -> float | None:
    """AUROC of ``scores`` (any shape, values in [0, 1]) for ``wrong`` (same shape, bool), as the meter bins it."""
    return auroc_from_histograms(*error_histograms(scores, wrong, bins))


def normalised_entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax entropy over ``dim`` divided by log C: 0 = certain, 1 = every class equally likely.

    ``-p log p`` with p = 0 counting 0 (its log taken at float32's smallest normal); twice as fast on a CPU as
    ``torch.special.entr`` (docs/benchmarks.md), from which it differs by about an ulp per term."""
    p = probabilities.float()
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=dim) / math.log(max(p.shape[dim], 2))


class UncertaintyMeter:
    """Histograms of uncertainty scores over wrong and right pixels, and the softmax's calibration bins.

    ``update(probabilities, target, variance=None)``: probabilities (N, C, H, W) softmax, target
    (N, H, W) int64 with -1 = not scored, variance (N, H, W) in [0, 1] or None. ``result()`` gives a
    JSON-ready dict: ``auroc_<score>`` for each score seen, ``ece``, ``error_rate`` and ``pixels``.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", bins: int = 4096,
                 calibration_bins: int = 15) -> None:
        self.num_classes = num_classes
        self.bins = bins
        self.histograms = {name: torch.zeros(2, bins, dtype=torch.int64, device=device) for name in SCORES}
        self.seen = {name: False for name in SCORES}
        # per calibration bin: pixels, right pixels, sum of confidences
        self.calibration = torch.zeros(3, calibration_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, probabilities: torch.Tensor, target: torch.Tensor, variance: torch.Tensor | None = None,
               prediction: torch.Tensor | None = None) -> None:
        """Count one batch. ``prediction`` (N, H, W) int64: the class map, when the caller has it
        (evaluation does; it is ``probabilities.max(dim=1).indices``), which saves a max over classes."""
        scored = target >= 0
        probabilities = probabilities.float()
        if prediction is None:
            confidence, prediction = probabilities.max(dim=1)
        else:
            confidence = probabilities.gather(1, prediction[:, None]).squeeze(1)
        wrong = prediction != target
        scores = {"one_minus_max_prob": 1.0 - confidence, "entropy": normalised_entropy(probabilities)}
        if variance is not None:
            scores["variance"] = variance.float().reshape(confidence.shape)
        counts = error_histograms(torch.stack(list(scores.values())), wrong, self.bins, scored)  # (S, 2, bins)
        for name, histogram in zip(scores, counts):
            self.histograms[name] += histogram
            self.seen[name] = True
        # The confidence's calibration bins over the wrong and the right pixels, counted and summed.
        bins = self.calibration.shape[1]
        index, slots = _histogram_slots(confidence.reshape(1, -1), wrong, bins, scored)
        pixels = torch.bincount(index, minlength=slots + 1)[:slots].view(2, bins)
        confidence_sums = torch.bincount(index, weights=confidence.reshape(-1).double(), minlength=slots + 1)
        self.calibration[0] += pixels.sum(dim=0)
        self.calibration[1] += pixels[1]
        self.calibration[2] += confidence_sums[:slots].view(2, bins).sum(dim=0)

    def all_reduce(self) -> None:
        """Sum the counts over processes (call once, after the last update, on every process)."""
        if not is_distributed():
            return
        for name in SCORES:
            dist.all_reduce(self.histograms[name], op=dist.ReduceOp.SUM)
            seen = torch.tensor(int(self.seen[name]), device=self.histograms[name].device)
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
            self.seen[name] = bool(seen)
        dist.all_reduce(self.calibration, op=dist.ReduceOp.SUM)

    def result(self) -> dict[str, float | int | None]:
        counts, right, confidence_sum = self.calibration
        pixels = float(counts.sum())
        out: dict[str, float | int | None] = {}
        for name in SCORES:
            if self.seen[name]:
                wrong_histogram, right_histogram = self.histograms[name]
                out[f"auroc_{name}"] = auroc_from_histograms(wrong_histogram, right_histogram)
        if pixels == 0:
            out.update(ece=None, error_rate=None, pixels=0)
            return out
        filled = counts > 0
        gaps = (right[filled] / counts[filled] - confidence_sum[filled] / counts[filled]).abs()
        out["ece"] = float((counts[filled] / pixels * gaps).sum())
        out["error_rate"] = 1.0 - float(right.sum()) / pixels
        out["pixels"] = int(pixels)
        return out


def format_uncertainty(measures: dict) -> str:
    """One line: how well each per-pixel uncertainty finds the errors (AUROC), and the softmax's ECE."""
    def value(key: str) -> str:
        number = measures.get(key)
        return "undefined" if number is None else f"{number:.3f}"
    return (f"errors found by (AUROC, 0.5 = chance): variance {value('auroc_variance')}, "
            f"1 - max softmax {value('auroc_one_minus_max_prob')}, softmax entropy {value('auroc_entropy')}; "
            f"softmax ECE {value('ece')}")
