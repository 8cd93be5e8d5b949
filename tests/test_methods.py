"""One training step of the methods: the student's forward passes and what they do to BatchNorm."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from prcl import config as config_module
from prcl.config import METHOD_NAMES, load_config
from prcl.errors import UserError
from prcl.methods import METHODS, Method, StepInput, build_method
from prcl.methods.base import supervised_loss
from prcl.methods.prcl import contrast_mask
from prcl.methods.base import teacher_pseudo_labels
from prcl.models import build_segmenter

from tolerances import EPS64, summation_bound


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers() if "running" in name}


def _step(passes: str, method: str = "prcl", seed: int = 0):
    """One train_step of ``method`` on a tiny resnet18; returns (nets before, nets after, batch, method)."""
    cfg = load_config(None, [f"method.name={method}", f"method.student_passes={passes}", "data.num_classes=3",
                             "prcl.num_queries=8", "prcl.num_negatives=16", "prcl.kernel=chunked",
                             "method.strong_scale_range=[1.0,1.0]"])
    torch.manual_seed(seed)
    chosen = build_method(cfg)
    nets = chosen.build_networks(build_segmenter("resnet18", num_classes=3).train())
    before = copy.deepcopy(nets)
    g = torch.Generator().manual_seed(seed)
    batch = StepInput(labeled_images=torch.randn(2, 3, 64, 64, generator=g),
                      labels=torch.randint(0, 3, (2, 64, 64), generator=g),
                      unlabeled_images=torch.randn(2, 3, 64, 64, generator=g) + 1.0,
                      step=0, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        losses = chosen.train_step(nets, batch)
    assert torch.isfinite(losses["loss"])
    return before, nets, batch, chosen


@pytest.mark.parametrize("method", ["mean_teacher", "prcl"])
def test_separate_passes_update_batchnorm_like_two_manual_passes(method):
    before, after, batch, chosen = _step("separate", method)
    # The same step by hand: teacher pseudo-labels, the same strong view, then two student passes.
    teacher = copy.deepcopy(before["teacher"]).train()
    pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
    strong, _, _ = chosen.strong_view(batch.unlabeled_images, pseudo_labels, confidence,
                                      generator=torch.Generator().manual_seed(7))
    student = before["student"]
    with torch.no_grad():
        out_labeled = student(batch.labeled_images)
        out_strong = student(strong)
    for name, value in _running_stats(student).items():  # the same passes on the same machine: bit for bit
        assert torch.equal(_running_stats(after["student"])[name], value), name
    assert int(after["student"].classifier[1].num_batches_tracked) == 2  # running statistics updated twice


@pytest.mark.parametrize("passes", ["separate", "joint"])
def test_probability_head_normalises_both_passes_in_one_batch(passes):
    """The release's uncer_head(torch.cat((raw_feat_l, raw_feat_u))): one BatchNorm batch per step."""
    before, after, batch, chosen = _step(passes, "prcl")
    teacher = copy.deepcopy(before["teacher"]).train()
    pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
    strong, _, _ = chosen.strong_view(batch.unlabeled_images, pseudo_labels, confidence,
                                      generator=torch.Generator().manual_seed(7))
    head = before["probability_head"]
    per_pass = copy.deepcopy(head)
    with torch.no_grad():
        if passes == "separate":
            features = [before["student"](batch.labeled_images).features, before["student"](strong).features]
        else:
            features = list(before["student"](torch.cat([batch.labeled_images, strong])).features.split(2))
        head(torch.cat(features))
        for feature in features:
            per_pass(feature)
    got = _running_stats(after["probability_head"])
    for name, value in _running_stats(head).items():  # the same call on the same machine: bit for bit
        assert torch.equal(got[name], value), name
    assert all(int(value) == 1 for name, value in got.items() if name.endswith("num_batches_tracked"))
    # per-pass normalisation (the former behaviour) would leave other statistics: they differ by more than 1e-3 of
    # their size, which rounding cannot reach (n eps for batch means of n <= 1024 pixels: 1.2e-4 at worst)
    per_pass_stats = _running_stats(per_pass)
    assert any((got[name] - per_pass_stats[name]).abs().max() > 1e-3 * got[name].abs().max() for name in got
               if "running_mean" in name)


def test_joint_pass_gives_other_batchnorm_statistics_than_separate_passes():
    _, separate, _, _ = _step("separate")
    _, joint, _, _ = _step("joint")
    assert int(joint["student"].classifier[1].num_batches_tracked) == 1
    separate_stats, joint_stats = _running_stats(separate["student"]), _running_stats(joint["student"])
    # other batches give other statistics: differences above 1e-3 of their size, which rounding cannot reach
    # (n eps for batch means of n <= 4096 pixels a channel: 4.9e-4 at worst)
    differing = [name for name in separate_stats
                 if separate_stats[name].dtype.is_floating_point
                 and (separate_stats[name] - joint_stats[name]).abs().max() > 1e-3 * joint_stats[name].abs().max()]
    assert len(differing) > len(separate_stats) // 3  # every BN layer's statistics differ, not a few


# --------------------------------------------------------------------------------------------
# the trainer runs any method through the Method interface
# --------------------------------------------------------------------------------------------


