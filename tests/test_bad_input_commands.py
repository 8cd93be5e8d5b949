"""User mistakes on the command line (issue 9): one line on stderr, exit 2, nothing written or lost."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.cli import main
from prcl.commands import evaluate as evaluate_command
from prcl.devices import resolve_device
from prcl.errors import UserError
from prcl.infer import Predictor, palette
from prcl.infer.predictor import Prediction

DEMO_CONFIG = str(Path(__file__).resolve().parents[1] / "src" / "prcl" / "configs" / "demo.yaml")




def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ids(path: Path, ids: list[str]) -> str:
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


# ----------------------------------------------------------------------------- prcl splits make


def test_splits_make_refuses_to_replace_existing_splits_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], error_line) -> None:
    out = tmp_path / "splits"
    train = _ids(tmp_path / "train.txt", [f"t{k}" for k in range(10)])
    args = ["splits", "make", "--out", str(out), "--num-labels", "3", "--train-list", train]
    assert main(args) == 0
    capsys.readouterr()
    before = _snapshot(out)

    other = _ids(tmp_path / "other.txt", [f"o{k}" for k in range(8)])
    assert main(["splits", "make", "--out", str(out), "--num-labels", "3", "--train-list", other]) == 2
    line = error_line()
    assert str(out / "3" / "0") in line and "labeled_filename.txt" in line and "--force" in line
    assert _snapshot(out) == before  # nothing replaced

    assert main(["splits", "make", "--out", str(out), "--num-labels", "3", "--train-list", other, "--force"]) == 0
    assert capsys.readouterr().out.startswith("replaced")
    labeled = (out / "3" / "0" / "labeled_filename.txt").read_text().split()
    assert len(labeled) == 3 and all(i.startswith("o") for i in labeled)
    assert sorted(p.name for p in (out / "3" / "0").iterdir()) == [
        "labeled_filename.txt", "unlabeled_filename.txt", "valid_filename.txt"]  # no temporary files


def test_splits_make_refuses_valid_ids_among_train_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str], error_line) -> None:
    out = tmp_path / "splits"
    train = _ids(tmp_path / "train.txt", [f"t{k}" for k in range(10)])
    valid = _ids(tmp_path / "valid.txt", ["v0", "t3", "t5", "t7", "t9"])
    assert main(["splits", "make", "--out", str(out), "--num-labels", "2", "--train-list", train,
                 "--valid-list", valid]) == 2
    line = error_line()
    assert "4 valid ids are also train ids" in line and "'t3', 't5', 't7'" in line
    assert not out.exists()

    # a folder dataset without --train-list: its images minus the valid ids are the train ids
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for k in range(6):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / f"i{k}.png")
    valid = _ids(tmp_path / "valid2.txt", ["i4", "i5"])
    assert main(["splits", "make", "--out", str(out), "--num-labels", "2", "--root", str(root),
                 "--valid-list", valid]) == 0
    written = out / "2" / "0"
    train_ids = (written / "labeled_filename.txt").read_text().split() + (
        written / "unlabeled_filename.txt").read_text().split()
    assert sorted(train_ids) == ["i0", "i1", "i2", "i3"]
    capsys.readouterr()
    assert main(["splits", "check", "--out", str(out), "--num-labels", "2", "--root", str(root)]) == 0


def test_splits_missing_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], error_line) -> None:
    assert main(["splits", "make", "--num-labels", "2"]) == 2
    line = error_line()
    assert "--out FOLDER" in line and "--train-list FILE" in line
    assert main(["splits", "make", "--out", str(tmp_path / "s"), "--num-labels", "2"]) == 2
    assert "--train-list FILE" in error_line()
    assert main(["splits"]) == 2
    assert "make" in error_line()
    assert main(["splits", "make", "--out", str(tmp_path / "s"), "--num-labels", "2",
                 "--train-list", str(tmp_path / "nowhere.txt")]) == 2
    assert "--train-list" in error_line()
    with pytest.raises(SystemExit) as info:  # argparse's own errors: one line too, exit 2
        main(["splits", "make", "--num-labels", "two"])
    assert info.value.code == 2
    assert "invalid int value" in error_line()
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- prcl eval --out


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("evaluated although the output path cannot be written")

    monkeypatch.setattr(evaluate_command, "evaluate_checkpoint", fail)


def test_eval_out_that_cannot_be_written_fails_before_evaluating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_evaluation: None, error_line) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    checkpoint = str(tmp_path / "model.pt")
    assert main(["eval", "-c", DEMO_CONFIG, "--checkpoint", checkpoint, "--out", str(blocker / "r.json")]) == 2
    line = error_line()
    assert str(blocker / "r.json") in line and "is a file, not a folder" in line
    assert blocker.read_text() == "keep me"

    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["eval", "-c", DEMO_CONFIG, "--checkpoint", checkpoint, "--out", str(folder)]) == 2
    assert "is a folder; give a file name" in error_line()

    assert main(["eval", "--checkpoint", checkpoint]) == 2  # a missing flag: one line, not a usage block
    assert "--config FILE" in error_line()


def test_eval_writes_its_json_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = {"class_names": ["a", "b"], "per_class_iou": [0.5, None], "protocol": "whole", "images": 3,
              "miou": 0.5, "miou_all_classes": None, "split": "valid", "network": "teacher"}
    monkeypatch.setattr(evaluate_command, "evaluate_checkpoint", lambda *a, **k: dict(result))
    out = tmp_path / "new" / "folder" / "r.json"
    assert main(["eval", "-c", DEMO_CONFIG, "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == 0.5
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


# ----------------------------------------------------------------------------- prcl predict


class _FakePredictor:
    """Predicts class (first pixel's red value mod 3) everywhere, with certainty; no probability head."""

    num_classes = 3
    probability_head = None
    palette = palette(3)  # the class colours pictures use (a checkpoint without any: the default)

    def predict(self, picture: np.ndarray) -> Prediction:
        assert picture.dtype == np.uint8 and picture.shape[2] == 3
        mask = np.full(picture.shape[:2], int(picture[0, 0, 0]) % 3, np.int64)
        probabilities = np.eye(3, dtype=np.float32)[mask].transpose(2, 0, 1)
        return Prediction(mask=mask, probabilities=probabilities, confidence=probabilities.max(0), uncertainty=None)

    def predict_batch(self, pictures: list[np.ndarray]) -> list[Prediction]:
        return [self.predict(picture) for picture in pictures]


@pytest.fixture
def fake_predictor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []

    def from_checkpoint(cls, path, device="cpu", use="teacher"):
        loads.append(str(path))
        return _FakePredictor()

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(from_checkpoint))
    return loads


