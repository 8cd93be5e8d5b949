"""Uncertainty quality measures: AUROC of a score for the prediction's errors, and the softmax's ECE."""

import math

import pytest
import torch

from prcl.metrics.uncertainty import UncertaintyMeter, auroc_from_histograms, error_auroc, error_histograms
from prcl.methods.mean_teacher import pseudo_label_probe

from tolerances import EPS32, EPS64, summation_bound


def direct_auroc(wrong_scores: torch.Tensor, right_scores: torch.Tensor) -> float:
    """Every (wrong, right) pair: 1 when the wrong pixel scores higher, 1/2 on a tie."""
    difference = wrong_scores.double()[:, None] - right_scores.double()[None, :]
    return float(((difference > 0).double() + 0.5 * (difference == 0).double()).mean())


def direct_ece(confidence: torch.Tensor, right: torch.Tensor, bins: int = 15) -> float:
    total = 0.0
    index = (confidence.double() * bins).long().clamp(0, bins - 1)
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.double().mean() * abs(right[members].double().mean() - confidence[members].double().mean())
    return float(total)


def meter_with(variance: torch.Tensor, wrong: torch.Tensor, bins: int = 4096) -> UncertaintyMeter:
    """A meter fed pixels whose prediction is wrong where ``wrong`` is True, with the given variances."""
    n = variance.numel()
    probabilities = torch.zeros(1, 2, 1, n)
    probabilities[0, 0, 0] = 0.7
    probabilities[0, 1, 0] = 0.3
    target = torch.where(wrong, 1, 0).view(1, 1, n)
    meter = UncertaintyMeter(num_classes=2, bins=bins)
    meter.update(probabilities, target, variance.view(1, 1, n))
    return meter


def test_auroc_of_a_hand_made_case_with_a_tie():
    # wrong 0.9, 0.5; right 0.1, 0.5, 0.3: 0.9 beats all three, 0.5 beats two and ties one -> 5.5 / 6
    variance = torch.tensor([0.9, 0.5, 0.1, 0.5, 0.3])
    wrong = torch.tensor([True, True, False, False, False])
    # exact counts of pairs (half-integers in float64), then one division each side
    assert meter_with(variance, wrong).result()["auroc_variance"] == pytest.approx(5.5 / 6, abs=4 * EPS64)


def test_auroc_equals_the_pairwise_count_on_random_values_with_ties():
    g = torch.Generator().manual_seed(0)
    bins = 64
    # values on bin centres, so a bin holds one distinct value: the histogram count is exact
    variance = (torch.randint(0, bins, (3000,), generator=g).double() + 0.5) / bins
    wrong = torch.rand(3000, generator=g) < 0.2 + 0.6 * variance  # higher variance, more errors
    got = meter_with(variance.float(), wrong, bins=bins).result()["auroc_variance"]
    expected = direct_auroc(variance[wrong], variance[~wrong])
    assert got == pytest.approx(expected, abs=4 * EPS64)  # exact pair counts both ways, then one division each
    assert 0.6 < got < 0.9  # informative, and the test can tell


def test_stacked_scores_bin_as_each_score_alone():
    # the meter bins its scores in one bincount: each must get the histogram it gets on its own,
    # with the bin edges (0, 1, k / bins) and a 2-d pixel layout included
    generator = torch.Generator().manual_seed(3)
    wrong = torch.rand(5, 7, generator=generator) < 0.4
    scores = torch.rand(3, 5, 7, generator=generator)
    scores[0, 0, :3] = torch.tensor([0.0, 1.0, 5 / 16])
    stacked = error_histograms(scores, wrong, 16)
    assert stacked.shape == (3, 2, 16)
    for k in range(3):
        alone = error_histograms(scores[k], wrong, 16)
        assert alone.shape == (2, 16)
        assert torch.equal(stacked[k], alone)
        assert int(alone[0].sum()) == int(wrong.sum()) and int(alone[1].sum()) == int((~wrong).sum())
    assert stacked[0, int(wrong[0, 2]) ^ 1, 5] >= 1  # 5/16 falls in bin 5
    # a mask of scored pixels counts exactly those pixels
    scored = torch.rand(5, 7, generator=generator) < 0.6
    masked = error_histograms(scores, wrong, 16, scored)
    for k in range(3):
        assert torch.equal(masked[k], error_histograms(scores[k][scored], wrong[scored], 16))