class EntropyMinimisation(Method):
    """A toy fourth method: labels plus the student's entropy on unlabeled images, with its own
    optimiser group, a counter carried across steps (and checkpoints), and a post-step update."""

    name = "entropy"
    uses_unlabeled = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.updates = torch.zeros((), dtype=torch.int64)

    def optimizer_groups(self, nets):
        head = [p for p in nets["student"].classifier.parameters()]
        rest = [p for n, p in nets["student"].named_parameters() if p.requires_grad and not n.startswith("classifier")]
        return [{"name": "student", "lr": self.cfg.optim.lr, "params": rest},
                {"name": "classifier", "lr": self.cfg.optim.lr / 10, "params": head}]

    def train_step(self, nets, batch):
        out = nets["student"](torch.cat([batch.labeled_images, batch.unlabeled_images]))
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(out.logits[:num_labeled], batch.labels)
        prob = out.logits[num_labeled:].float().softmax(dim=1)
        entropy = -(prob * prob.clamp_min(1e-8).log()).sum(1).mean()
        return {"loss": sup + 0.1 * entropy, "sup": sup.detach(), "entropy": entropy.detach()}

    def after_step(self, nets, step):
        self.updates += 1

    def state_dict(self):
        return {"updates": self.updates.clone()}

    def load_state_dict(self, state):
        self.updates = state["updates"].clone()


@pytest.mark.slow
def test_a_new_method_runs_through_the_unchanged_trainer(demo_root, tmp_path, monkeypatch):
    from prcl.checkpoint import load_checkpoint
    from prcl.engine.trainer import Trainer
    from tiny_run import tiny_overrides

    monkeypatch.setitem(METHODS, "entropy", EntropyMinimisation)
    monkeypatch.setattr(config_module, "METHOD_NAMES", (*config_module.METHOD_NAMES, "entropy"))
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(demo_root, out, method="entropy", iterations=3))
    trainer = Trainer(cfg)
    assert set(trainer.nets) == {"student"}
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["student", "classifier"]
    summary = trainer.fit()
    assert summary["method"] == "entropy" and summary["iterations"] == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == 3 and all(r["entropy"] > 0 for r in train)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert int(state["method"]["updates"]) == 3  # after_step ran once per step, saved with the run
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    # each group decays from its own base lr: the same float64 poly factor times each base, a few roundings apart
    assert lrs[1] == pytest.approx(lrs[0] / 10, rel=4 * EPS64)
    # the representation head reads into no loss: frozen, so data parallelism needs no unused-parameter search
    assert not any(p.requires_grad for p in trainer.nets["student"].representation.parameters())
    # resuming restores the method's own state
    resumed = Trainer(load_config(None, tiny_overrides(demo_root, out, method="entropy", iterations=4)),
                      resume="auto")
    assert int(resumed.method.updates) == 3
    resumed.fit()
    assert int(load_checkpoint(out / "checkpoints" / "last.pt")["method"]["updates"]) == 4


def test_the_config_accepts_the_registered_methods_in_their_order():
    """``prcl.config.METHOD_NAMES`` (torch-free, read by every config) lists the registry's names."""
    assert tuple(METHODS) == METHOD_NAMES


def test_unknown_method_is_refused_with_the_registered_names():
    with pytest.raises(UserError, match=r"'method\.name' must be one of supervised, mean_teacher, prcl, got 'entropy'"):
        load_config(None, ["method.name=entropy"])


# --------------------------------------------------------------------------------------------
# which pixels each loss uses, on a hand-made case
# --------------------------------------------------------------------------------------------


def test_contrast_mask_keeps_labeled_pixels_and_confident_pseudo_labels():
    # one labeled image, two strong views; 1 x 3 maps
    labels = torch.tensor([[[0, -1, 2]],       # labeled: the middle pixel is ignore
                           [[1, 1, -1]],       # strong view 1: the last pixel was cut out by the mix
                           [[2, 0, 0]]])       # strong view 2
    confidence = torch.tensor([[[0.9, 0.69, 0.99]],
                               [[0.7, 0.2, 1.0]]])
    valid = contrast_mask(labels, confidence, weak_threshold=0.7)
    expected = torch.tensor([[[True, False, True]],    # labels alone decide on labeled images
                             [[True, False, False]],   # 0.69 < 0.7; the cut-out pixel stays out at 0.99
                             [[True, False, True]]])   # exactly 0.7 passes, 0.2 does not
    assert torch.equal(valid, expected)


def test_pseudo_label_and_supervised_losses_count_only_their_pixels():
    from prcl.losses import pseudo_label_loss

    # two classes, 1 x 4 image; logits favour class 0 everywhere with log-odds log 3 (p = 0.75)
    logits = torch.log(torch.tensor([0.75, 0.25]))[None, :, None, None].expand(1, 2, 1, 4).clone()
    pseudo = torch.tensor([[[0, 1, 0, -1]]])
    confidence = torch.tensor([[[0.98, 0.99, 0.5, 0.0]]])
    # confident pixels (q >= 0.97) among those with a pseudo-label: 2 of 3 -> weight 2/3; cross-entropy
    # over the pixels with ce > 0 (all three labeled): (-log .75 - log .25 - log .75) / 3
    ce = (-2 * math.log(0.75) - math.log(0.25)) / 3
    # float32 against float64: an (identity) upsampling of 4 weights, a softmax over 2 classes, 3 positive pixel
    # terms weighted, summed and divided: 4 + 2 + 3 + 5 roundings of the loss
    rounding = summation_bound(1.0, 4 + 2 + 3 + 5)
    loss = float(pseudo_label_loss(logits, pseudo, confidence, threshold=0.97))
    assert loss == pytest.approx(2 / 3 * ce, rel=rounding)
    labels = torch.tensor([[-1, 1, -1, 0]])[:, None, :].expand(1, 1, 4)
    expected = (-math.log(0.25) - math.log(0.75)) / 2  # the two labeled pixels only
    assert float(supervised_loss(logits, labels)) == pytest.approx(expected, rel=rounding)  # (the same steps, 2 pixels)
