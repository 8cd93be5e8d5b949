"""prcl train under torchrun on the CPU (gloo): two processes, one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny_run import tiny_overrides

pytestmark = pytest.mark.slow  # each test starts torchrun with two training processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(demo_root, out_dir, iterations, **extra):
    args = [*TORCHRUN, "-m", "prcl", "train", "-c", os.devnull,
            *tiny_overrides(demo_root, out_dir, iterations=iterations, **extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


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