def test_auroc_is_undefined_with_one_kind_of_pixel_only():
    variance = torch.tensor([0.2, 0.4, 0.6])
    assert meter_with(variance, torch.zeros(3, dtype=torch.bool)).result()["auroc_variance"] is None
    assert meter_with(variance, torch.ones(3, dtype=torch.bool)).result()["auroc_variance"] is None
    assert auroc_from_histograms(torch.zeros(4), torch.ones(4)) is None


def test_softmax_baselines_and_ece_against_direct_computations():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, generator=g) * 2
    probabilities = logits.softmax(dim=1)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[0, :2] = -1  # not scored
    meter = UncertaintyMeter(num_classes=4, bins=1 << 20)
    meter.update(probabilities[:1], target[:1])
    meter.update(probabilities[1:], target[1:])  # accumulates over batches
    result = meter.result()

    scored = target >= 0
    confidence, prediction = probabilities.max(dim=1)
    wrong = (prediction != target)[scored]
    confidence = confidence[scored]
    p = probabilities.movedim(1, -1)[scored]
    entropy = -(p * p.log()).sum(-1) / math.log(4)
    assert result["pixels"] == int(scored.sum())
    assert result["error_rate"] == pytest.approx(float(wrong.double().mean()))
    # the histograms may tie (or, with the scores rounded otherwise, swap) the pairs closer than a bin plus the
    # scores' float32 rounding: off by at most the share of those pairs (none here), plus two float64 divisions
    close = 1 / (1 << 20) + summation_bound(1.0, 4 + 4)
    for name, score in (("one_minus_max_prob", 1 - confidence), ("entropy", entropy)):
        gaps = (score[wrong].double()[:, None] - score[~wrong].double()[None, :]).abs()
        assert result[f"auroc_{name}"] == pytest.approx(direct_auroc(score[wrong], score[~wrong]),
                                                        abs=float((gaps <= close).double().mean()) + 4 * EPS64), name
    # float64 sums of at most 128 confidences per bin and 15 bins' gaps, in other orders
    assert result["ece"] == pytest.approx(direct_ece(confidence, ~wrong), abs=summation_bound(1.0, 128 + 2 * 15, EPS64))
    assert "auroc_variance" not in result  # no variance given: not reported


def test_a_given_prediction_counts_as_the_meters_own():
    """Evaluation hands the meter its class map (saving a max): the counts must be those of the meter's own max."""
    g = torch.Generator().manual_seed(2)
    probabilities = (torch.randn(2, 5, 9, 7, generator=g) * 3).softmax(dim=1)
    probabilities[0, :, 0, :3] = 0.2  # ties: every class equally likely
    target = torch.randint(-1, 5, (2, 9, 7), generator=g)
    variance = torch.rand(2, 9, 7, generator=g)
    own, given = UncertaintyMeter(num_classes=5), UncertaintyMeter(num_classes=5)
    own.update(probabilities, target, variance)
    given.update(probabilities, target, variance, prediction=probabilities.max(dim=1).indices)
    assert given.result() == own.result()
    assert all(torch.equal(given.histograms[name], own.histograms[name]) for name in own.histograms)
    assert torch.equal(given.calibration, own.calibration)


