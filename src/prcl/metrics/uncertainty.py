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
MAX_BINS = 1 << 20  # a count's slots (3 (3 bins + calibration bins) at most) stay below 2^24, exact in float32


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


def _bin_(values: torch.Tensor, bins: int) -> torch.Tensor:
    """In place: values in [0, 1] (float32 or float64) -> their bin among ``bins`` equal bins, as whole numbers of the
    same dtype (NaN -> bin 0, +inf -> the last). For a power-of-two ``bins`` (the histograms' 4096) the product is
    exact in either dtype; other counts (the calibration's 15) multiply float32 values in float64, where the
    rounding of the product cannot carry a value just below a bin edge over it."""
    if values.dtype == torch.float32 and bins & (bins - 1):
        values.copy_(values.double().mul_(bins).floor_())
    else:
        values.mul_(bins).floor_()
    return values.nan_to_num_(0.0).clamp_(0, bins - 1)


def _work(work: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` for intermediate values: a view of ``work[name]`` (flat, at least that large) when a
    work space is given, else a new one. The meter keeps its queue's intermediates between counts: a new
    megabyte-sized tensor at every count comes and goes through the allocator's page faults, which cost as
    much as the counting (docs/benchmarks.md)."""
    numel = math.prod(shape)
    if work is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return work[name][:numel].view(shape)


def _slot_counts(rows: torch.Tensor, right: torch.Tensor, scored: torch.Tensor | None, half: int,
                 work: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Count slots over the wrong and the right pixels in one scatter-add.

    rows: (K, P) whole numbers in floats, each pixel's slot in [0, half) for each of K rows (a bin plus the row's
    offset); right, scored: (P,) bool (scored None: all). The shifted slots reach ``3 half``, which must be exact in
    rows' dtype (below 2^24 for float32: the meter checks its bin count).
    Returns the flat int64 slots (K P,), a pixel's slot moved by ``half`` when it is right and by ``2 half`` when
    it is not scored (``rows`` is overwritten), and the counts (2, half), int32 (a batch has fewer than 2^31
    pixels): row 0 over the wrong pixels, row 1 over the right ones. One scatter-add of int32 ones, no pixel
    gathered: on a CPU, bincount first scans its input for the minimum and the maximum, and int64 or expanded
    ones scatter slower (docs/benchmarks.md). ``work``: see :func:`_work` (its "ones" hold ones)."""
    shift = right.reshape(1, -1) * half
    if scored is not None:
        shift = torch.where(scored.reshape(1, -1), shift, 2 * half)
    rows.add_(shift)
    index = _work(work, "index", (rows.numel(),), torch.int64, rows.device)
    index.copy_(rows.reshape(-1))  # whole numbers: the conversion is exact
    ones = _work(work, "ones", (rows.numel(),), torch.int32, rows.device)
    if work is None:
        ones.fill_(1)
    counts = torch.zeros(3 * half, dtype=torch.int32, device=index.device).scatter_add_(0, index, ones)
    return index, counts[:2 * half].view(2, half)


def error_histograms(scores: torch.Tensor, wrong: torch.Tensor, bins: int,
                     scored: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of ``scores`` (values in [0, 1]) over the wrong pixels (row 0) and the right ones (row 1).

    scores: the shape of ``wrong`` (any, bool), or (S, *wrong.shape): S scores of the same pixels;
    scored: optional bool mask of wrong's shape, the pixels to count (default all). Returns int64
    (2, bins), or (S, 2, bins) for S stacked scores, from one scatter-add (:func:`_slot_counts`).
    """
    single = scores.shape == wrong.shape
    stacked = scores.reshape(1 if single else scores.shape[0], wrong.numel())
    num_scores = stacked.shape[0]
    rows = _bin_(stacked.to(torch.float64, copy=True), bins)  # float64: slots exact whatever the bin count
    rows += bins * torch.arange(num_scores, device=stacked.device)[:, None]
    _, counts = _slot_counts(rows, ~wrong.reshape(-1), scored, num_scores * bins)
    counts = counts.long().view(2, num_scores, bins).transpose(0, 1)
    return counts[0] if single else counts


def error_auroc(scores: torch.Tensor, wrong: torch.Tensor, bins: int = 4096) -> float | None:
    """AUROC of ``scores`` (any shape, values in [0, 1]) for ``wrong`` (same shape, bool), as the meter bins it."""
    return auroc_from_histograms(*error_histograms(scores, wrong, bins))


def normalised_entropy(probabilities: torch.Tensor, dim: int = 1, terms: torch.Tensor | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax entropy over ``dim`` divided by log C: 0 = certain, 1 = every class equally likely.

    ``-p log p`` with p = 0 counting 0 (its log taken at float32's smallest normal); twice as fast on a CPU as
    ``torch.special.entr`` (docs/benchmarks.md), from which it differs by about an ulp per term. ``terms``
    (float32, the shape of probabilities) and ``out`` (the result's shape): optional tensors to write the
    terms and the result into (the meter's work space)."""
    p = probabilities.float()
    if terms is None:
        terms = torch.empty_like(p)
    torch.clamp(p, min=torch.finfo(p.dtype).tiny, out=terms).log_().mul_(p)  # one tensor of p's size, not three
    return torch.sum(terms, dim=dim, out=out).div_(-math.log(max(p.shape[dim], 2)))


class UncertaintyMeter:
    """Histograms of uncertainty scores over wrong and right pixels, and the softmax's calibration bins.

    ``update(probabilities, target, variance=None)``: probabilities (N, C, H, W) softmax, target
    (N, H, W) int64 with -1 = not scored, variance (N, H, W) in [0, 1] or None. ``result()`` gives a
    JSON-ready dict: ``auroc_<score>`` for each score seen, ``ece``, ``error_rate`` and ``pixels``.

    Counting takes about two dozen operations over the pixels, whatever their number; evaluation updates
    once per image, so batches smaller than ``queue_pixels`` are copied into a queue and counted together
    when it is full, or when the counts are read (``histograms``, ``calibration``, ``seen``, ``result()``,
    ``all_reduce()``). At the demo's 96 x 96 images that is one count per 7 images (docs/benchmarks.md).
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", bins: int = 4096,
                 calibration_bins: int = 15, queue_pixels: int = 1 << 16) -> None:
        if not 1 <= bins <= MAX_BINS or not 1 <= calibration_bins <= MAX_BINS:
            raise ValueError(f"bins and calibration_bins must be in 1..{MAX_BINS} (the slots of a count are float32 "
                             f"whole numbers), got {bins} and {calibration_bins}")
        self.num_classes = num_classes
        self.bins = bins
        self.device = torch.device(device)
        with torch.inference_mode(False):  # ordinary tensors, counted into inside or outside inference mode
            self._counts = torch.zeros(len(SCORES), 2, bins, dtype=torch.int64, device=device)
            # per calibration bin: pixels, right pixels, sum of confidences
            self._calibration = torch.zeros(3, calibration_bins, dtype=torch.float64, device=device)
        self._seen = {name: False for name in SCORES}
        self.queue_pixels = queue_pixels
        self._queue: dict[str, torch.Tensor] = {}  # made at the first queued batch
        self._work: dict[str, torch.Tensor] = {}  # the counting's intermediates for the queue (see _work)
        self._queued = 0  # pixels waiting in the queue
        self._queued_variance = False  # whether they came with a variance

    @property
    def histograms(self) -> dict[str, torch.Tensor]:
        """Per score, its (2, bins) counts over the wrong (row 0) and the right pixels (views of one tensor)."""
        self._flush()
        return dict(zip(SCORES, self._counts))

    @property
    def calibration(self) -> torch.Tensor:
        """(3, calibration bins) float64: pixels, right pixels and the sum of their confidences, per bin."""
        self._flush()
        return self._calibration

    @property
    def seen(self) -> dict[str, bool]:
        """Per score, whether any update gave it."""
        self._flush()
        return self._seen

    @torch.no_grad()
    def update(self, probabilities: torch.Tensor, target: torch.Tensor, variance: torch.Tensor | None = None,
               prediction: torch.Tensor | None = None) -> None:
        """Count one batch, now or with the queue (the tensors are copied: the caller may reuse them). Tensors on
        another device are brought to the meter's. ``prediction`` (N, H, W) int64: the class map, when the caller
        has it (evaluation does; it is ``probabilities.max(dim=1).indices``), which saves a max over classes."""
        n, classes, pixels = probabilities.shape[0], probabilities.shape[1], target.numel()
        if classes != self.num_classes:
            raise ValueError(f"UncertaintyMeter(num_classes={self.num_classes}) got probabilities of {classes} classes")
        if pixels == 0:
            return
        if prediction is None:
            prediction = probabilities.max(dim=1).indices
        with_variance = variance is not None
        if self._queued and (with_variance != self._queued_variance or self._queued + pixels > self.queue_pixels):
            self._flush()
        flat = probabilities.reshape(n, classes, pixels // n).transpose(0, 1)  # (C, N, h w): target's pixel order
        if 2 * pixels > self.queue_pixels:  # large enough to count alone (the queue would hold it alone)
            self._count(flat.reshape(classes, pixels).to(self.device, torch.float32), target.reshape(-1).to(self.device),
                        prediction.reshape(-1).to(self.device),
                        variance.reshape(-1).to(self.device, torch.float32) if with_variance else None)
            return
        if not self._queue:
            self._make_queue()
        start, end = self._queued, self._queued + pixels
        self._queue["probabilities"][:, start:end].view(classes, n, -1).copy_(flat)
        self._queue["target"][start:end] = target.reshape(-1)
        self._queue["prediction"][start:end] = prediction.reshape(-1)
        if with_variance:
            self._queue["variance"][start:end] = variance.reshape(-1)
        self._queued, self._queued_variance = end, with_variance

    def _make_queue(self) -> None:
        """The queue and its work space, as ordinary tensors even under torch.inference_mode (counts read outside
        it write into them)."""
        size, rows = self.queue_pixels, len(SCORES) + 1

        def empty(numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.empty(numel, dtype=dtype, device=self.device)
        with torch.inference_mode(False):
            self._queue = {"probabilities": empty(self.num_classes * size).view(self.num_classes, size),
                           "target": empty(size, torch.int64), "prediction": empty(size, torch.int64),
                           "variance": empty(size)}
            self._work = {"rows": empty(rows * size), "terms": empty(self.num_classes * size),
                          "index": empty(rows * size, torch.int64), "ones": empty(rows * size, torch.int32).fill_(1)}

    def _flush(self) -> None:
        """Count the queued pixels."""
        if self._queued:
            queued, self._queued = self._queued, 0
            self._count(self._queue["probabilities"][:, :queued], self._queue["target"][:queued],
                        self._queue["prediction"][:queued],
                        self._queue["variance"][:queued] if self._queued_variance else None, self._work)

    @torch.no_grad()
    def _count(self, probabilities: torch.Tensor, target: torch.Tensor, prediction: torch.Tensor,
               variance: torch.Tensor | None, work: dict[str, torch.Tensor] | None = None) -> None:
        """Count pixels: probabilities (C, P) float32, target and prediction (P,) int64, variance (P,) or None;
        ``work``: the queue's work space (:func:`_work`), for P up to its size.

        Every score's bins and the confidence's calibration bins are slots of one scatter-add
        (:func:`_slot_counts`): per pixel, score s in slots ``s bins + bin`` (s over the scores given,
        variance first), the confidence in ``S bins + calibration bin``."""
        confidence = probabilities.gather(0, prediction[None]).squeeze(0)
        names = SCORES if variance is not None else SCORES[1:]
        num_scores, bins, calibration_bins = len(names), self.bins, self._calibration.shape[1]
        (classes, pixels), device = probabilities.shape, probabilities.device
        # (S + 1, P) float32: the scores, then the confidence; each row becomes its bins (whole numbers, exact in
        # float32 below 2^24) plus its slot offset and the pixel's shift (see _slot_counts).
        rows = _work(work, "rows", (num_scores + 1, pixels), torch.float32, device)
        if variance is not None:
            rows[0] = variance
        torch.neg(confidence, out=rows[num_scores - 2]).add_(1.0)  # 1 - confidence, the same rounding
        normalised_entropy(probabilities, dim=0, terms=_work(work, "terms", (classes, pixels), torch.float32, device),
                           out=rows[num_scores - 1])
        rows[num_scores] = confidence
        _bin_(rows[:num_scores], bins)
        _bin_(rows[num_scores], calibration_bins)
        rows += bins * torch.arange(num_scores + 1, device=device)[:, None]
        half = num_scores * bins + calibration_bins
        index, counts = _slot_counts(rows, prediction == target, target >= 0, half, work)
        self._counts[len(SCORES) - num_scores:] += counts[:, :num_scores * bins].view(2, num_scores, bins).transpose(0, 1)
        for name in names:
            self._seen[name] = True
        # The confidence's calibration bins: pixels and right pixels counted above, confidences summed here.
        sums = torch.zeros(3 * half, dtype=torch.float64, device=index.device)
        sums.scatter_add_(0, index[-confidence.numel():], confidence.double())
        calibration_counts = counts[:, num_scores * bins:]  # (2, calibration bins): wrong, right
        self._calibration[0] += calibration_counts.sum(dim=0)
        self._calibration[1] += calibration_counts[1]
        self._calibration[2] += sums[:2 * half].view(2, half)[:, num_scores * bins:].sum(dim=0)

    def all_reduce(self) -> None:
        """Sum the counts over processes (call once, after the last update, on every process)."""
        self._flush()
        if not is_distributed():
            return
        dist.all_reduce(self._counts, op=dist.ReduceOp.SUM)
        for name in SCORES:
            seen = torch.tensor(int(self._seen[name]), device=self._counts.device)
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
            self._seen[name] = bool(seen)
        dist.all_reduce(self._calibration, op=dist.ReduceOp.SUM)

    def result(self) -> dict[str, float | int | None]:
        self._flush()
        counts, right, confidence_sum = self._calibration
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
