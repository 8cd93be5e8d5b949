"""Writes that fail or are killed (issue 20): a full disk or a read-only folder is one line naming the file, exit 2,
the file written before kept whole and no temporary file left; what a killed command left behind is removed by
the next start of that command, never what a running one is still writing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.checkpoint import load_checkpoint, save_checkpoint
from prcl.cli import main
from prcl.errors import UserError
from prcl.io import WriteError, process_alive, remove_leftovers, write_json

from full_disk import fill_disk
from tiny_run import tiny_networks

NO_SPACE = "no space left on device"
NUM_CLASSES = 3




def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (started and waited for)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    if process_alive(process.pid):
        pytest.skip("the pid was given to another process at once")
    return process.pid


@pytest.fixture
def live_pid():
    """The pid of a running process, stopped at the end of the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait(timeout=60)


def _leftover(folder: Path, name: str, pid: int) -> Path:
    """What ``prcl.io.atomic_write`` leaves when process ``pid`` is killed while writing ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{pid}-k3v9x0q2.tmp"
    path.write_bytes(b"half of a file")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny resnet18 segmenter with a probability head, saved as a checkpoint."""
    torch.manual_seed(0)
    cfg, student, _, head = tiny_networks(NUM_CLASSES)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"config": cfg, "student": student.state_dict(), "probability_head": head.state_dict()})
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photos" / "a.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- the atomic writer


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"miou": 0.5})
    fill_disk(monkeypatch, "summary.json", room=4)
    with pytest.raises(WriteError) as failure:
        write_json(path, {"miou": 0.6, "per_class_iou": [0.1] * 100})
    message = str(failure.value)
    assert "\n" not in message and str(path) in message and NO_SPACE in message
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


@pytest.mark.parametrize("stage, error, reason", [
    ("sync", errno.EIO, "input/output error"),
    ("rename", errno.EACCES, "permission denied"),
    ("folder", errno.EROFS, "read-only file system"),
])
def test_every_failing_step_of_a_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, stage, error,
                                                                         reason):
    path = tmp_path / ("new" if stage == "folder" else "") / "config.yaml"
    if stage != "folder":
        path.write_text("old: 1\n")

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    target = {"sync": "fsync", "rename": "replace", "folder": "mkdir"}[stage]
    monkeypatch.setattr(Path if stage == "folder" else os, target, fail)
    with pytest.raises(WriteError) as failure:
        write_json(path, {"new": 2})
    monkeypatch.undo()
    assert str(path) in str(failure.value) and reason in str(failure.value).lower()
    if stage == "folder":
        assert not path.parent.exists()
    else:
        assert path.read_text() == "old: 1\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_checkpoint_on_a_full_disk_names_it_instead_of_torchs_internals(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    fill_disk(monkeypatch, "last.pt", room=1000)  # torch.save fails part way: "unexpected pos" in torch
    with pytest.raises(UserError) as failure:
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(10_000)})
    message = str(failure.value)
    assert message.startswith(f"cannot write {path}: {NO_SPACE}") and "enforce" not in message
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- commands on a full disk


def test_splits_make_on_a_full_disk_is_exit_2_and_replaces_none_of_the_lists(tmp_path, monkeypatch, capsys, error_line):
    out = tmp_path / "splits"
    (tmp_path / "train.txt").write_text("".join(f"t{k}\n" for k in range(10)))
    args = ["splits", "make", "--out", str(out), "--num-labels", "3", "--train-list", str(tmp_path / "train.txt")]
    assert main(args) == 0
    before = _snapshot(out)
    capsys.readouterr()
    fill_disk(monkeypatch, "unlabeled_filename.txt")
    assert main([*args, "--seed", "0", "--force"]) == 2
    line = error_line("prcl: error: ")
    assert "unlabeled_filename.txt" in line and NO_SPACE in line
    assert _snapshot(out) == before  # the labeled list, written first, was not put in place either


def test_plot_on_a_full_disk_is_exit_2_and_keeps_the_old_picture(tmp_path, monkeypatch, capsys, error_line):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "step": s, "loss": 1 / s, "lr": 0.01})
                                               + "\n" for s in range(1, 5)))
    assert main(["plot", str(run)]) == 0
    before = (run / "curves.png").read_bytes()
    capsys.readouterr()
    fill_disk(monkeypatch, "curves.png", room=100)
    assert main(["plot", str(run)]) == 2
    line = error_line("prcl: error: ")
    assert str(run / "curves.png") in line and NO_SPACE in line
    assert (run / "curves.png").read_bytes() == before and _temporaries(run) == []


def test_predict_on_a_full_disk_is_exit_2_naming_the_file(checkpoint, photo, tmp_path, monkeypatch, capsys, error_line):
    out = tmp_path / "pred"
    fill_disk(monkeypatch, "a_overlay.png", room=10)
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]) == 2
    line = error_line("prcl: error: ")
    assert str(out / "a_overlay.png") in line and NO_SPACE in line
    assert not (out / "a_overlay.png").exists() and _temporaries(out) == []


