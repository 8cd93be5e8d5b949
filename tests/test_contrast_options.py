"""Options beyond the released PRCL loss: the variance gap, the fix, GDP, virtual negatives, points."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from prcl.losses import (
    ContrastOptions,
    GlobalPrototypes,
    PRCLLoss,
    distribution_prototypes,
    gathered_mls,
    sample_contrast,
)
from prcl.config import PRCLConfig, load_config
from prcl.losses.prcl import _virtual_negatives
from prcl.losses.prototypes import class_statistics
from prcl.methods.prcl import PRCL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import tiny_config  # noqa: E402
from tolerances import assert_within, summation_bound  # noqa: E402


# The keys of cfg.prcl that are not contrast options: lambda's schedule (prcl.schedules.contrast_weight)
# and the variances the method hands the contrast.
NOT_CONTRAST_OPTIONS = {"lambda_schedule", "max_value", "min_value", "ramp_mult", "begin_epoch", "max_epoch",
                        "variance_scale", "deterministic"}

# A value away from the default for every contrast option, as config overrides.
CHANGED = {"temperature": 0.25, "num_queries": 7, "num_negatives": 9, "kernel": "chunked",
           "prototype_variance": "mean", "global_prototypes": True, "gdp_decay": 0.125, "virtual_negatives": 3,
           "vn_radius": 0.5, "vn_variance": "zero"}


def test_every_contrast_key_of_the_config_is_an_option():
    """A key added to cfg.prcl must be a ContrastOptions field (or be listed above as something else)."""
    options = {field.name for field in dataclasses.fields(ContrastOptions)}
    assert set(PRCLConfig.model_fields) - NOT_CONTRAST_OPTIONS == options - {"strong_threshold"}
    assert set(CHANGED) == options - {"strong_threshold"}


def test_prcl_hands_the_configured_options_to_the_loss_in_one_frozen_object():
    defaults = ContrastOptions()
    assert all(getattr(defaults, key) != value for key, value in CHANGED.items())
    overrides = [f"prcl.{key}={str(value).lower() if isinstance(value, bool) else value}"
                 for key, value in CHANGED.items()]
    cfg = load_config(None, ["data.num_classes=3", "method.strong_threshold=0.625", *overrides])
    contrast = PRCL(cfg).contrast
    assert contrast.options == ContrastOptions(strong_threshold=0.625, **CHANGED)
    assert contrast.global_prototypes.decay == 0.125 and contrast.global_prototypes.precision.shape[0] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        contrast.options.temperature = 1.0
    # A point contrast keeps the variance in its prototypes, whatever prcl.prototype_variance says.
    point = load_config(None, ["data.num_classes=3", "prcl.deterministic=true", "prcl.prototype_variance=fused"])
    assert PRCL(point).contrast.options.prototype_variance == "mean"
    assert PRCL(load_config(None, ["data.num_classes=3"])).contrast.options == defaults


def _two_classes(mu0, mu1, var=0.5, pixels=32, hard=None):
    """(mu, var, labels, valid, prob) of one (1, D, pixels, 2) map: column 0 class 0, column 1 class 1.

    ``mu0``, ``mu1``: (pixels, D) means of the two columns. ``hard``: (pixels,) bool rows whose
    pixels are anchors (probability 0.5 of their class); the others are easy (0.99).
    """
    dim = mu0.shape[1]
    mu = torch.stack([mu0, mu1], dim=-1).permute(1, 0, 2)[None]  # (1, D, pixels, 2)
    labels = torch.tensor([0, 1]).expand(pixels, 2)[None].clone()
    own = torch.full((pixels,), 0.5) if hard is None else torch.where(hard, 0.5, 0.99)
    prob = torch.zeros(1, 2, pixels, 2)
    prob[0, 0, :, 0], prob[0, 1, :, 1] = own, own
    prob[0, 1, :, 0], prob[0, 0, :, 1] = 1 - own, 1 - own
    return mu, torch.full((1, dim, pixels, 2), var), labels, torch.ones(1, pixels, 2, dtype=torch.bool), prob


def test_equal_means_leave_only_the_variance_gap():
    """Equal means, every pixel variance v, N pixels per class: the prototype's variance is v / N, so the
    positive beats each of the K negatives by g = 1/2 log(2v / (v + v/N)) and the loss is log(1 + K e^(-g/T))."""
    pixels, negatives, temperature, v = 32, 64, 0.5, 0.4
    same = torch.ones(pixels, 8)
    mu, var, labels, valid, prob = _two_classes(same, same, var=v, pixels=pixels)
    loss_fn = PRCLLoss(ContrastOptions(num_queries=16, num_negatives=negatives, temperature=temperature,
                                       kernel="chunked"))
    loss, details = loss_fn(mu, var, labels, valid, prob, generator=torch.Generator().manual_seed(0),
                            return_details=True)
    gap = 0.5 * math.log(2 * v / (v + v / pixels))
    # float32 against the closed form: the scores' 8 terms (of size |log s| / 2), then a log-softmax over 1 + K
    # logits; 8 + K + 8 roundings of twice the logits' size (the loss is a difference of two logits' worth)
    rounding = summation_bound(2 * 0.5 * max(abs(math.log(2 * v)), abs(math.log(v + v / pixels))) / temperature,
                               8 + negatives + 8)
    assert loss.item() == pytest.approx(math.log(1 + negatives * math.exp(-gap / temperature)), abs=rounding)
    # with every mean equal the gap loss is the loss, but for the rounding of the means (the prototype of equal
    # means is equal up to rounding), far below that of the logits
    assert details["variance_gap_loss"].item() == pytest.approx(loss.item(), abs=rounding)


def _swap_margin(**options) -> float:
    """Loss with the anchors' means at the other class's mean, minus the loss with them at their own."""
    g = torch.Generator().manual_seed(1)
    dim, pixels = 64, 48
    centre = torch.nn.functional.normalize(torch.randn(2, dim, generator=g), dim=1)
    noise = 0.05 * torch.randn(2, pixels, dim, generator=g)
    hard = torch.arange(pixels) < 8
    losses = []
    for swapped in (False, True):
        own0, own1 = centre[0] + noise[0], centre[1] + noise[1]
        if swapped:  # the hard pixels (the anchors) sit at the other class's mean
            own0[hard], own1[hard] = centre[1] + noise[0][hard], centre[0] + noise[1][hard]
        inputs = _two_classes(own0, own1, var=0.5, pixels=pixels, hard=hard)
        loss_options = {k: v for k, v in options.items() if k != "variance_scale"}
        loss_fn = PRCLLoss(ContrastOptions(num_queries=32, num_negatives=64, temperature=0.5, kernel="chunked",
                                           **loss_options))
        scale = options.get("variance_scale", 1.0)  # the method scales the head's variances
        mu, var, labels, valid, prob = inputs
        losses.append(loss_fn(mu, var * scale, labels, valid, prob, generator=torch.Generator().manual_seed(2)).item())
    return losses[1] - losses[0]


def test_with_the_fix_swapped_means_cost_much_more_than_correct_ones():
    released = _swap_margin()
    fixed = _swap_margin(prototype_variance="mean", variance_scale=1 / 64)
    assert fixed > 1.0  # the means decide the loss
    assert fixed > 20 * abs(released)  # as released, the variance gap drowns them


def test_gdp_update_follows_the_fusion_formula_and_decay_forgets():
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(40, 6, generator=g), torch.rand(40, 6, generator=g) + 0.1,
                torch.randint(0, 3, (40,), generator=g)) for _ in range(3)]
    state = GlobalPrototypes(num_classes=3, dim=6, decay=0.0)
    size = GlobalPrototypes(num_classes=3, dim=6, decay=0.0)  # the same sums of the means' absolute values
    mu_g = var_g = None
    for mu, var, labels in batches:
        state.update(*class_statistics(mu, var, labels, 3))
        size.update(*class_statistics(mu.abs(), var, labels, 3))
        mu_b, var_b = distribution_prototypes(mu, var, labels, 3)
        if var_g is None:
            mu_g, var_g = mu_b, var_b
        else:  # var_g <- 1 / (1/var_g + 1/var_b), mu_g <- var_g (mu_g / var_g + mu_b / var_b)
            new_var = 1 / (1 / var_g + 1 / var_b)
            mu_g, var_g = new_var * (mu_g / var_g + mu_b / var_b), new_var
    got_mu, got_var = state.prototypes()
    # float32 in other orders: sums of at most 120 pixels' positive precisions, then fused: 120 + 6 roundings
    assert_within(got_var, var_g, summation_bound(var_g, 120 + 6), "variances")
    # the means' precision-weighted sums may cancel: 120 + 9 roundings of their absolute values' sums
    assert_within(got_mu, mu_g, summation_bound(size.prototypes()[0], 120 + 9), "means")

    # decay 0 accumulates (a class absent from later batches keeps its precision); decay > 0 forgets it
    only_class_0 = (torch.randn(10, 6, generator=g), torch.full((10, 6), 0.5), torch.zeros(10, dtype=torch.long))
    for decay in (0.0, 0.2):
        state = GlobalPrototypes(num_classes=3, dim=6, decay=decay)
        state.update(*class_statistics(*batches[0], 3))
        before = state.precision[1].clone()
        for _ in range(5):
            state.update(*class_statistics(*only_class_0, 3))
        expected = before * (1 - decay) ** 5
        # five float32 multiplications by 1 - decay against one by its fifth power: 6 roundings of the result
        assert_within(state.precision[1], expected, summation_bound(expected, 6), f"decay {decay}")
        assert (state.precision[0] > 0).all()


def test_virtual_negatives_count_class_and_spread():
    dim, per_class, radius = 32, 4, 2.0
    proto_mu = torch.eye(4, dim) * 10
    proto_var = torch.tensor([0.01, 0.04, 0.09, 0.16])[:, None].expand(4, dim).clone()
    has_prototype = torch.tensor([True, True, False, True])  # class 2 was never seen
    anchor_classes = torch.tensor([0] * 300 + [3] * 300)
    virtual_mu, virtual_var = _virtual_negatives(proto_mu, proto_var, has_prototype, anchor_classes, per_class,
                                                 radius, "global", torch.Generator().manual_seed(4))
    assert virtual_mu.shape == (600, per_class * 2, dim)  # 2 other seen classes
    nearest = (virtual_mu @ proto_mu.T).argmax(-1)  # which class each sample came from
    assert set(nearest[:300].unique().tolist()) == {1, 3} and set(nearest[300:].unique().tolist()) == {0, 1}
    for k in (0, 1, 3):
        samples = virtual_mu[nearest == k]
        spread = ((samples - proto_mu[k]) / proto_var[k].sqrt()).std()
        # the standard deviation of n normal draws: within 5 standard errors, 1 / sqrt(2 (n - 1)) relative
        assert spread.item() == pytest.approx(radius, rel=5 / math.sqrt(2 * (samples.numel() - 1)))
        assert torch.equal(virtual_var[nearest == k], proto_var[k].expand_as(samples))  # copied, not computed
    _, zero_var = _virtual_negatives(proto_mu, proto_var, has_prototype, anchor_classes, per_class, radius, "zero",
                                     torch.Generator().manual_seed(4))
    assert (zero_var == 0).all()


def test_virtual_negatives_are_appended_to_each_anchors_keys():
    g = torch.Generator().manual_seed(5)
    mu0, mu1 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g) + 2
    mu, var, labels, valid, prob = _two_classes(mu0, mu1, pixels=16)
    options = ContrastOptions(num_queries=4, num_negatives=10, temperature=0.5, virtual_negatives=3)
    sample = sample_contrast(mu, var, labels, valid, prob, options, generator=g)
    assert sample.key_index.shape == (8, 1 + 10 + 3)
    pool_before = 32 + 2  # valid pixels, then the prototypes
    assert sample.key_mu.shape[0] == pool_before + 8 * 3
    assert (sample.key_index[:, 11:] >= pool_before).all()


def test_deterministic_scores_are_a_scaled_negative_squared_distance():
    """Every variance c and prototypes that keep it: MLS = -|a - k|^2 / (4 c D) - log(2c) / 2."""
    g = torch.Generator().manual_seed(6)
    dim = 8
    c = 0.5 / dim
    mu, var, labels, valid, prob = _two_classes(torch.randn(16, dim, generator=g), torch.randn(16, dim, generator=g),
                                                var=c, pixels=16)
    options = ContrastOptions(num_queries=4, num_negatives=6, temperature=0.5, prototype_variance="mean")
    sample = sample_contrast(mu, var, labels, valid, prob, options, generator=g)
    anchors = torch.nn.functional.normalize(mu.permute(0, 2, 3, 1)[tuple(i[sample.anchors] for i in sample.pixel_index)], dim=1)
    scores = gathered_mls(anchors, torch.full_like(anchors, c), sample.key_mu, sample.key_var, sample.key_index, "chunked")
    keys = sample.key_mu[sample.key_index]
    distance = (anchors[:, None] - keys).square().sum(-1)
    # float32 in both, in other orders: D-term sums whose differences may cancel, 2 D + 4 roundings of their size
    size = (anchors[:, None].abs() + keys.abs()).square().sum(-1) / (4 * c * dim) + 0.5 * abs(math.log(2 * c))
    assert_within(scores, -distance / (4 * c * dim) - 0.5 * math.log(2 * c), summation_bound(size, 2 * dim + 4))


@pytest.mark.slow
def test_gdp_state_survives_checkpoint_and_resume(demo_root, tmp_path):
    from prcl.checkpoint import load_checkpoint
    from prcl.engine.trainer import Trainer

    # One schedule of 4 steps for all three trainers; the first half stops early at step 2. train.deterministic:
    # a resumed run then ends bit for bit where the straight one does (as in test_train's resume test).
    options = {"prcl.global_prototypes": "true", "prcl.gdp_decay": 0.1, "prcl.virtual_negatives": 2,
               "train.epochs": 1, "train.epoch_iterations": 4, "train.deterministic": "true"}
    straight = Trainer(tiny_config(demo_root, tmp_path / "straight", iterations=4, **options))
    straight.fit()
    Trainer(tiny_config(demo_root, tmp_path / "halves", iterations=2, **options)).fit()
    resumed = Trainer(tiny_config(demo_root, tmp_path / "halves", iterations=4, **options), resume="auto")
    saved = load_checkpoint(tmp_path / "halves/checkpoints/last.pt")["method"]
    assert torch.equal(resumed.method.state_dict()["global_prototypes.precision"],
                       saved["global_prototypes.precision"])  # loaded, not computed
    assert saved["global_prototypes.count"].sum() > 0
    resumed.fit()
    for name, value in straight.method.state_dict().items():
        assert torch.equal(resumed.method.state_dict()[name], value), name


def _gdp_worker(rank, world_size, init_file, mu, var, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    state = GlobalPrototypes(num_classes=3, dim=mu.shape[-1], decay=0.1)
    for step in range(3):  # each rank sees its own half of every batch
        part = slice(rank * 20, (rank + 1) * 20)
        state.update(*class_statistics(mu[step][part], var[step][part], labels[step][part], 3))
    out[rank] = {name: value.clone() for name, value in state.state_dict().items()}
    dist.destroy_process_group()


@pytest.mark.slow
def test_gdp_state_is_identical_on_two_ranks_and_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(7)
    mu, var = torch.randn(3, 40, 6, generator=g), torch.rand(3, 40, 6, generator=g) + 0.1
    labels = torch.randint(0, 3, (3, 40), generator=g)
    single = GlobalPrototypes(num_classes=3, dim=6, decay=0.1)
    size = GlobalPrototypes(num_classes=3, dim=6, decay=0.1)  # the same sums of the means' absolute values
    for step in range(3):
        single.update(*class_statistics(mu[step], var[step], labels[step], 3))
        size.update(*class_statistics(mu[step].abs(), var[step], labels[step], 3))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_gdp_worker, args=(2, str(tmp_path / "init"), mu, var, labels, out), nprocs=2)
        results = dict(out)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(results[0][name], results[1][name], rtol=0, atol=0)  # one all-reduce, shared
        # two halves summed, then all-reduced and decayed, against one sum: 40 pixels a step, 3 steps of decay
        assert_within(results[0][name], value, summation_bound(size.state_dict()[name], 40 + 6), name)