def test_predict_inputs_sharing_a_stem_get_distinct_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_predictor: list[str], error_line) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((4, 4, 3), 1, np.uint8)).save(photos / "x.png")
    Image.fromarray(np.full((4, 4, 3), 2, np.uint8)).save(photos / "x.bmp")
    Image.fromarray(np.full((4, 4, 3), 0, np.uint8)).save(photos / "y.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", "m.pt", str(photos), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["x.bmp_mask.png", "x.bmp_overlay.png", "x.bmp_uncertainty.png", "x.png_mask.png",
                     "x.png_overlay.png", "x.png_uncertainty.png", "y_mask.png", "y_overlay.png",
                     "y_uncertainty.png"]
    assert np.asarray(Image.open(out / "x.png_mask.png")).max() == 1
    assert np.asarray(Image.open(out / "x.bmp_mask.png")).max() == 2
    capsys.readouterr()

    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(other / "y.png")
    before = _snapshot(out)
    assert main(["predict", "--checkpoint", "m.pt", str(photos / "y.png"), str(other / "y.png"),
                 "--out", str(out)]) == 2
    line = error_line()
    assert "same y.png_mask.png" in line and "separate --out folders" in line
    assert _snapshot(out) == before


def test_predict_out_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_predictor: list[str], error_line) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["predict", "--checkpoint", "m.pt", str(tmp_path / "a.png"), "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in error_line()
    assert main(["predict", "--checkpoint", "m.pt", str(tmp_path / "a.png"), "--out", str(blocker / "sub")]) == 2
    assert f"{blocker} is a file" in error_line()
    assert fake_predictor == [] and blocker.read_text() == "keep me"
    assert main(["predict", str(tmp_path / "a.png")]) == 2
    line = error_line()
    assert "--checkpoint FILE" in line and "--out FOLDER" in line


# ----------------------------------------------------------------------------- devices


def test_cuda_without_a_gpu_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fake_predictor: list[str], no_evaluation: None, error_line) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", "m.pt", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--device", "cuda"]) == 2
    line = error_line()
    assert "--device cuda but no CUDA GPU is visible to torch" in line and "use cpu or auto" in line
    assert fake_predictor == [] and not (tmp_path / "o").exists()
    assert main(["eval", "-c", DEMO_CONFIG, "--checkpoint", "m.pt", "--device", "cuda:1"]) == 2
    assert "--device cuda:1 but no CUDA GPU" in error_line()


