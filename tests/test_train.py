"""End-to-end training on a tiny demo config: methods, run directory, resume, divergence, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from prcl.checkpoint import load_checkpoint
from prcl.cli import main
from prcl.engine.trainer import Trainer, TrainingDiverged
from prcl.errors import UserError
from prcl.methods import METHODS, MeanTeacher

from tiny_run import assert_same_weights, tiny_config

pytestmark = pytest.mark.slow  # every test here trains or runs the demo


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(METHODS))  # every registered method
def test_each_method_trains_and_writes_a_complete_run_directory(demo_root, tmp_path, method):
    torch.manual_seed(0)
    cfg = tiny_config(demo_root, tmp_path / method, method=method, iterations=16,
                      **{"data.num_labels": 4, "data.scale_range": "[1.0,1.0]"})
    trainer = Trainer(cfg)
    summary = trainer.fit()
    out = tmp_path / method
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    written = json.loads((out / "summary.json").read_text())
    for key in ("miou", "per_class_iou", "protocol", "iterations", "images_per_second"):
        assert key in written
    assert written["iterations"] == 16 and written["protocol"] == "whole" and 0 <= summary["miou"] <= 1
    train = [r for r in read_metrics(out) if r["type"] == "train"]
    assert len(train) == 16
    # the supervised loss (the loss, for a method without one) falls: the last steps' mean is below the first steps'
    key = "sup" if "sup" in train[0] else "loss"
    first = sum(r[key] for r in train[:4]) / 4
    last = sum(r[key] for r in train[-4:]) / 4
    assert last < first
    # what every logged step reports: data-loading time and peak memory
    assert all(0 <= r["data_seconds"] < r["images_per_second"] * 1e6 and r["peak_memory_mb"] > 50 for r in train)
    has_head = trainer.probability_head_network() is not None
    if isinstance(trainer.method, MeanTeacher):  # pseudo-labels of a teacher
        assert "unsup" in train[0] and 0 <= train[0]["unlabeled_above_un_threshold"] <= 1
        # the demo's unlabeled images have masks: the pseudo-label probe reports at every logged step
        assert all(0 <= r["pseudo_label_accuracy"] <= 1 and "pseudo_label_auroc_confidence" in r for r in train)
        assert ("pseudo_label_auroc_variance" in train[0]) == has_head
    if method == "prcl":
        assert all(r["prcl"] > 0 for r in train) and "variance" in train[0]
        assert 0 <= train[0]["unlabeled_above_weak_threshold"] <= 1
        # anchors: num_queries (16) per class with hard pixels, among the classes present (4 at most)
        assert all(r["prcl_anchors"] == 16 * r["prcl_anchor_classes"] for r in train)
        assert all(1 <= r["prcl_anchor_classes"] <= r["prcl_present_classes"] <= 4 for r in train)
    if has_head:
        # the variance's and the softmax's error-finding AUROCs at every evaluation and in the summary
        evaluations = [r for r in read_metrics(out) if r["type"] == "eval"]
        assert evaluations and all("auroc_variance" in r["uncertainty"] for r in evaluations)
        for key in ("uncertainty", "test_uncertainty"):
            measures = written[key]
            assert set(measures) == {"auroc_variance", "auroc_one_minus_max_prob", "auroc_entropy", "ece",
                                     "error_rate", "pixels"}
            assert measures["pixels"] > 0 and 0 <= measures["ece"] <= 1
            assert all(measures[k] is None or 0 <= measures[k] <= 1 for k in measures if k.startswith("auroc"))
    else:
        assert "uncertainty" not in written and "test_uncertainty" not in written
        assert all("uncertainty" not in r for r in read_metrics(out) if r["type"] == "eval")


def _weights(path):
    state = load_checkpoint(path)
    return {part: state.get(part) for part in ("student", "teacher", "probability_head")}


def test_resume_gives_the_same_weights_as_one_run(demo_root, tmp_path, monkeypatch):
    """Bit for bit (train.deterministic): N steps in one go equal N/2, an interruption, and a resume."""
    exact = {"train.deterministic": "true"}
    Trainer(tiny_config(demo_root, tmp_path / "straight", iterations=4, **exact)).fit()

    # The same run, interrupted during step 3 (its checkpoint is from step 2), then resumed.
    interrupted = Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=4, **exact))
    real_step, calls = interrupted.method.train_step, {"n": 0}

    def crash_on_third(nets, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(nets, batch)

    monkeypatch.setattr(interrupted.method, "train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    trainer = Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=4, **exact), resume="auto")
    assert trainer.step == 2
    trainer.fit()
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed") if r["type"] == "train"]
    assert steps == [1, 2, 3, 4]
    # resuming a finished run trains nothing and keeps the run's own figures in the summary
    tests = [r for r in read_metrics(tmp_path / "resumed") if r["type"] == "eval" and r["split"] == "test"]
    again = Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=4, **exact), resume="auto").fit()
    assert again["iterations"] == 4 and again["images_per_second"] > 0 and again["train_seconds"] > 0
    # its test evaluation is logged once, not once more per resume
    assert [r for r in read_metrics(tmp_path / "resumed") if r["type"] == "eval" and r["split"] == "test"] == tests
    assert len(tests) == 1
    # extended to 6 steps, it keeps the test line of step 4 and adds one at step 6
    Trainer(tiny_config(demo_root, tmp_path / "resumed", iterations=6, **exact), resume="auto").fit()
    tested = [r for r in read_metrics(tmp_path / "resumed") if r["type"] == "eval" and r["split"] == "test"]
    assert [r["step"] for r in tested] == [4, 6] and tested[0] == tests[0]


def test_a_finished_run_directory_is_never_overwritten(demo_root, tmp_path):
    cfg = tiny_config(demo_root, tmp_path / "run", method="supervised", iterations=2)
    Trainer(cfg).fit()
    before = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    code = main(["train", "-c", str(tmp_path / "run/config.yaml")])
    assert code == 2
    assert (tmp_path / "run/checkpoints/last.pt").read_bytes() == before


def test_non_finite_losses_are_skipped_then_stop_the_run_with_the_checkpoint_intact(demo_root, tmp_path,
                                                                                     monkeypatch):
    cfg = tiny_config(demo_root, tmp_path / "run", method="supervised", iterations=12,
                      **{"train.max_nonfinite_steps": 3})
    trainer = Trainer(cfg)
    real_step = trainer.method.train_step
    calls = {"n": 0}

    def flaky(nets, batch):
        calls["n"] += 1
        losses = real_step(nets, batch)
        if calls["n"] == 3 or calls["n"] > 4:  # one isolated bad step, then a run of bad steps
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.method, "train_step", flaky)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.fit()
    records = read_metrics(tmp_path / "run")
    skipped = [r["step"] for r in records if r["type"] == "skipped"]
    assert skipped == [3, 5, 6, 7]
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    # checkpoints written during the bad streak hold the weights of the last good step
    assert state["step"] == 6 and state["skipped_steps"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in state["student"].values() if v.is_floating_point())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "prcl", *args], capture_output=True, text=True, timeout=300)


def test_cli_help_and_usage_errors():
    result = run_cli("--help")
    assert result.returncode == 0 and "train" in result.stdout and "demo" in result.stdout
    assert run_cli("train", "--help").returncode == 0
    assert run_cli().returncode == 2


@pytest.mark.parametrize("override, words", [
    ("train.iterashuns=5", ["train.iterashuns", "train.iterations"]),
    ("method.weak_threshold=1.5", ["method.weak_threshold"]),
    ("data.batch_size=two", ["data.batch_size"]),
    ("method.name=fixmatch", ["method.name", "prcl"]),
    ("data.batch_size=1", ["data.batch_size", "2"]),
    ("train.accumulate=0", ["train.accumulate", ">= 1"]),
])
def test_config_errors_end_with_one_clear_line(tmp_path, override, words):
    result = run_cli("train", "-c", "configs/demo.yaml", override, f"train.out_dir={tmp_path / 'x'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "x").exists()


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = run_cli("train", "-c", "configs/demo.yaml", "data.dataset=folder", "data.num_classes=3",
                     f"data.root={tmp_path / 'nowhere'}", f"train.out_dir={tmp_path / 'x'}")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and str(tmp_path / "nowhere") in line[0]


def test_eval_and_predict_commands_on_a_trained_checkpoint(demo_root, tmp_path, capsys):
    # contiguous networks, as the eval command builds them: training's evaluation then runs the same kernels
    cfg = tiny_config(demo_root, tmp_path / "run", iterations=2, **{"train.channels_last": "false"})
    summary = Trainer(cfg).fit()
    checkpoint = tmp_path / "run/checkpoints/last.pt"
    assert main(["eval", "-c", str(tmp_path / "run/config.yaml"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "brick" in table
    miou_line = next(line for line in table.splitlines() if line.startswith("mIoU"))
    assert "protocol whole" in miou_line and "split valid" in miou_line and "teacher" in miou_line
    assert "the release's mean over all classes" in table
    assert "errors found by (AUROC, 0.5 = chance): variance" in table  # a PRCL checkpoint has a probability head
    assert "auroc_variance" in json.loads((tmp_path / "eval.json").read_text())["uncertainty"]
    assert main(["eval", "-c", str(tmp_path / "run/config.yaml"), "--checkpoint", str(checkpoint),
                 "--split", "test", "--use", "student", "--out", str(tmp_path / "eval-test.json")]) == 0
    miou_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mIoU"))
    assert "split test" in miou_line and "student" in miou_line
    # the same teacher on the same split gives the same number as training reported: the same code and layout on
    # the same machine, bit for bit (a channels_last run's evaluation may flip near-tied pixels by rounding)
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] == summary["miou"]
    image = next((demo_root / "images").glob("test_*.png"))
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "pred")]) == 0
    from PIL import Image

    mask = Image.open(tmp_path / "pred" / f"{image.stem}_mask.png")
    assert mask.mode == "P" and mask.size == Image.open(image).size
    assert (tmp_path / "pred" / f"{image.stem}_uncertainty.png").is_file()
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image), "--out",
                 str(tmp_path / "pred2")]) == 2


@pytest.mark.parametrize("all_classes, expected", [
    (0.5, "is the same"),
    (0.4, "differs: 40.00"),
    (None, "undefined here (NaN): 1 classes never occur (c)"),
])
def test_eval_table_says_whether_the_release_all_class_mean_differs(all_classes, expected):
    from prcl.commands.evaluate import format_table

    per_class = [0.5, 0.5, None] if all_classes is None else [0.5, 0.5, 0.5 if all_classes == 0.5 else 0.2]
    result = {"class_names": ["a", "b", "c"], "per_class_iou": per_class, "miou": 0.5,
              "miou_all_classes": all_classes, "protocol": "random-crop", "split": "valid",
              "network": "teacher", "images": 3}
    table = format_table(result)
    assert "(protocol random-crop, split valid, teacher, 3 images)" in table
    assert expected in table.splitlines()[-1]


def test_channels_last_changes_the_layout_not_the_training(demo_root, tmp_path):
    """Two steps with NHWC networks and inputs give the weights of two steps in NCHW.

    The layouts sum in other orders, so the weights differ by float32 rounding, which differs
    between CPUs (4e-5 on an AMD EPYC where an Intel Xeon gave 1e-6). The tolerance is therefore
    relative to what the two steps changed: per tensor, the norm of the layouts' difference must stay
    below 10 % of the norm of the change the training made. Rounding measured 0.01 % at most on the
    Intel dev machine, 1.0 % (a BatchNorm bias) with oneDNN's AVX2 kernels there
    (ONEDNN_MAX_CPU_ISA=AVX2, which reproduces the EPYC's 4.1e-5 on conv1); a layout that changed the
    training (images transposed in one layout, say) differs by the order of the change.
    """
    trainers, initial = {}, {}
    for layout in ("true", "false"):
        torch.manual_seed(0)
        trainers[layout] = Trainer(tiny_config(demo_root, tmp_path / layout, method="mean_teacher", iterations=2,
                                               **{"train.channels_last": layout}))
        initial[layout] = {k: v.clone() for k, v in trainers[layout].state_dict()["student"].items()}
        trainers[layout].fit()
    conv = trainers["true"].nets["student"].classifier[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    nhwc, nchw = _weights(tmp_path / "true/checkpoints/last.pt"), _weights(tmp_path / "false/checkpoints/last.pt")
    checked = 0
    for key, value in nchw["student"].items():
        torch.testing.assert_close(initial["true"][key], initial["false"][key], rtol=0, atol=0, msg=key)
        if not value.is_floating_point():
            assert torch.equal(nhwc["student"][key], value), key
            continue
        change = (value.double() - initial["false"][key].double()).norm()
        difference = (nhwc["student"][key].double() - value.double()).norm()
        assert difference <= 0.1 * change + 1e-12, f"{key}: layouts differ by {difference:.3g}, training moved {change:.3g}"
        checked += change > 0
    assert checked > 10  # the two steps moved the weights the test compares


def test_pseudo_label_probe_is_off_without_unlabeled_masks(demo_root, tmp_path):
    """(test_each_method... shows it on with the demo's masks.)"""
    from prcl.engine.data_setup import demo_root as generate_demo_data

    generate_demo_data(tiny_config(demo_root, tmp_path / "unused"))  # the shared demo data, masks for every image
    copy = tmp_path / "data"
    shutil.copytree(demo_root, copy)
    unlabeled_ids = (copy / "splits/8/0/unlabeled_filename.txt").read_text().split()
    for image_id in unlabeled_ids:
        (copy / "masks" / f"{image_id}.png").unlink()
    torch.manual_seed(0)
    Trainer(tiny_config(copy, tmp_path / "off", iterations=1)).fit()
    off = [r for r in read_metrics(tmp_path / "off") if r["type"] == "train"]
    assert off and all("pseudo_label_accuracy" not in r and "unsup" in r for r in off)


def test_train_deterministic_holds_for_its_trainer_only(demo_root, tmp_path):
    """train.deterministic changes process-wide torch settings; fit() puts them back, as does a failed build."""
    torch.use_deterministic_algorithms(False)  # whatever an earlier test left
    trainer = Trainer(tiny_config(demo_root, tmp_path / "det", iterations=1, **{"train.deterministic": "true"}))
    assert torch.are_deterministic_algorithms_enabled()  # while it trains
    trainer.fit()
    assert not torch.are_deterministic_algorithms_enabled()  # the next trainer of the process starts as before
    with pytest.raises(UserError):  # a build that fails (batch larger than the labeled split) changes nothing either
        Trainer(tiny_config(demo_root, tmp_path / "bad", iterations=1,
                            **{"train.deterministic": "true", "data.batch_size": 64}))
    assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # a user's own setting survives a run without the key
    try:
        Trainer(tiny_config(demo_root, tmp_path / "plain", iterations=1)).fit()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
