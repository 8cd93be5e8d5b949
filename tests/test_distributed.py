"""prcl train under torchrun on the CPU (gloo): one run directory, and restarts after a worker dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_run import tiny_overrides

pytestmark = pytest.mark.slow  # each test starts torchrun with two training processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(demo_root, out_dir, iterations, max_restarts=0, **extra):
    args = [*TORCHRUN, "--max-restarts", str(max_restarts), "-m", "prcl", "train", "-c", os.devnull,
            *tiny_overrides(demo_root, out_dir, iterations=iterations, **extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc): torchrun's training processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_two_gloo_processes_write_one_run_directory(demo_root, tmp_path):
    out = tmp_path / "run"
    process = _torchrun(demo_root, out, iterations=4, **{"train.eval_every": 2})
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]  # written once, by rank 0
    evals = [r for r in records if r["type"] == "eval" and r["split"] == "valid"]
    assert [r["images"] for r in evals] == [8, 8]  # each of the 8 valid images scored once over the two ranks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4


def test_fault_a_killed_worker_is_restarted_and_the_run_finishes(demo_root, tmp_path):
    out = tmp_path / "run"
    # The worker is killed as soon as the first checkpoint (step 2) exists: 14 steps leave it mid-run.
    process = _torchrun(demo_root, out, iterations=14, max_restarts=1, **{"train.checkpoint_every": 2})
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    workers = _children(process.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one training process dies mid-run
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "restart 1 by torchrun" in stderr and "resuming" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 14 and summary["miou"] is not None
    for key in ("per_class_iou", "protocol", "images_per_second", "best_miou", "class_names"):
        assert key in summary