def test_resolve_device_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^train.device=cuda but no CUDA GPU is visible to torch .*; use cpu or auto$"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("auto") == torch.device("cuda")
    with pytest.raises(UserError, match=r"train.device=cuda:2 but torch sees 1 CUDA GPU \(cuda:0..cuda:0\)"):
        resolve_device("cuda:2")


# ----------------------------------------------------------------------------- issue 20: values on the command line


@pytest.mark.parametrize("args, flag", [
    (["splits", "make", "--out", "{tmp}/s", "--num-labels", "2", "--train-list", "{tmp}/t.txt", "--seed", "-1"],
     "--seed: must be in [0, 4294967295], got -1"),
    (["splits", "make", "--out", "{tmp}/s", "--num-labels", "2", "--train-list", "{tmp}/t.txt", "--seed", "2**40"],
     "--seed: invalid int value"),
    (["demo", "--out", "{tmp}/s", "--seed", "-5"], "--seed: must be in [0, 4294967295], got -5"),
    (["eval", "-c", DEMO_CONFIG, "--checkpoint", "m.pt", "--out", "{tmp}/s/r.json", "--scales", "1", "1e6"],
     "--scales: each scale must be in (0, 8], got 1e6"),
    (["eval", "-c", DEMO_CONFIG, "--checkpoint", "m.pt", "--out", "{tmp}/s/r.json", "--scales", "nan"],
     "--scales: each scale must be in (0, 8], got nan"),
    (["eval", "-c", DEMO_CONFIG, "--checkpoint", "m.pt", "--out", "{tmp}/s/r.json", "--scales", "1", "data.root=x"],
     "--scales: 'data.root=x' is not a scale; put key=value overrides before --scales"),
])
def test_seeds_and_scales_out_of_range_are_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_evaluation: None, args: list[str], flag: str, error_line) -> None:
    _ids(tmp_path / "t.txt", ["a", "b", "c"])
    with pytest.raises(SystemExit) as info:
        main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert info.value.code == 2
    assert flag in error_line()
    assert not (tmp_path / "s").exists()


def test_eval_refuses_a_config_that_contradicts_the_checkpoints_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error_line) -> None:
    from prcl.config import load_config
    from prcl.engine import data_setup
    from prcl.engine import evaluate as engine_evaluate

    stored = load_config(None, ["model.encoder=resnet18", "model.weights=null"])  # what the checkpoint holds
    loaded: list[str] = []

    def from_checkpoint(cls, path, device="cpu", use="teacher"):
        loaded.append(str(path))
        return SimpleNamespace(config=stored, model=None, probability_head=None)

    def no_evaluation(*args, **kwargs):
        raise UserError("reached the evaluation")  # the check passed: what follows is not this test's

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(from_checkpoint))
    monkeypatch.setattr(data_setup, "build_run_data", lambda cfg: SimpleNamespace(valid=[], test=None))
    monkeypatch.setattr(engine_evaluate, "evaluate_model", no_evaluation)
    checkpoint = tmp_path / "run.pt"
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  encoder: resnet18\n  output_stride: 16\n  weights: imagenet\n")
    out = tmp_path / "out" / "r.json"
    base = ["eval", "-c", str(config), "--checkpoint", str(checkpoint), "--out", str(out)]

    assert main([*base, "model.encoder=resnet34"]) == 2
    line = error_line()
    assert "model.encoder is resnet34 (override 'model.encoder=resnet34')" in line
    assert f"checkpoint {checkpoint} holds a network with model.encoder=resnet18" in line and "drop the override" in line
    assert main([*base, "data.demo.num_classes=9"]) == 2  # the class count derived from an override
    assert "data.num_classes is 9" in error_line()
    config.write_text("model:\n  encoder: resnet18\n  output_stride: 8\n")
    assert main(base) == 2
    line = error_line()
    assert f"model.output_stride is 8 (in {config})" in line and "set model.output_stride=16" in line
    assert not out.parent.exists()

    config.write_text("model:\n  encoder: resnet18\n  weights: imagenet\n")  # the start of training does not matter
    assert main([*base, "eval.flip=true"]) == 2
    assert "reached the evaluation" in error_line()
    assert loaded == [str(checkpoint)] * 4


def test_convert_release_of_a_folder_says_it_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], error_line) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    out = tmp_path / "out" / "converted.pt"
    assert main(["convert-release", str(folder), "--out", str(out)]) == 2
    line = error_line()
    assert f"release checkpoint {folder} is a folder;" in line and ".pth file" in line and "does not exist" not in line
    (folder / "prcl_voc_662.pth").write_bytes(b"")
    assert main(["convert-release", str(folder), "--out", str(out)]) == 2
    assert "is a folder (it holds prcl_voc_662.pth)" in error_line()
    assert not out.parent.exists()
