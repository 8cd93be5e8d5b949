"""One run folder, one writer (issue 20): the lock a training holds on its folder, refused second trainings,
readers that need no lock, and no folder created before the checks pass."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.checkpoint import save_checkpoint
from prcl.cli import main
from prcl.config import load_config
from prcl.engine.run_dir import RunDir
from prcl.engine.trainer import Trainer
from prcl.errors import UserError

from tiny_run import tiny_networks, tiny_overrides

NUM_CLASSES = 4
IDS = [f"img{i}" for i in range(6)]


def _folder_data(root: Path, bad_mask: str | None = None) -> Path:
    """A folder dataset of 6 images (2 labeled, 2 unlabeled, 2 valid); ``bad_mask``: that id's mask is too small."""
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "masks").mkdir()
    for i, image_id in enumerate(IDS):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "data" / "images" / f"{image_id}.png")
        side = 16 if image_id == bad_mask else 32
        Image.fromarray(np.full((side, side), i % NUM_CLASSES, np.uint8), mode="L").save(
            root / "data" / "masks" / f"{image_id}.png")
    split = root / "splits" / "2" / "0"
    split.mkdir(parents=True)
    for name, listed in {"labeled": IDS[:2], "unlabeled": IDS[2:4], "valid": IDS[4:]}.items():
        (split / f"{name}_filename.txt").write_text("".join(f"{i}\n" for i in listed))
    return root


def _overrides(root: Path, out: Path) -> list[str]:
    return tiny_overrides(root / "data", out, iterations=1, **{
        "data.dataset": "folder", "data.splits": str(root / "splits"), "data.num_labels": 2, "data.batch_size": 2, "data.unlabeled_batch_size": 2,
        "data.num_classes": NUM_CLASSES, "data.crop_size": 32})


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as a training leaves it: config, metrics, a checkpoint (a tiny resnet18), the data cache."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: prcl}\n")
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 1.0}\n')
    (run / ".validated.json").write_text('{"version": 1, "files": {}}')
    torch.manual_seed(0)
    cfg, student, _, head = tiny_networks(NUM_CLASSES)
    save_checkpoint(run / "checkpoints" / "last.pt", {"config": cfg, "student": student.state_dict(),
                                                      "probability_head": head.state_dict()})
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_lock_is_refused_naming_the_holder_until_it_lets_go(tmp_path):
    run = _run_folder(tmp_path)
    holder = RunDir(run, main=True)
    holder.lock()
    assert (run / ".lock").read_text().startswith(f"process {os.getpid()} on ")
    with pytest.raises(UserError) as refused:
        RunDir(run, main=True).lock()
    assert str(run) in str(refused.value) and f"process {os.getpid()}" in str(refused.value)
    RunDir(run, main=False).lock()  # the other processes of a torchrun job take no lock: rank 0 holds it
    holder.unlock()
    assert (run / ".lock").read_text() == ""  # nobody holds it
    second = RunDir(run, main=True)
    second.lock()
    second.unlock()


def test_a_training_on_a_locked_folder_is_refused_and_a_failed_one_keeps_no_lock(tmp_path):
    run = _run_folder(tmp_path)
    cfg = load_config(None, _overrides(tmp_path, run))
    holder = RunDir(run, main=True)
    holder.lock()
    before = _snapshot(run)
    with pytest.raises(UserError, match=f"in use by a running training \\(process {os.getpid()} "):
        Trainer(cfg, resume="auto")
    assert _snapshot(run) == before
    holder.unlock()
    with pytest.raises(UserError, match="checkpoint to resume not found") as failed:
        Trainer(cfg, resume=str(tmp_path / "missing.pt"))  # fails after taking the lock
    free = RunDir(run, main=True)
    free.lock()  # though the failed Trainer is still referred to by the traceback
    free.unlock()
    assert failed.value is not None


def test_eval_and_predict_read_the_checkpoints_of_a_locked_run(tmp_path, capsys):
    _folder_data(tmp_path)
    run = _run_folder(tmp_path)
    holder = RunDir(run, main=True)
    holder.lock()
    checkpoint = run / "checkpoints" / "last.pt"
    assert main(["eval", "-c", os.devnull, "--checkpoint", str(checkpoint), *_overrides(tmp_path, run)]) == 0
    assert (run / "checkpoints" / "last.eval-valid.json").is_file()
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "data" / "images"), "--out",
                 str(out)]) == 0
    assert len(list(out.glob("*_mask.png"))) == len(IDS)
    holder.unlock()


def test_a_run_stopped_by_a_data_error_creates_no_folder(tmp_path, capsys):
    _folder_data(tmp_path, bad_mask="img4")
    out = tmp_path / "runs" / "new"
    assert main(["train", "-c", os.devnull, *_overrides(tmp_path, out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data check" in err[0] and "img4" in err[0]
    assert not (tmp_path / "runs").exists()


def _wait_until(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


HOLDER = """
import sys, time
from prcl.engine.run_dir import RunDir
run_dir = RunDir(sys.argv[1], main=True)
run_dir.lock()
time.sleep(120)
"""


@pytest.mark.slow  # two Python processes that import torch
def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = _run_folder(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        lock_file = run / ".lock"
        _wait_until(lambda: lock_file.is_file() and lock_file.read_text().startswith(f"process {holder.pid} "),
                    holder)
        before = _snapshot(run)
        refused = subprocess.run([sys.executable, "-m", "prcl", "train", "-c", os.devnull, "--resume", "auto",
                                  *_overrides(tmp_path, run)], capture_output=True, text=True, timeout=300)
        err = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(err) == 1, refused.stderr[-2000:]
        assert str(run) in err[0] and f"process {holder.pid} " in err[0]
        assert _snapshot(run) == before  # nothing written, the lock file included
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.communicate(timeout=60)
        after = RunDir(run, main=True)
        after.lock()  # the OS let go of the dead holder's lock
        after.unlock()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=60)
