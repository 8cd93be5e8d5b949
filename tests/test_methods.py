"""One training step of the methods: the student's forward passes and what they do to BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch

from prcl.config import load_config
from prcl.methods import Networks, StepInput, build_method
from prcl.methods.base import teacher_pseudo_labels
from prcl.models import ProbabilityHead, build_segmenter, make_teacher


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers() if "running" in name}


def _step(passes: str, method: str = "prcl", seed: int = 0):
    """One train_step of ``method`` on a tiny resnet18; returns (nets before, nets after, batch, method)."""
    cfg = load_config(None, [f"method.name={method}", f"method.student_passes={passes}", "data.num_classes=3",
                             "prcl.num_queries=8", "prcl.num_negatives=16", "prcl.kernel=chunked",
                             "method.strong_scale_range=[1.0,1.0]"])
    torch.manual_seed(seed)
    student = build_segmenter("resnet18", num_classes=3).train()
    nets = Networks(student, make_teacher(student), ProbabilityHead(304).train())
    before = copy.deepcopy(nets)
    g = torch.Generator().manual_seed(seed)
    batch = StepInput(labeled_images=torch.randn(2, 3, 64, 64, generator=g),
                      labels=torch.randint(0, 3, (2, 64, 64), generator=g),
                      unlabeled_images=torch.randn(2, 3, 64, 64, generator=g) + 1.0,
                      progress=0.0, contrast_weight=1.0, generator=torch.Generator().manual_seed(7))
    chosen = build_method(cfg)
    with torch.no_grad():
        losses = chosen.train_step(nets, batch)
    assert torch.isfinite(losses["loss"])
    return before, nets, batch, chosen


@pytest.mark.parametrize("method", ["mean_teacher", "prcl"])
def test_separate_passes_update_batchnorm_like_two_manual_passes(method):
    before, after, batch, chosen = _step("separate", method)
    # The same step by hand: teacher pseudo-labels, the same strong view, then two student passes.
    teacher = copy.deepcopy(before.teacher)
    pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
    strong, _, _ = chosen.strong_view(batch.unlabeled_images, pseudo_labels, confidence,
                                      generator=torch.Generator().manual_seed(7))
    student = before.student
    with torch.no_grad():
        out_labeled = student(batch.labeled_images)
        out_strong = student(strong)
        if method == "prcl":
            before.probability_head(out_labeled.features)
            before.probability_head(out_strong.features)
    for name, value in _running_stats(student).items():
        torch.testing.assert_close(_running_stats(after.student)[name], value, msg=name)
    assert int(after.student.classifier[1].num_batches_tracked) == 2  # running statistics updated twice
    if method == "prcl":
        for name, value in _running_stats(before.probability_head).items():
            torch.testing.assert_close(_running_stats(after.probability_head)[name], value, msg=name)


def test_joint_pass_gives_other_batchnorm_statistics_than_separate_passes():
    _, separate, _, _ = _step("separate")
    _, joint, _, _ = _step("joint")
    assert int(joint.student.classifier[1].num_batches_tracked) == 1
    separate_stats, joint_stats = _running_stats(separate.student), _running_stats(joint.student)
    differing = [name for name in separate_stats
                 if separate_stats[name].dtype.is_floating_point
                 and not torch.allclose(separate_stats[name], joint_stats[name], atol=1e-6)]
    assert len(differing) > len(separate_stats) // 3  # every BN layer's statistics differ, not a few
