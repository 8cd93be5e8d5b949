"""Nothing lost when a run is stopped, killed, or fails mid-way; resuming says what it does and checks the config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from prcl.checkpoint import load_checkpoint
from prcl.cli import main
from prcl.engine.trainer import Trainer

from tiny_run import tiny_config, tiny_overrides

pytestmark = pytest.mark.slow  # every test here trains


def _start(demo_root, out_dir, iterations, **extra):
    """``prcl train`` as its own process (the training process itself, no shell around it)."""
    args = [sys.executable, "-m", "prcl", "train", "-c", os.devnull,
            *tiny_overrides(demo_root, out_dir, iterations=iterations, **extra)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _train_lines(out_dir):
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"type": "train"' in line for line in path.read_text().splitlines())


def _wait_for(condition, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_the_current_step_and_says_how_to_resume(demo_root, tmp_path, sig, code):
    out = tmp_path / "run"
    process = _start(demo_root, out, iterations=400, **{"train.checkpoint_every": 1000})
    _wait_for(lambda: _train_lines(out) >= 2, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    last_line = stderr.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last_line and "--resume auto" in last_line
    stopped_at = int(last_line.split(" at step ")[1].split(";")[0])
    assert stopped_at >= 2
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == stopped_at  # the current step, not step 0
    # resuming finishes the run
    assert main(["train", "-c", os.devnull, "--resume", "auto",
                 *tiny_overrides(demo_root, out, iterations=stopped_at + 2)]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == stopped_at + 2


def test_sigkill_during_a_checkpoint_save_loses_nothing(demo_root, tmp_path):
    """Kill the training process while it writes a checkpoint (retried until the kill lands inside a save)."""
    for attempt in range(8):
        out = tmp_path / f"run{attempt}"
        process = _start(demo_root, out, iterations=400, **{"train.checkpoint_every": 1})
        checkpoints = out / "checkpoints"
        _wait_for(lambda: (checkpoints / "last.pt").is_file() and any(checkpoints.glob(".last.pt.*.tmp")), process)
        process.kill()  # SIGKILL to the training process itself
        process.communicate(timeout=60)
        if any(checkpoints.glob(".last.pt.*.tmp")):
            break  # the kill landed inside a save: the temporary file is still there
    else:
        pytest.skip("the kill never landed inside a checkpoint save in 8 attempts")
    step = load_checkpoint(checkpoints / "last.pt")["step"]  # the previous checkpoint is whole
    assert step >= 1
    assert main(["train", "-c", os.devnull, "--resume", "auto",
                 *tiny_overrides(demo_root, out, iterations=step + 1, **{"train.checkpoint_every": 1})]) == 0
    assert not list(checkpoints.glob("*.tmp")), "the leftover of the interrupted save is cleaned on the next start"
    assert load_checkpoint(checkpoints / "last.pt")["step"] == step + 1


def test_a_failing_evaluation_keeps_the_steps_before_it(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_config(demo_root, out, iterations=6, **{"train.eval_every": 3, "train.checkpoint_every": 0})

    def broken(*args, **kwargs):
        raise RuntimeError("valid mask with label 37")

    monkeypatch.setattr("prcl.engine.trainer.evaluate_model", broken)
    with pytest.raises(RuntimeError, match="label 37"):
        Trainer(cfg).fit()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3  # saved before the evaluation
    monkeypatch.undo()
    summary = Trainer(cfg, resume="auto").fit()
    assert summary["iterations"] == 6


def test_best_score_survives_a_resume_after_an_evaluation(demo_root, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(demo_root, out, iterations=2, **{"train.eval_every": 2})).fit()
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == 2
    resumed = Trainer(tiny_config(demo_root, out, iterations=4, **{"train.eval_every": 2}), resume="auto")
    assert resumed.best_miou == best["miou"]  # read back from best.json: JSON keeps every bit of a float


def test_torn_metrics_line_is_dropped_and_a_damaged_one_refused_before_anything_is_written(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(demo_root, out, iterations=2)
    assert main(["train", "-c", os.devnull, *overrides]) == 0
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"type": "train", "step": 3, "lo')  # what a crash during the append leaves
    capsys.readouterr()
    assert main(["train", "-c", os.devnull, "--resume", "auto", *tiny_overrides(demo_root, out, iterations=3)]) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert all(json.loads(line) for line in metrics.read_text().splitlines())
    # a damaged line in the middle: one clear line, exit 2, config.yaml untouched
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    config_before = (out / "config.yaml").read_bytes()
    assert main(["train", "-c", os.devnull, "--resume", "auto", *tiny_overrides(demo_root, out, iterations=5)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "line 2 is not JSON" in err[-1]
    assert (out / "config.yaml").read_bytes() == config_before


def test_resume_auto_says_what_it_does(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-c", os.devnull, "--resume", "auto", *tiny_overrides(demo_root, out, iterations=1)]) == 0
    assert "starting a new run" in capsys.readouterr().err
    assert main(["train", "-c", os.devnull, "--resume", "auto", *tiny_overrides(demo_root, out, iterations=2)]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "from step 1" in err


def test_resume_refuses_a_changed_method_and_asks_for_force_on_other_changes(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-c", os.devnull, *tiny_overrides(demo_root, out, iterations=1)]) == 0
    config_before = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    changed = tiny_overrides(demo_root, out, iterations=2, method="supervised")
    assert main(["train", "-c", os.devnull, "--resume", "auto", "--resume-force", *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.name" in err[0]
    lr = tiny_overrides(demo_root, out, iterations=2, **{"optim.lr": 0.02})
    assert main(["train", "-c", os.devnull, "--resume", "auto", *lr]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr" in err[0] and "--resume-force" in err[0]
    assert (out / "config.yaml").read_bytes() == config_before  # nothing rewritten by a refused resume
    assert main(["train", "-c", os.devnull, "--resume", "auto", "--resume-force", *lr]) == 0


@pytest.mark.parametrize("make_bad", ["file", "under_file"])
def test_an_unwritable_out_dir_fails_before_any_work(demo_root, tmp_path, capsys, monkeypatch, make_bad):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    out = blocker if make_bad == "file" else blocker / "run"

    def never(*args, **kwargs):
        raise AssertionError("data built before the out_dir check")

    monkeypatch.setattr("prcl.engine.trainer.build_run_data", never)
    assert main(["train", "-c", os.devnull, *tiny_overrides(demo_root, out, iterations=1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.out_dir" in err[0] and "cannot write" in err[0] and str(blocker) in err[0]


@pytest.mark.parametrize("target", ["checkpoint", "metrics", "config"])
def test_a_full_disk_is_one_line_naming_the_file(demo_root, tmp_path, capsys, monkeypatch, target):
    import errno

    from full_disk import fill_disk

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "checkpoint":
        fill_disk(monkeypatch, "last.pt", room=1000)  # torch.save fails part way through
    elif target == "config":
        fill_disk(monkeypatch, "config.yaml")
    else:
        real_open = open

        def open_full(path, mode="r", *args, **kwargs):
            if str(path).endswith("metrics.jsonl") and "a" in mode:
                full()
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr("builtins.open", open_full)
    out = tmp_path / "run"
    assert main(["train", "-c", os.devnull, *tiny_overrides(demo_root, out, iterations=2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = {"checkpoint": "last.pt", "metrics": "metrics.jsonl", "config": "config.yaml"}[target]
    assert len(err) == 1 and name in err[0] and "no space left on device" in err[0] and "--resume auto" in err[0]


def test_deterministic_cpu_runs_give_identical_weights(demo_root, tmp_path):
    weights = []
    try:
        for run in ("a", "b"):
            out = tmp_path / run
            Trainer(tiny_config(demo_root, out, iterations=4, **{"train.deterministic": "true", "prcl.kernel": "auto",
                                                                  "data.num_workers": 2})).fit()
            weights.append(load_checkpoint(out / "checkpoints" / "last.pt")["student"])
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: leave the other tests as they were
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def _folder_dataset(root, ids):
    from PIL import Image
    import numpy as np

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / "images" / f"{image_id}.png")
        Image.fromarray(np.full((64, 64), i % 4, np.uint8), mode="L").save(root / "masks" / f"{image_id}.png")


@pytest.mark.parametrize("empty", ["labeled", "valid"])
def test_an_empty_split_is_one_line_before_training(tmp_path, capsys, empty):
    ids = [f"img{i}" for i in range(6)]
    _folder_dataset(tmp_path / "data", ids)
    split = tmp_path / "splits" / "2" / "0"
    split.mkdir(parents=True)
    lists = {"labeled": ids[:2], "unlabeled": ids[2:4], "valid": ids[4:]}
    lists[empty] = []
    for name, listed in lists.items():
        (split / f"{name}_filename.txt").write_text("".join(f"{i}\n" for i in listed))
    out = tmp_path / "run"
    code = main(["train", "-c", os.devnull, *tiny_overrides(tmp_path / "data", out, iterations=1, **{
        "data.dataset": "folder", "data.splits": str(tmp_path / "splits"), "data.num_labels": 2,
        "data.num_classes": 4})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and empty in err[0], err
    assert not (out / "checkpoints" / "last.pt").exists()


def test_cuda_without_a_gpu_is_one_line_for_train(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        code = main(["train", "-c", os.devnull,
                     *tiny_overrides(demo_root, tmp_path / device, iterations=1, **{"train.device": device})])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"train.device={device}" in err[0] and "cpu" in err[0]
        assert not (tmp_path / device).exists()


def _run_with_unlabeled(tmp_path, bad_position):
    """A folder dataset (4 labeled, 8 unlabeled, 2 valid images) whose unlabeled image met at ``bad_position``
    of the unlabeled stream (batches of 2) is a truncated PNG. Returns (overrides, the bad file, the step
    whose batch holds it)."""
    from PIL import Image
    import numpy as np

    from prcl.engine.sampling import StepBatchSampler

    ids = [f"img{i}" for i in range(14)]
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((64, 64, 3), 18 * i, np.uint8)).save(root / "images" / f"{image_id}.png")
        Image.fromarray(np.full((64, 64), i % 4, np.uint8), mode="L").save(root / "masks" / f"{image_id}.png")
    split = tmp_path / "splits" / "4" / "0"
    split.mkdir(parents=True)
    lists = {"labeled": ids[:4], "unlabeled": ids[4:12], "valid": ids[12:]}
    for name, listed in lists.items():
        (split / f"{name}_filename.txt").write_text("".join(f"{i}\n" for i in listed))
    overrides = tiny_overrides(tmp_path / "data", tmp_path / "run", iterations=6, **{
        "data.dataset": "folder", "data.splits": str(tmp_path / "splits"), "data.num_labels": 4,
        "data.num_classes": 4, "data.batch_size": 2, "data.unlabeled_batch_size": 2, "data.num_workers": 2,
        "train.checkpoint_every": 1000})
    seed = tiny_config(tmp_path / "data", tmp_path / "run").train.seed
    batches = iter(StepBatchSampler(8, 2, seed + 1))  # the unlabeled stream, as the trainer draws it
    stream = [index for _ in range(4) for index, _ in next(batches)]
    bad_index = stream[bad_position]
    bad = tmp_path / "data" / "images" / f"{lists['unlabeled'][bad_index]}.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a copy that stopped half-way
    return overrides, bad, stream.index(bad_index) // 2


def test_a_corrupt_unlabeled_image_mid_run_saves_the_steps_before_it(tmp_path, capsys):
    """The run meets the file in a loader worker at step 3: one line, exit 2, the process ends (its workers
    too), last.pt holds the 3 steps before it, and the run resumes once the file is replaced."""
    from PIL import Image
    import numpy as np

    overrides, bad, step = _run_with_unlabeled(tmp_path, bad_position=7)  # the last image of the first pass
    assert step == 3
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "prcl", "train", "-c", os.devnull, *overrides],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:  # it did not end: stop it (its workers end when they see it gone)
            process.kill()
            process.communicate()
    assert process.returncode == 2, stderr[-2000:]
    err = stderr.strip().splitlines()
    assert len(err) == 1, err
    assert str(bad) in err[0] and f"stopped at step {step}" in err[0] and "--resume auto" in err[0], err[0]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == step  # the steps before it are kept
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad)  # the file replaced
    assert main(["train", "-c", os.devnull, "--resume", "auto", *overrides]) == 0
    assert f"from step {step}" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["iterations"] == 6


def test_a_corrupt_unlabeled_image_at_the_first_step_writes_no_checkpoint(tmp_path, capsys):
    overrides, bad, step = _run_with_unlabeled(tmp_path, bad_position=0)
    assert step == 0
    assert main(["train", "-c", os.devnull, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "no step was trained" in err[0], err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