def test_a_full_disk_while_generating_the_demo_data_is_one_line(tmp_path, monkeypatch):
    from prcl.data import demo_dataset

    def full(folder, params):
        (folder / "images").mkdir(parents=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(demo_dataset, "_render_to", full)
    with pytest.raises(UserError, match=f"cannot write the demo dataset .*: {NO_SPACE}"):
        demo_dataset.generate_demo_dataset(tmp_path / "demo", num_train=2, num_valid=1, num_test=0, image_size=16,
                                           num_classes=2, seed=0, num_labels=1, split_seeds=0)
    assert list(tmp_path.iterdir()) == []  # the half-rendered folder is gone


# ----------------------------------------------------------------------------- read-only folders


def test_plot_into_a_read_only_folder_is_checked_before_drawing(tmp_path, monkeypatch, capsys, error_line):
    import tempfile

    from prcl.infer import plots

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 1.0}) + "\n")
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def never():
        raise AssertionError("drawn before the check")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(plots, "_figure_class", never)
    assert main(["plot", str(run)]) == 2
    line = error_line("prcl: error: ")
    assert str(run / "curves.png") in line and "Read-only file system" in line and "--out" in line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_plot_into_a_folder_without_write_permission_is_one_line(tmp_path, capsys, error_line):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 1.0}) + "\n")
    run.chmod(0o555)
    try:
        assert main(["plot", str(run)]) == 2
    finally:
        run.chmod(0o755)
    line = error_line("prcl: error: ")
    assert str(run / "curves.png") in line and "ermission denied" in line
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


# ----------------------------------------------------------------------------- what killed writers leave


def test_leftovers_of_dead_writers_go_and_those_of_running_ones_stay(tmp_path, dead_pid, live_pid):
    dead = _leftover(tmp_path, "a.png", dead_pid)
    other_dead = _leftover(tmp_path, "b.png", dead_pid)
    running = _leftover(tmp_path, "a.png", live_pid)
    mine = _leftover(tmp_path, "a.png", os.getpid())
    old_style = tmp_path / ".c.png.zyxwvuts.tmp"  # earlier versions' names, without a pid
    old_style.write_bytes(b"")
    os.utime(old_style, (1_000_000_000, 1_000_000_000))  # from before this process started
    recent_old_style = tmp_path / ".d.png.zyxwvut1.tmp"
    recent_old_style.write_bytes(b"")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_bytes(b"")

    assert remove_leftovers(tmp_path, "a.png") == [dead]
    assert sorted(remove_leftovers(tmp_path)) == sorted([other_dead, old_style])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, mine.name, recent_old_style.name, unrelated.name])
    assert remove_leftovers(tmp_path / "missing") == []


def test_predict_removes_what_a_killed_predict_left_in_its_out_folder(checkpoint, photo, tmp_path, dead_pid,
                                                                     live_pid):
    out = tmp_path / "pred"
    dead = _leftover(out, "img_001_mask.png", dead_pid)
    running = _leftover(out, "img_002_mask.png", live_pid)  # a second predict writing into the same folder
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]) == 0
    assert not dead.exists() and running.exists()
    assert (out / "a_mask.png").is_file()


def test_splits_make_removes_what_a_killed_one_left(tmp_path, dead_pid, live_pid):
    folder = tmp_path / "splits" / "3" / "0"
    dead = _leftover(folder, "unlabeled_filename.txt", dead_pid)
    running = _leftover(folder, "labeled_filename.txt", live_pid)
    (tmp_path / "train.txt").write_text("".join(f"t{k}\n" for k in range(10)))
    assert main(["splits", "make", "--out", str(tmp_path / "splits"), "--num-labels", "3",
                 "--train-list", str(tmp_path / "train.txt")]) == 0
    assert not dead.exists() and running.exists()
    assert len((folder / "labeled_filename.txt").read_text().split()) == 3


def test_export_removes_what_a_killed_export_left_before_writing(tmp_path, monkeypatch, dead_pid, live_pid):
    from prcl.infer import export

    out = tmp_path / "m.onnx"
    dead = _leftover(tmp_path, "m.onnx", dead_pid)
    running = _leftover(tmp_path, "m.onnx", live_pid)
    seen = {}

    def export_onnx(checkpoint, path, **kwargs):
        seen["leftovers"] = sorted(p.name for p in tmp_path.iterdir())

    monkeypatch.setattr(export, "onnx_available", lambda: True)
    monkeypatch.setattr(export, "export_onnx", export_onnx)
    assert main(["export", "--checkpoint", str(tmp_path / "any.pt"), "--format", "onnx", "--out", str(out),
                 "--no-check"]) == 0
    assert seen["leftovers"] == [running.name] and not dead.exists()


def test_the_demo_data_removes_the_folders_of_a_killed_generation(tmp_path, dead_pid, live_pid):
    from prcl.data import generate_demo_dataset

    cache = tmp_path / "cache" / "demo"
    dead, running = cache / f".0123abcd.tmp-{dead_pid}-89abcdef", cache / f".0123abcd.tmp-{live_pid}-89abcdef"
    for folder in (dead, running):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "train_00000.png").write_bytes(b"half")
    root = generate_demo_dataset(cache_dir=tmp_path / "cache", num_train=2, num_valid=1, num_test=0, image_size=16,
                                 num_classes=2, seed=0, num_labels=1, split_seeds=0)
    assert not dead.exists() and running.exists()
    assert (root / "demo.json").is_file()
