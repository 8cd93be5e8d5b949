"""PRCL losses against their formulas (docs/method.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prcl.losses import (
    ContrastOptions,
    PRCLLoss,
    distribution_prototypes,
    gathered_mls,
    mutual_likelihood_score,
    pseudo_label_loss,
    sample_contrast,
)

from tolerances import EPS64, assert_within, summation_bound


def mls_float64(mu_a, var_a, mu_b, var_b):
    mu_a, var_a, mu_b, var_b = (t.double() for t in (mu_a, var_a, mu_b, var_b))
    mu_a = mu_a / mu_a.norm(dim=-1, keepdim=True)
    mu_b = mu_b / mu_b.norm(dim=-1, keepdim=True)
    s = var_a + var_b
    return -0.5 * ((mu_a - mu_b) ** 2 / s + torch.log(s)).sum(-1) / mu_a.shape[-1]


def mls_magnitude(mu_a, var_a, mu_b, var_b):
    """The absolute size of what a score sums: 0.5 ((|a| + |b|)^2 / s + |log s|) averaged over D, the means
    normalised (their difference may cancel, its rounding does not). The scale of a float score's rounding."""
    mu_a, var_a, mu_b, var_b = (t.double() for t in (mu_a, var_a, mu_b, var_b))
    mu_a = mu_a / mu_a.norm(dim=-1, keepdim=True)
    mu_b = mu_b / mu_b.norm(dim=-1, keepdim=True)
    s = var_a + var_b
    return 0.5 * ((mu_a.abs() + mu_b.abs()) ** 2 / s + torch.log(s).abs()).sum(-1) / mu_a.shape[-1]


