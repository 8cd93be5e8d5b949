"""`prcl export`: ONNX files that onnxruntime runs like PyTorch, at any batch and size; bad input in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prcl.checkpoint import save_checkpoint
from prcl.cli import main
from prcl.errors import UserError
from prcl.infer import export
from prcl.infer.visualize import palette

from tiny_run import tiny_networks
from tolerances import assert_within, network_bound

NUM_CLASSES = 3
SIZES = [(2, 64, 64), (2, 96, 80)]  # (batch, height, width): dynamic axes
CLASS_NAMES = ["sky", "road", "tree"]
CLASS_COLORS = [[70, 130, 180], [128, 64, 128], [107, 142, 35]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A PRCL checkpoint (teacher, student, probability head) and a supervised one (student only)."""
    torch.manual_seed(0)
    cfg, student, teacher, head = tiny_networks(NUM_CLASSES)
    folder = tmp_path_factory.mktemp("export")
    prcl, supervised = folder / "prcl.pt", folder / "supervised.pt"
    save_checkpoint(prcl, {"config": cfg, "student": student.state_dict(), "teacher": teacher.state_dict(),
                           "probability_head": head.state_dict(), "class_names": CLASS_NAMES,
                           "class_colors": CLASS_COLORS})
    save_checkpoint(supervised, {"config": cfg, "student": student.state_dict()})  # as older checkpoints: no classes
    return {"prcl": prcl, "supervised": supervised, "student": student.eval(), "teacher": teacher.eval(),
            "head": head.eval(), "folder": folder}


def _session(path: Path) -> Any:
    import onnxruntime  # a dev extra: fails when missing, never skips
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def _reference(model: torch.nn.Module, head: torch.nn.Module | None, x: torch.Tensor) -> list[np.ndarray]:
    """Logits (and mean variance) upsampled to the input size, as evaluation does."""
    output = model(x)
    size = x.shape[-2:]
    maps = [F.interpolate(output.logits, size=size, mode="bilinear", align_corners=True)]
    if head is not None:
        variance = head(output.features).mean(1, keepdim=True)
        maps.append(F.interpolate(variance, size=size, mode="bilinear", align_corners=True))
    return [m.numpy() for m in maps]


def test_prcl_export_matches_pytorch_at_two_sizes(checkpoints: dict, capsys: pytest.CaptureFixture) -> None:
    import onnxruntime  # noqa: F401  (a dev extra: fails when missing, never skips)
    out = checkpoints["folder"] / "onnx" / "prcl.onnx"
    assert main(["export", "--checkpoint", str(checkpoints["prcl"]), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("onnxruntime check") and printed[-1].endswith(": ok")
    assert [p.name for p in out.parent.iterdir()] == ["prcl.onnx"]  # no temporary left behind
    session = _session(out)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "variance"]
    metadata = session.get_modelmeta().custom_metadata_map  # the checkpoint's classes, as JSON
    assert json.loads(metadata["class_names"]) == CLASS_NAMES
    assert json.loads(metadata["class_colors"]) == CLASS_COLORS
    for batch, height, width in SIZES:
        x = torch.randn(batch, 3, height, width)
        logits, variance = session.run(None, {"image": x.numpy()})
        expected_logits, expected_variance = _reference(checkpoints["teacher"], checkpoints["head"], x)
        assert logits.shape == (batch, NUM_CLASSES, height, width) and variance.shape == (batch, 1, height, width)
        # ONNX Runtime's kernels sum in other orders than PyTorch's: a forward pass's rounding (tolerances.py)
        assert_within(logits, expected_logits, network_bound(expected_logits), "logits")
        # the head reads the features of that pass: the same rounding, relative to the variances
        assert_within(variance, expected_variance, network_bound(expected_variance), "variance")
        assert np.all((variance > 0) & (variance < 1))


def test_supervised_export_has_only_logits(checkpoints: dict, capsys: pytest.CaptureFixture) -> None:
    import onnxruntime  # noqa: F401  (a dev extra: fails when missing, never skips)
    out = checkpoints["folder"] / "supervised.onnx"
    assert main(["export", "--checkpoint", str(checkpoints["supervised"]), "--out", str(out), "--no-check"]) == 0
    assert "onnxruntime check" not in capsys.readouterr().out  # --no-check skips it
    session = _session(out)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    # a checkpoint without classes: no names, the colours prcl predict draws (the default palette)
    metadata = session.get_modelmeta().custom_metadata_map
    assert "class_names" not in metadata
    assert json.loads(metadata["class_colors"]) == palette(NUM_CLASSES).tolist()
    batch, height, width = SIZES[1]
    x = torch.randn(batch, 3, height, width)
    (logits,) = session.run(None, {"image": x.numpy()})
    (expected,) = _reference(checkpoints["student"], None, x)  # no teacher: the student
    # ONNX Runtime's kernels sum in other orders than PyTorch's: a forward pass's rounding (tolerances.py)
    assert_within(logits, expected, network_bound(expected), "logits")


def _one_error_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err
    return err


def test_bad_input_is_one_line_before_exporting(
    checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime  # noqa: F401  (a dev extra: fails when missing, never skips)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported despite bad input")

    monkeypatch.setattr(export, "export_onnx", no_export)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ckpt = str(checkpoints["prcl"])
    assert main(["export", "--checkpoint", ckpt, "--out", str(blocker / "model.onnx")]) == 2
    _one_error_line(capsys, "--out", "is a file")
    assert main(["export", "--checkpoint", ckpt, "--format", "tflite", "--out", str(tmp_path / "m")]) == 2
    _one_error_line(capsys, "--format tflite")
    assert main(["export", "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "--checkpoint")
    assert list(tmp_path.iterdir()) == [blocker]
    monkeypatch.undo()
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "missing.pt")
    assert main(["export", "--checkpoint", ckpt, "--opset", "30", "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "--opset 30")
    assert list(tmp_path.iterdir()) == [blocker]


def test_missing_packages_message(
    checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert not export.onnx_available()
    assert main(["export", "--checkpoint", str(checkpoints["prcl"]), "--out", str(tmp_path / "m.onnx")]) == 2
    assert _one_error_line(capsys) == "prcl export needs onnx and onnxruntime: pip install 'prcl[export]'"
    with pytest.raises(UserError, match=r"prcl\[export\]"):
        export.export_onnx(checkpoints["prcl"], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
