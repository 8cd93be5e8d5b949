"""A tiny training run for tests: the demo data at 64 px, resnet18 without weights, a few steps on the CPU."""

from __future__ import annotations

from prcl.config import load_config


def tiny_overrides(demo_root, out_dir, method="prcl", iterations=4, **extra):
    values = {
        "data.dataset": "demo", "data.root": str(demo_root), "data.num_labels": 8, "data.split_seed": 0,
        "data.crop_size": 64, "data.batch_size": 4, "data.unlabeled_batch_size": 4, "data.num_workers": 0,
        "data.scale_range": "[0.75,1.25]", "data.demo.image_size": 64, "data.demo.num_train": 40,
        "data.demo.num_valid": 8, "data.demo.num_test": 8, "data.demo.num_classes": 4,
        "model.encoder": "resnet18", "model.weights": "null", "method.name": method,
        "prcl.num_queries": 16, "prcl.num_negatives": 32, "prcl.temperature": 0.5, "prcl.kernel": "chunked",
        "optim.lr": 0.01, "optim.uncer_lr": 0.001,
        "train.iterations": iterations, "train.eval_every": 0, "train.checkpoint_every": 2, "train.log_every": 1,
        "train.out_dir": str(out_dir), "train.progress": "false", "train.device": "cpu",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(demo_root, out_dir, **kwargs):
    return load_config(None, tiny_overrides(demo_root, out_dir, **kwargs))


def tiny_networks(num_classes: int):
    """A resnet18 student, its probability head and a teacher that differs from the student.

    Two training-mode passes give the batch-norm layers non-trivial running statistics, so eval mode
    differs from train mode. Returns (config dict, student, teacher, head); call under a fixed seed.
    """
    import torch

    from prcl.config import config_to_dict
    from prcl.models import ProbabilityHead, build_segmenter, make_teacher

    cfg = config_to_dict(load_config(None, ["model.encoder=resnet18", f"data.num_classes={num_classes}"]))
    student = build_segmenter("resnet18", num_classes, 16, weights=None)
    head = ProbabilityHead()
    with torch.no_grad():
        student.train()
        head.train()
        for _ in range(2):
            head(student(torch.randn(2, 3, 64, 64)).features)
    teacher = make_teacher(student)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return cfg, student, teacher, head


def assert_same_weights(run_a, run_b):
    """The networks (student, teacher, probability head) in the ``checkpoints/last.pt`` of two run folders are
    equal bit for bit."""
    import torch

    from prcl.checkpoint import load_checkpoint

    a, b = (load_checkpoint(f"{run}/checkpoints/last.pt") for run in (run_a, run_b))
    for part in ("student", "teacher", "probability_head"):
        for key, value in a[part].items():
            assert torch.equal(b[part][key], value), f"{part}.{key}"
