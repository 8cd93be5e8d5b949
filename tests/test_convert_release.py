"""`prcl convert-release`: the authors' release checkpoint -> a prcl checkpoint with identical outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.checkpoint import load_checkpoint
from prcl.cli import main
from prcl.data.datasets import VOC_CLASS_NAMES
from prcl.engine.trainer import CHECKPOINT_FORMAT
from prcl.infer import Predictor
from prcl.models import ProbabilityHead, build_segmenter
from prcl.models.release_checkpoint import (
    release_state_from_student,
    student_state_from_release,
)

from tolerances import assert_within, network_bound


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of ``module`` with random values that keep a deep network's outputs finite."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith(("running_mean", "bias")) or key == "beta":
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        elif value.dim() == 1:  # BatchNorm weights, gamma
            state[key] = 0.5 + 0.5 * torch.rand(value.shape, generator=generator)
        else:  # conv / linear weights: He scale
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release-layout file (ResNet-101, 21 classes, random float32 tensors), its path and its content."""
    student = build_segmenter("resnet101", num_classes=21, output_stride=16)
    head = ProbabilityHead()
    content = {
        "epoch": 199,
        "model": release_state_from_student(_random_state(student, seed=1)),
        "ema": release_state_from_student(_random_state(student, seed=2)),
        "uncer_head": _random_state(head, seed=3),
        "optimizer": {}, "lr_scheduler": {},
    }
    path = tmp_path_factory.mktemp("release") / "prcl_voc_662.pth"
    torch.save(content, path)
    return path, content


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    path, _ = release
    out = tmp_path_factory.mktemp("converted") / "sub" / "converted.pt"
    assert main(["convert-release", str(path), "--out", str(out), "data.root=/data/VOC2012"]) == 0
    return out


def _by_hand(content: dict, entry: str) -> tuple[torch.nn.Module, ProbabilityHead]:
    model = build_segmenter("resnet101", 21, 16)
    model.load_state_dict(student_state_from_release(content[entry]))  # strict
    head = ProbabilityHead()
    head.load_state_dict(content["uncer_head"])  # strict
    return model.eval(), head.eval()


def test_converted_checkpoint_holds_the_release_under_prcl_names(release, converted):
    path, content = release
    state = load_checkpoint(converted)
    assert state["source"] == f"reference release {path}"
    assert state["format"] != CHECKPOINT_FORMAT  # not a training run: `prcl train --resume` refuses it
    assert state["class_names"] == list(VOC_CLASS_NAMES)
    config = state["config"]
    assert config["model"]["encoder"] == "resnet101" and config["model"]["output_stride"] == 16
    assert config["data"]["dataset"] == "voc" and config["data"]["num_classes"] == 21
    assert config["data"]["root"] == "/data/VOC2012" and config["method"]["name"] == "prcl"
    for ours, theirs in (("student", "model"), ("teacher", "ema")):
        expected = student_state_from_release(content[theirs])
        assert state[ours].keys() == expected.keys()
        assert all(torch.equal(state[ours][k], expected[k]) for k in expected)
    assert all(torch.equal(state["probability_head"][k], v) for k, v in content["uncer_head"].items())