def random_maps(n=2, d=16, h=12, w=12, classes=5, present=(0, 2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, h, w, generator=g)
    var = torch.rand(n, d, h, w, generator=g) * 0.9 + 0.05
    labels = torch.tensor(present)[torch.randint(0, len(present), (n, h, w), generator=g)]
    valid = torch.rand(n, h, w, generator=g) > 0.2
    prob = torch.softmax(torch.randn(n, classes, h, w, generator=g) * 3, 1)
    return mu, var, labels, valid, prob


def test_mls_matches_float64_formula_and_broadcasts():
    g = torch.Generator().manual_seed(1)
    mu_a, mu_b = torch.randn(7, 1, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    var_a, var_b = torch.rand(7, 1, 32, generator=g) + 0.01, torch.rand(1, 5, 32, generator=g) + 0.01
    out = mutual_likelihood_score(mu_a, var_a, mu_b, var_b)
    assert out.shape == (7, 5)
    # float32 against float64: a score normalises the means and sums D = 32 terms, D + 4 roundings of their size
    assert_within(out, mls_float64(mu_a, var_a, mu_b, var_b),
                  summation_bound(mls_magnitude(mu_a, var_a, mu_b, var_b), 32 + 4))
    # the score of a Gaussian with itself is highest against any other mean with the same variance
    same = mutual_likelihood_score(mu_a[:, 0], var_a[:, 0], mu_a[:, 0], var_a[:, 0])
    other = mutual_likelihood_score(mu_a[:, 0], var_a[:, 0], mu_b[0, :1].expand(7, 32), var_a[:, 0])
    assert bool((same > other).all())


def test_prototypes_match_formula():
    g = torch.Generator().manual_seed(2)
    mu, var = torch.randn(40, 8, generator=g), torch.rand(40, 8, generator=g) + 0.05
    labels = torch.randint(0, 3, (40,), generator=g)
    proto_mu, proto_var = distribution_prototypes(mu, var, labels, num_classes=4)
    for c in range(3):
        m, v = mu[labels == c].double(), var[labels == c].double()
        expected_var = 1.0 / (1.0 / v).sum(0)
        expected_mu = (expected_var / v * m).sum(0)
        n = len(v)
        # float32 against float64: 1 / (a sum of n positive 1 / v): n + 2 roundings of the result's size
        assert_within(proto_var[c], expected_var, summation_bound(expected_var, n + 2), f"class {c} variance")
        # a sum of n weighted means, which may cancel: n + 3 roundings of the sum of their absolute values
        assert_within(proto_mu[c], expected_mu, summation_bound((expected_var / v * m.abs()).sum(0), n + 3),
                      f"class {c} mean")
    assert bool(torch.isinf(proto_var[3]).all()) and bool((proto_mu[3] == 0).all())


@pytest.mark.parametrize("present", [(), (2,)])
def test_fewer_than_two_classes_gives_a_zero_in_the_graph(present):
    mu, var, labels, valid, prob = random_maps(present=present or (0,))
    if not present:
        valid = torch.zeros_like(valid)
    mu.requires_grad_(), var.requires_grad_()
    loss = PRCLLoss(ContrastOptions(num_queries=8, num_negatives=16, kernel="chunked"))(mu, var, labels, valid, prob)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert mu.grad is not None and bool((mu.grad == 0).all()) and bool((var.grad == 0).all())


def two_constant_classes(easy_second: bool):
    """Two classes whose pixels all share one Gaussian each: the loss has a closed form."""
    d, h, w = 8, 6, 6
    g = torch.Generator().manual_seed(3)
    m = torch.randn(2, d, generator=g)
    v = torch.rand(2, d, generator=g) * 0.5 + 0.1
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, 3:] = 1
    mu = m[labels].permute(0, 3, 1, 2).contiguous()
    var = v[labels].permute(0, 3, 1, 2).contiguous()
    prob = torch.full((1, 3, h, w), 0.3)  # every pixel is hard...
    if easy_second:
        prob[:, 1][labels == 1] = 0.95  # ...except class 1 when it is easy
    valid = torch.ones(1, h, w, dtype=torch.bool)
    return m, v, mu, var, labels, valid, prob


@pytest.mark.parametrize("easy_second", [False, True])
def test_closed_form_and_the_divisor(easy_second):
    m, v, mu, var, labels, valid, prob = two_constant_classes(easy_second)
    temperature, negatives, n = 0.5, 16, 18  # n pixels per class
    options = ContrastOptions(num_queries=4, num_negatives=negatives, temperature=temperature, kernel="chunked")
    loss = PRCLLoss(options)(mu, var, labels, valid, prob)

    def class_term(c):
        proto_var = v[c] / n  # n identical Gaussians fused
        positive = mls_float64(m[c], v[c], m[c], proto_var)
        negative = mls_float64(m[c], v[c], m[1 - c], v[1 - c])
        logits = torch.cat([positive.view(1), negative.view(1).repeat(negatives)]) / temperature
        return -torch.log_softmax(logits, 0)[0]

    def logit_size(c):  # the size of what the class's logits sum (see mls_magnitude), divided by T
        keys = ((m[c], v[c] / n), (m[1 - c], v[1 - c]))
        return float(max(mls_magnitude(m[c], v[c], key_m, key_v) for key_m, key_v in keys)) / temperature

    expected = class_term(0) / 2 if easy_second else (class_term(0) + class_term(1)) / 2
    # float32 against float64: the scores' D = 8 terms, then a log-softmax over 1 + K logits; D + K + 8 roundings
    # of the logits' size (the loss is a difference of two logits' worth)
    assert loss.item() == pytest.approx(expected.item(), abs=summation_bound(2 * max(logit_size(0), logit_size(1)),
                                                                            8 + negatives + 8))


def test_anchors_come_from_valid_hard_pixels_only():
    mu, var, labels, valid, prob = random_maps(n=2, h=16, w=16, present=(0, 1, 4))
    options = ContrastOptions(num_queries=200, num_negatives=8, strong_threshold=0.5)
    sample = sample_contrast(mu, var, labels, valid, prob, options, generator=torch.Generator().manual_seed(0))
    b, y, x = (index[sample.anchors] for index in sample.pixel_index)
    assert bool(valid[b, y, x].all())
    assert torch.equal(labels[b, y, x], sample.anchor_classes)
    assert bool((prob[b, sample.anchor_classes, y, x] < 0.5).all())
    # every hard valid pixel of a class can be drawn: with many draws, most of them are
    hard = valid & (prob.gather(1, labels.clamp_min(0)[:, None])[:, 0] < 0.5) & (labels == 4)
    drawn = set(zip(*(t[sample.anchor_classes == 4].tolist() for t in (b, y, x))))
    assert len(drawn) > 0.5 * min(int(hard.sum()), 200)


def test_negatives_follow_prototype_softmax_and_avoid_anchor_class_and_invalid_pixels():
    mu, var, labels, valid, prob = random_maps(n=2, d=8, h=20, w=20, present=(0, 1, 2, 3))
    # separate the class means so that the negative-class probabilities differ clearly
    shift = torch.randn(4, 8, generator=torch.Generator().manual_seed(5)) * 2
    mu = mu * 0.3 + shift[labels.clamp_min(0)].permute(0, 3, 1, 2)
    temperature = 10.0  # the classes' probabilities spread from 0.06 to 0.8 (at 0.05 one class took them all)
    options = ContrastOptions(num_queries=64, num_negatives=512, temperature=temperature, strong_threshold=1.01)
    sample = sample_contrast(mu, var, labels, valid, prob, options, generator=torch.Generator().manual_seed(1))
    b, y, x = sample.pixel_index
    negative_classes = sample.pixel_labels[sample.negatives]  # (A, K-1)
    assert bool((negative_classes != sample.anchor_classes[:, None]).all())
    assert bool(valid[b[sample.negatives], y[sample.negatives], x[sample.negatives]].all())
    # expected class probabilities from the prototypes, computed here independently
    pm, pv = [], []
    for c in range(4):
        sel = (labels == c) & valid
        m, v = mu.permute(0, 2, 3, 1)[sel].double(), var.permute(0, 2, 3, 1)[sel].double()
        pv.append(1 / (1 / v).sum(0))
        pm.append((pv[-1] / v * m).sum(0))
    pm, pv = torch.stack(pm), torch.stack(pv)
    for c in range(4):
        others = [k for k in range(4) if k != c]
        scores = torch.stack([mls_float64(pm[c], pv[c], pm[k], pv[k]) for k in others]) / temperature
        expected = torch.softmax(scores, 0)
        drawn = negative_classes[sample.anchor_classes == c].reshape(-1)
        observed = torch.stack([(drawn == k).double().mean() for k in others])
        assert float(expected.max() - expected.min()) > 0.1  # the test is not trivially uniform
        assert float(expected.min()) > 0.05  # nor one class with all the draws
        # frequencies of n independent draws: within 5 standard errors sqrt(p (1 - p) / n) (0.007 to 0.014 here)
        assert_within(observed, expected, 5 * (expected * (1 - expected) / drawn.numel()).sqrt(), f"class {c}")


def test_gradients_reach_mu_and_var_only_at_anchor_pixels():
    mu, var, labels, valid, prob = random_maps(n=2, h=10, w=10)
    mu.requires_grad_(), var.requires_grad_()
    options = ContrastOptions(num_queries=6, num_negatives=32, temperature=0.5, strong_threshold=0.6,
                              kernel="chunked")
    loss = PRCLLoss(options)(mu, var, labels, valid, prob, generator=torch.Generator().manual_seed(7))
    loss.backward()
    sample = sample_contrast(mu, var, labels, valid, prob, options, generator=torch.Generator().manual_seed(7))
    anchor_mask = torch.zeros_like(valid)
    anchor_mask[tuple(index[sample.anchors] for index in sample.pixel_index)] = True
    for grad in (mu.grad, var.grad):
        touched = grad.abs().sum(1) > 0
        assert bool(touched[anchor_mask].all())
        assert not bool(touched[~anchor_mask].any())


@pytest.mark.parametrize("level", [1e-6, 0.5, 1 - 1e-6])
def test_loss_is_finite_for_extreme_variances(level):
    mu, var, labels, valid, prob = random_maps()
    var = torch.full_like(var, level).requires_grad_()
    mu.requires_grad_()
    loss = PRCLLoss(ContrastOptions(num_queries=8, num_negatives=32, kernel="chunked"))(mu, var, labels, valid, prob)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert bool(torch.isfinite(mu.grad).all()) and bool(torch.isfinite(var.grad).all())


def test_gathered_scores_gradcheck_and_match_the_formula():
    g = torch.Generator().manual_seed(4)
    a, p, k, d = 5, 9, 4, 6
    anchor_mu = F.normalize(torch.randn(a, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    anchor_var = (torch.rand(a, d, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    key_mu = F.normalize(torch.randn(p, d, generator=g, dtype=torch.float64), dim=1)
    key_var = torch.rand(p, d, generator=g, dtype=torch.float64) + 0.1
    index = torch.randint(0, p, (a, k), generator=g)
    out = gathered_mls(anchor_mu, anchor_var, key_mu, key_var, index, kernel="chunked")
    expected = mls_float64(anchor_mu[:, None], anchor_var[:, None], key_mu[index], key_var[index])
    # both float64, summed in other orders: D + 4 roundings of the scores' size
    assert_within(out, expected, summation_bound(mls_magnitude(anchor_mu[:, None], anchor_var[:, None], key_mu[index],
                                                               key_var[index]), d + 4, EPS64))
    assert torch.autograd.gradcheck(
        lambda m, v: gathered_mls(m, v, key_mu, key_var, index, kernel="chunked"), (anchor_mu, anchor_var))


@pytest.mark.slow
def test_compiled_kernel_matches_chunked_kernel():
    mu, var, labels, valid, prob = random_maps(n=2, d=32, h=16, w=16)
    results = []
    for kernel in ("chunked", "compiled"):
        m, v = mu.clone().requires_grad_(), var.clone().requires_grad_()
        loss = PRCLLoss(ContrastOptions(num_queries=16, num_negatives=64, temperature=0.5, kernel=kernel))(
            m, v, labels, valid, prob, generator=torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss.detach(), m.grad, v.grad))
    # the kernels fuse the scores' D = 32 term sums and the softmax over 1 + K = 65 keys differently: D + K + 8
    # roundings, of the logits' size for the loss (scores of about its size over T = 0.5), and of the largest entry
    # for a gradient (an entry sums softmax-weighted terms of that size)
    names = ("loss", "mu gradient", "variance gradient")
    for name, chunked, compiled, scale in zip(names, *results, (results[0][0] / 0.5, None, None)):
        scale = chunked.abs().max() if scale is None else scale
        assert_within(compiled, chunked, summation_bound(scale, 32 + 64 + 8), name)


def test_pseudo_label_loss_matches_the_weighted_formula():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (3, 5, 5), generator=g)
    confidence = torch.rand(3, 5, 5, generator=g)
    labels[1, :2] = -1
    labels[2] = -1  # an image with no valid pixel gets weight 0, not NaN
    confidence[2] = 0
    loss = pseudo_label_loss(logits, labels, confidence, threshold=0.5)
    weighted, counted = 0.0, 0
    for b in range(2):
        weight = (confidence[b] >= 0.5).sum() / (labels[b] >= 0).sum()
        ce = F.cross_entropy(logits[b : b + 1], labels[b : b + 1], ignore_index=-1, reduction="none")
        weighted = weighted + (weight * ce).sum()
        counted += int((ce > 0).sum())
    # float32 in both, in other orders: sums of 75 positive weighted cross-entropies (each over 4 classes) and a
    # division, 75 + 4 + 4 roundings of the result
    assert loss.item() == pytest.approx((weighted / counted).item(), rel=summation_bound(1.0, 75 + 4 + 4))
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all()) and bool((logits.grad[2] == 0).all())


def test_pseudo_label_loss_denominator_counts_pixels_of_zero_weight_images():
    """Hand-computed: every CE is log 2 (two classes, zero logits).

    Image 0: 3 labeled pixels, 2 confident -> w = 2/3. Image 1: 4 labeled pixels, none confident
    -> w = 0, but its 4 pixels still count: (2/3 * 3 log 2 + 0) / (3 + 4) = 2 log 2 / 7. Dividing by
    the pixels where w * ce > 0 instead would give 2 log 2 / 3.
    """
    logits = torch.zeros(2, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [1, -1]], [[0, 0], [0, 0]]])
    confidence = torch.tensor([[[0.99, 0.99], [0.5, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    loss = pseudo_label_loss(logits, labels, confidence, threshold=0.97)
    # float32: log 2 per pixel, weights 2/3 and 0, 7 positive terms summed and divided: 7 + 5 roundings
    assert loss.item() == pytest.approx(2 * math.log(2) / 7, rel=summation_bound(1.0, 7 + 5))


def test_pseudo_label_loss_all_masked_is_zero_in_graph_and_upsamples():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 8, 8), -1)
    loss = pseudo_label_loss(logits, labels, torch.zeros(2, 8, 8))
    assert loss.item() == 0.0 and loss.requires_grad
    labels[0, 0, 0] = 1
    assert pseudo_label_loss(logits, labels, torch.ones(2, 8, 8)).item() > 0


def _prototype_worker(rank, world_size, init_file, mu, var, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    half = mu.shape[0] // world_size
    part = slice(rank * half, (rank + 1) * half)
    proto_mu, proto_var = distribution_prototypes(mu[part], var[part], labels[part], num_classes=3)
    out[rank] = (proto_mu, proto_var)
    dist.destroy_process_group()


@pytest.mark.slow
def test_prototypes_are_exact_under_data_parallelism(tmp_path):
    """Two ranks holding half the pixels each get the prototype of all the pixels."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(8)
    mu, var = torch.randn(60, 8, generator=g), torch.rand(60, 8, generator=g) + 0.05
    labels = torch.randint(0, 3, (60,), generator=g)
    expected = distribution_prototypes(mu, var, labels, num_classes=3)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_prototype_worker, args=(2, str(tmp_path / "init"), mu, var, labels, out), nprocs=2)
        results = dict(out)
    size = distribution_prototypes(mu.abs(), var, labels, num_classes=3)[0]  # the means' sums without cancelling
    pixels = int(torch.bincount(labels).max())
    for rank in range(2):
        # two halves summed, then all-reduced, against one sum: each sum's rounding, n + 3 of the summed terms' size
        assert_within(results[rank][0], expected[0], summation_bound(size, pixels + 3), f"rank {rank} means")
        # 1 / (a sum of positive precisions): n + 2 roundings of the variance
        assert_within(results[rank][1], expected[1], summation_bound(expected[1], pixels + 2), f"rank {rank} variances")