def test_queued_batches_count_as_batches_counted_alone():
    """Small batches wait in a queue (copies) and are counted together: the same counts as counting each batch
    when it comes, with batches of other sizes, one larger than the queue, a batch without a variance between
    batches with one, the caller overwriting its tensors after each update, and counts read half-way."""
    g = torch.Generator().manual_seed(4)
    classes = 5
    alone = UncertaintyMeter(classes, queue_pixels=0)  # every batch is larger than the queue: counted at once
    queued = UncertaintyMeter(classes, queue_pixels=200)
    for k, (n, h, w) in enumerate([(1, 7, 9), (2, 5, 6), (1, 3, 4), (3, 10, 11), (1, 8, 8), (2, 4, 5), (1, 6, 7)]):
        probabilities = (torch.randn(n, classes, h, w, generator=g) * 3).softmax(dim=1)
        target = torch.randint(-1, classes, (n, h, w), generator=g)
        variance = None if k == 4 else torch.rand(n, h, w, generator=g)
        for meter in (alone, queued):
            meter.update(probabilities, target, variance, prediction=probabilities.max(dim=1).indices)
        probabilities.fill_(1 / classes)  # the caller reuses its tensors
        target.fill_(0)
        if k == 2:
            assert torch.equal(queued.histograms["entropy"], alone.histograms["entropy"])  # reading counts them
    assert queued.result().keys() == alone.result().keys()
    for name in alone.histograms:
        assert torch.equal(queued.histograms[name], alone.histograms[name]), name
    assert torch.equal(queued.calibration[:2], alone.calibration[:2])
    pixels = float(alone.calibration[0].sum())
    # the confidences' float64 sums, grouped by other batches: a sum of at most `pixels` terms below 1 each
    assert torch.allclose(queued.calibration[2], alone.calibration[2], rtol=0, atol=summation_bound(pixels, int(pixels), EPS64))
    assert alone.seen == queued.seen == {"variance": True, "one_minus_max_prob": True, "entropy": True}


def test_meter_on_evaluation_maps_and_at_its_edges():
    """What evaluation hands the meter (channels-last float16 maps, the probabilities a slice of them, the variance
    a strided channel) counts as contiguous float32 copies do, queued or not; a count in inference mode can be read
    outside it; an empty batch counts nothing; a bin count that is not a power of two bins as error_histograms does;
    a wrong class count and too many bins are refused."""
    g = torch.Generator().manual_seed(6)
    classes = 4
    maps = torch.rand(2, classes + 1, 9, 11, generator=g).to(torch.float16).contiguous(memory_format=torch.channels_last)
    maps[:, :classes] = maps[:, :classes].softmax(dim=1)
    target = torch.randint(-1, classes, (2, 9, 11), generator=g)
    plain = (maps[:, :classes].float().contiguous(), target, maps[:, classes].float().contiguous())
    counts = []
    for queue_pixels, inputs in ((0, plain), (1 << 16, plain), (0, (maps[:, :classes], target, maps[:, classes])),
                                 (1 << 16, (maps[:, :classes], target, maps[:, classes]))):
        meter = UncertaintyMeter(classes, queue_pixels=queue_pixels, bins=1000)
        with torch.inference_mode():
            meter.update(*inputs)
            meter.update(torch.zeros(0, classes, 9, 11), torch.zeros(0, 9, 11, dtype=torch.long))
        counts.append(meter.histograms)  # read outside inference mode: counts the queue
        assert meter.result()["pixels"] == int((target >= 0).sum())
    assert all(torch.equal(c[name], counts[0][name]) for c in counts for name in counts[0])
    variance, wrong, scored = plain[2], plain[0].argmax(dim=1) != target, target >= 0
    assert torch.equal(counts[0]["variance"], error_histograms(variance, wrong, 1000, scored))
    with pytest.raises(ValueError, match="3 classes"):
        UncertaintyMeter(classes).update(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="bins"):
        UncertaintyMeter(classes, bins=1 << 21)


def test_ece_is_zero_for_a_calibrated_bin_and_the_gap_otherwise():
    # 10 pixels at confidence 0.8 (one bin), 8 right: calibrated; then all right: gap 0.2
    probabilities = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1).expand(1, 2, 1, 10).contiguous()
    target = torch.tensor([0] * 8 + [1] * 2).view(1, 1, 10)
    meter = UncertaintyMeter(num_classes=2)
    meter.update(probabilities, target)
    assert meter.result()["ece"] == pytest.approx(0.0, abs=EPS32)  # 0.8 in float32 against float64: 1.2e-8 apart
    meter = UncertaintyMeter(num_classes=2)
    meter.update(probabilities, torch.zeros(1, 1, 10, dtype=torch.long))
    assert meter.result()["ece"] == pytest.approx(0.2, abs=EPS32)  # (the same rounding of 0.8)