def test_converted_checkpoint_gives_identical_outputs(release, converted):
    """The teacher (the release's 'ema') and head from Predictor.from_checkpoint against the same
    tensors loaded by hand: bit-identical logits, representation mu and variance."""
    _, content = release
    predictor = Predictor.from_checkpoint(converted)  # use="teacher"
    assert predictor.num_classes == 21 and predictor.class_names == list(VOC_CLASS_NAMES)
    assert predictor.config is not None and predictor.config.data.root == "/data/VOC2012"
    model, head = _by_hand(content, "ema")
    x = torch.randn(1, 3, 49, 49, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = predictor.model(x), model(x)
        assert torch.isfinite(theirs.logits).all()
        assert torch.equal(ours.logits, theirs.logits)
        assert torch.equal(ours.mu, theirs.mu)
        assert predictor.probability_head is not None
        assert torch.equal(predictor.probability_head(ours.features), head(theirs.features))


def test_prcl_predict_accepts_the_converted_checkpoint(converted, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(converted), str(image), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "photo_mask.png").is_file()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prcl: error: "), err
    return err


def test_release_with_19_classes_is_refused(release, tmp_path, capsys):
    _, content = release
    other = dict(content)
    other["ema"] = dict(content["ema"])
    other["model"] = dict(content["model"])
    for entry in ("model", "ema"):
        other[entry]["classifier.3.weight"] = content[entry]["classifier.3.weight"][:19].clone()
        other[entry]["classifier.3.bias"] = content[entry]["classifier.3.bias"][:19].clone()
    path = tmp_path / "cityscapes.pth"
    torch.save(other, path)
    out = tmp_path / "out.pt"
    assert main(["convert-release", str(path), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert str(path) in err and "classifier.3.weight has shape (19, 256, 1, 1), expected (21, 256, 1, 1)" in err
    assert not out.exists()


def test_release_of_another_encoder_is_refused(tmp_path, capsys):
    student = build_segmenter("resnet18", num_classes=21, output_stride=16)
    state = release_state_from_student(student.state_dict())
    path = tmp_path / "resnet18.pth"
    torch.save({"model": state, "ema": state, "uncer_head": ProbabilityHead().state_dict()}, path)
    assert main(["convert-release", str(path), "--out", str(tmp_path / "out.pt")]) == 2
    err = _one_line_error(capsys)
    assert str(path) in err and "'model' entry" in err and "missing" in err


def test_file_that_is_not_a_release_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    out = tmp_path / "out.pt"
    assert main(["convert-release", str(path), "--out", str(out)]) == 2
    assert str(path) in _one_line_error(capsys)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert main(["convert-release", str(tmp_path / "text.pth"), "--out", str(out)]) == 2
    assert "text.pth" in _one_line_error(capsys)
    assert not out.exists()


def test_unwritable_out_is_refused_before_reading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["convert-release", str(tmp_path / "missing.pth"), "--out", str(blocker / "out.pt")]) == 2
    err = _one_line_error(capsys)
    assert "--out" in err and "missing.pth" not in err
    assert main(["convert-release", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o.pt")]) == 2
    assert "missing.pth does not exist" in _one_line_error(capsys)


def test_architecture_overrides_are_refused(tmp_path, capsys):
    out = tmp_path / "o.pt"
    assert main(["convert-release", str(tmp_path / "r.pth"), "--out", str(out), "model.encoder=resnet50"]) == 2
    assert "model.encoder" in _one_line_error(capsys)


def test_prcl_eval_accepts_the_converted_checkpoint(release, converted, tmp_path, capsys):
    """`prcl eval` on the converted checkpoint scores what the release's 'ema' tensors loaded by hand score."""
    import json

    from prcl.config import load_config
    from prcl.engine.data_setup import build_run_data
    from prcl.engine.evaluate import evaluate_model

    rng = np.random.default_rng(0)
    root, splits = tmp_path / "data", tmp_path / "splits" / "1" / "0"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    splits.mkdir(parents=True)
    for name in ("a", "b", "c", "d"):  # a labeled, b unlabeled, c and d valid: 21 classes, 255 ignored
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        mask = rng.integers(0, 21, (40, 48)).astype(np.uint8)
        mask[:4] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    for split, names in (("labeled", "a"), ("unlabeled", "b"), ("valid", "cd")):
        (splits / f"{split}_filename.txt").write_text("".join(f"{n}\n" for n in names))
    config = tmp_path / "eval.yaml"
    config.write_text(f"data:\n  dataset: folder\n  root: {root}\n  splits: {tmp_path / 'splits'}\n"
                      "  num_classes: 21\n  num_labels: 1\n  split_seed: 0\n  num_workers: 0\n"
                      "model:\n  encoder: resnet101\n  weights: null\n")
    out = tmp_path / "scores.json"
    assert main(["eval", "--config", str(config), "--checkpoint", str(converted), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["network"] == "teacher"
    cfg = load_config(config, [])
    model, _ = _by_hand(release[1], "ema")
    expected = evaluate_model(model, build_run_data(cfg).valid, cfg, "cpu")
    assert result["per_class_iou"] == expected["per_class_iou"] and result["miou"] == expected["miou"]
    assert "mIoU" in capsys.readouterr().out


def test_prcl_export_accepts_the_converted_checkpoint(release, converted, tmp_path, capsys):
    """The ONNX file of the converted checkpoint computes the release 'ema' model's logits and variance."""
    import onnxruntime  # (a dev extra: fails when missing, never skips)
    from test_export import _reference

    out = tmp_path / "release.onnx"
    assert main(["export", "--checkpoint", str(converted), "--format", "onnx", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(": ok")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "variance"]
    x = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(1))
    logits, variance = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected, expected_variance = _reference(*_by_hand(release[1], "ema"), x)  # as evaluation upsamples
    # ONNX Runtime's kernels sum in other orders than PyTorch's: a forward pass's rounding (tolerances.py)
    assert_within(logits, expected, network_bound(expected), "logits")
    # the head reads the features of that pass: the same rounding, relative to the variances
    assert_within(variance, expected_variance, network_bound(expected_variance), "variance")