def test_nothing_scored_gives_no_numbers():
    meter = UncertaintyMeter(num_classes=3)
    meter.update(torch.full((1, 3, 2, 2), 1 / 3), torch.full((1, 2, 2), -1))
    assert meter.result() == {"auroc_one_minus_max_prob": None, "auroc_entropy": None, "ece": None,
                              "error_rate": None, "pixels": 0}


def test_pseudo_label_probe_on_a_hand_made_strong_view():
    # one image, 2 x 4 at stride 4 (no resize): pseudo-labels vs truth, confidences and variances
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, 1]]])
    truth = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, -1]]])
    confidence = torch.tensor([[[0.99, 0.6, 0.98, 0.9], [0.75, 0.5, 0.0, 0.99]]])
    variance = torch.tensor([[[0.1, 0.8, 0.2, 0.3], [0.4, 0.7, 0.9, 0.9]]]).unsqueeze(1).expand(1, 3, 2, 4)
    probes = pseudo_label_probe(labels, confidence, truth, {"un": 0.97, "weak": 0.7}, variance)
    # scored: (0,0) right, (0,1) wrong, (0,2) right, (0,3) right, (1,0) right, (1,1) wrong
    assert probes["pseudo_label_accuracy"] == pytest.approx(4 / 6)
    assert probes["pseudo_label_accuracy_above_un"] == pytest.approx(1.0)  # 0.99, 0.98: both right
    assert probes["pseudo_label_accuracy_above_weak"] == pytest.approx(1.0)  # 0.99, 0.98, 0.9, 0.75
    # the two wrong pixels have the highest variances and the lowest confidences: AUROC 1 for both
    assert probes["pseudo_label_auroc_variance"] == pytest.approx(1.0)
    assert probes["pseudo_label_auroc_confidence"] == pytest.approx(1.0)
    assert error_auroc(torch.tensor([0.2, 0.2]), torch.tensor([True, False])) == pytest.approx(0.5)


def test_power_of_two_bins_in_float32_are_the_float64_bins():
    """The histograms' 4096 bins take the float32 product (exact: a power of two); the same bins as float64."""
    from prcl.metrics.uncertainty import _bin_

    values = torch.cat([torch.rand(100_000, generator=torch.Generator().manual_seed(0)),
                        torch.arange(4097, dtype=torch.float32) / 4096,  # every bin edge, 0 and 1 included
                        torch.tensor([1 - 2**-24, 2**-149, 2**-126])])
    assert torch.equal(_bin_(values.clone(), 4096).long(), _bin_(values.double(), 4096).long())
    # other counts multiply in float64: the float64 floor, also for values just below a bin edge
    edges = (torch.arange(1, 15, dtype=torch.float64) / 15).float()
    below = torch.cat([values, torch.nextafter(edges, torch.zeros(()))])
    assert torch.equal(_bin_(below.clone(), 15).long(), (below.double() * 15).long().clamp(0, 14))
    # 0.585 in float32 is 0.58499997854: bin 584 of 1000, where a float32 product rounds to 585.0
    assert torch.equal(_bin_(below.clone(), 1000).long(), (below.double() * 1000).long().clamp(0, 999))
    assert _bin_(torch.tensor([0.585]), 1000).item() == 584
    assert torch.equal(_bin_(torch.tensor([float("nan"), float("inf"), -1.0]), 15), torch.tensor([0.0, 14.0, 0.0]))


def test_normalised_entropy_is_the_entropy_of_special_entr():
    from prcl.metrics import normalised_entropy

    logits = torch.randn(3, 6, 40, 40, generator=torch.Generator().manual_seed(1)) * 8
    probabilities = torch.softmax(logits, dim=1)
    probabilities[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0])  # zeros count 0, not nan
    expected = torch.special.entr(probabilities.double()).sum(dim=1) / math.log(6)
    got = normalised_entropy(probabilities)
    assert got[0, 0, 0] == 0
    # 6 terms -p log p <= 1/e each, one rounding per product, log and sum: a float32 sum of 6 terms of size 1/e
    assert (got.double() - expected).abs().max() <= summation_bound(1 / math.e, 6 * 3) / math.log(6)
