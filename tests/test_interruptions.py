"""Nothing lost when a run is stopped, killed, or fails mid-way; resuming says what it does and checks the config."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prcl.checkpoint import load_checkpoint, save_checkpoint
from prcl.cli import main
from prcl.engine.trainer import Trainer, TrainingInterrupted

from processes import HAS_PROC
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


@pytest.mark.skipif(not HAS_PROC, reason="finds the loader workers in /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_the_current_step_and_says_how_to_resume(demo_root, tmp_path, start_process, sig, code):
    out = tmp_path / "run"
    run = start_process(["train", "-c", os.devnull, *tiny_overrides(
        demo_root, out, iterations=400, **{"train.checkpoint_every": 1000, "data.num_workers": 1})])
    run.wait_for(lambda: _train_lines(out) >= 2)
    time.sleep(random.Random(sig).uniform(0, 0.5))  # a moment within a step, seeded
    assert run.stop(sig) == code, run.err()[-2000:]
    assert not run.leftovers(), "a loader worker outlived the training"
    lines = run.err().strip().splitlines()
    assert f"{signal.Signals(sig).name}: stopping after this step" in "\n".join(lines)
    last_line = lines[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last_line and "--resume auto" in last_line
    stopped_at = int(last_line.split(" at step ")[1].split(";")[0])
    assert stopped_at >= 2
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == stopped_at  # the current step, not step 0
    assert not list(out.rglob("*.tmp"))
    # resuming finishes the run
    assert main(["train", "-c", os.devnull, "--resume", "auto",
                 *tiny_overrides(demo_root, out, iterations=stopped_at + 2)]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == stopped_at + 2


def _workers_of_this_process() -> set[int]:
    """The live DataLoader workers this (test) process started."""
    return {child.pid for child in multiprocessing.active_children()}


def _signal_on_step(trainer, monkeypatch, steps: dict[int, list[int]]):
    """Make the trainer's method send itself the signals ``steps[n]`` during its n-th step (1-based)."""
    real_step, calls = trainer.method.train_step, {"n": 0}

    def step(nets, batch):
        calls["n"] += 1
        for sig in steps.get(calls["n"], []):
            os.kill(os.getpid(), sig)
        return real_step(nets, batch)

    monkeypatch.setattr(trainer.method, "train_step", step)


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(demo_root, tmp_path, monkeypatch, capfd):
    """The first SIGINT of step 3 asks to stop after it; the second, within the same step, stops there."""
    out = tmp_path / "run"
    before = _workers_of_this_process()
    trainer = Trainer(tiny_config(demo_root, out, iterations=20, **{"data.num_workers": 1}))
    _signal_on_step(trainer, monkeypatch, {3: [signal.SIGINT, signal.SIGINT]})
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 130
    message = str(stopped.value)
    assert "stopped at once by a second SIGINT after step 2; checkpoint" in message, message
    assert "holds step 2; continue with" in message, message
    assert message.endswith("--resume auto")
    assert "SIGINT: stopping after this step, which is saved first; send it again to stop at once" in \
        capfd.readouterr().err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2  # checkpoint_every=2
    assert not list(out.rglob("*.tmp"))
    assert _workers_of_this_process() <= before, "the loader workers outlived fit"


def test_a_second_signal_stops_at_once_even_when_the_save_it_interrupts_fails_on_it(demo_root, tmp_path,
                                                                                       monkeypatch):
    """torch.save, interrupted, raises an error of its own ("unexpected pos ..."), which replaces the stop."""
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(demo_root, out, iterations=20))
    _signal_on_step(trainer, monkeypatch, {3: [signal.SIGINT]})
    real_save = save_checkpoint

    def save_interrupted_at_step_3(path, state):
        if state["step"] == 3:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise RuntimeError("unexpected pos 185010816 vs 185010704") from None
        real_save(path, state)

    monkeypatch.setattr("prcl.engine.trainer.save_checkpoint", save_interrupted_at_step_3)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert stopped.value.exit_code == 130 and "stopped at once by a second SIGINT after step 3" in message
    assert "holds step 2; the steps after it are lost" in message
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2


def test_a_signal_during_an_evaluation_abandons_it_and_trains_no_further_step(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    before = _workers_of_this_process()
    trainer = Trainer(tiny_config(demo_root, out, iterations=8, **{"train.eval_every": 2, "data.num_workers": 1}))
    real_network = trainer.method.eval_network

    class SignalsOnFirstImage(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, images):
            os.kill(os.getpid(), signal.SIGTERM)
            return self.network(images)

    monkeypatch.setattr(trainer.method, "eval_network", lambda nets: SignalsOnFirstImage(real_network(nets)))
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 143
    assert "stopped by SIGTERM at step 2 during the evaluation" in str(stopped.value)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 2 and not [r for r in records if r["type"] == "eval"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2  # saved before the evaluation
    assert _workers_of_this_process() <= before, "the evaluation's loader workers outlived fit"


def test_a_signal_during_the_last_step_says_only_the_summary_is_left(demo_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(demo_root, out, iterations=2))
    _signal_on_step(trainer, monkeypatch, {2: [signal.SIGTERM]})
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    assert "after the last step (2)" in str(stopped.value) and "summary.json" in str(stopped.value)
    assert not (out / "summary.json").exists()
    summary = Trainer(tiny_config(demo_root, out, iterations=2), resume="auto").fit()
    assert summary["iterations"] == 2 and (out / "summary.json").is_file()


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
    for run in ("a", "b"):
        out = tmp_path / run
        Trainer(tiny_config(demo_root, out, iterations=4, **{"train.deterministic": "true", "prcl.kernel": "auto",
                                                              "data.num_workers": 2})).fit()
        weights.append(load_checkpoint(out / "checkpoints" / "last.pt")["student"])
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


def test_a_corrupt_unlabeled_image_mid_run_saves_the_steps_before_it(tmp_path, capsys, start_process):
    """The run meets the file in a loader worker at step 3: one line, exit 2, the process ends (its workers
    too), last.pt holds the 3 steps before it, and the run resumes once the file is replaced."""
    from PIL import Image
    import numpy as np

    overrides, bad, step = _run_with_unlabeled(tmp_path, bad_position=7)  # the last image of the first pass
    assert step == 3
    out = tmp_path / "run"
    run = start_process(["train", "-c", os.devnull, *overrides])  # whatever of it is left is killed afterwards
    returncode = run.process.wait(timeout=240)
    stderr = run.err()
    assert returncode == 2, stderr[-2000:]
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


# ------------------------------------------------------------------------ every command ends on a stop signal


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """A folder with the tiny config (config.yaml) and a checkpoint of its network (checkpoints/last.pt), not
    trained: what a stop does to eval and predict does not depend on the weights."""
    from prcl.config import config_to_dict, save_config
    from prcl.models import build_segmenter

    folder = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(demo_root, folder)
    save_config(cfg, folder / "config.yaml")
    student = build_segmenter(cfg.model.encoder, cfg.data.num_classes, cfg.model.output_stride, weights=None)
    save_checkpoint(folder / "checkpoints" / "last.pt",
                    {"config": config_to_dict(cfg), "student": student.state_dict()})
    return folder


def _last_line(run) -> str:
    err = run.err()
    assert "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


@pytest.mark.skipif(not HAS_PROC, reason="finds the loader workers in /proc")
def test_eval_stopped_during_the_evaluation_writes_nothing(trained, tmp_path, start_process):
    results = tmp_path / "results.json"
    run = start_process(["eval", "-c", str(trained / "config.yaml"), "data.num_workers=1", "eval.window=32",
                         "eval.stride=2", "--protocol", "sliding", "--checkpoint",
                         str(trained / "checkpoints" / "last.pt"), "--out", str(results)])
    run.wait_for(lambda: any(name == "pt_data_worker" for _, name in run.children()))  # evaluating
    time.sleep(random.Random(3).uniform(0, 0.5))
    assert run.stop(signal.SIGTERM) == 143
    assert not run.leftovers(), "a loader worker outlived prcl eval"
    assert _last_line(run) == (f"prcl: stopped by SIGTERM; the evaluation did not finish; nothing was written to "
                               f"{results}")
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not HAS_PROC, reason="finds the processes in /proc")
def test_predict_stopped_finishes_the_images_it_was_writing(trained, tmp_path, start_process):
    from PIL import Image
    import numpy as np

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for k in range(12):
        Image.fromarray(np.full((64, 64, 3), 20 * k, np.uint8)).save(photos / f"p{k:02d}.png")
    run = start_process(["predict", "--checkpoint", str(trained / "checkpoints" / "last.pt"), str(photos),
                         "--out", str(out), "--batch", "1", "--protocol", "sliding", "--window", "32", "--stride", "2"])
    run.wait_for(lambda: any(out.glob("*_mask.png")))
    assert run.stop(signal.SIGTERM) == 143
    assert not run.leftovers()
    last = _last_line(run)
    written = int(last.split("; ")[-1].split(" of ")[0])
    assert last == f"prcl: stopped by SIGTERM; {written} of 12 images written to {out}"
    masks = sorted(out.glob("*_mask.png"))
    assert 1 <= written < 12 and len(masks) == written
    for mask in masks:  # each image's files whole
        for suffix in ("_mask.png", "_overlay.png", "_uncertainty.png"):
            Image.open(out / mask.name.replace("_mask.png", suffix)).load()
    assert not list(out.glob(".*"))  # no temporary file


def _tiny_demo(data_root, **extra) -> list[str]:
    values = {"data.root": str(data_root), "data.demo.image_size": 64, "data.crop_size": 64,
              "data.demo.num_train": 24, "data.demo.num_valid": 4, "data.demo.num_test": 4, "data.num_workers": 1,
              "data.batch_size": 4, "data.unlabeled_batch_size": 4, "model.encoder": "resnet18",
              "model.weights": "null", "prcl.num_queries": 8, "prcl.num_negatives": 16, "prcl.kernel": "chunked",
              "train.iterations": 20, "train.eval_every": 0, "train.checkpoint_every": 1000, "train.log_every": 1,
              "train.progress": "false", **extra}
    return [f"{key}={value}" for key, value in values.items()]


@pytest.mark.skipif(not HAS_PROC, reason="finds the loader workers in /proc")
def test_a_demo_stopped_in_its_second_run_ends_with_one_line(tmp_path, start_process):
    """The bug: the first run's loader workers, never shut down, held the stopped demo at exit forever."""
    demo = tmp_path / "demo"
    run = start_process(["demo", "--out", str(demo), *_tiny_demo(tmp_path / "data")])
    run.wait_for(lambda: _train_lines(demo / "mean_teacher") >= 1)
    time.sleep(random.Random(5).uniform(0, 0.3))
    assert run.stop(signal.SIGTERM) == 143
    assert not run.leftovers(), "a loader worker outlived the demo"
    last = _last_line(run)
    assert last.startswith("prcl: stopped by SIGTERM at step ") and f"continue with: prcl demo --out {demo} " in last
    step = int(last.split(" at step ")[1].split(";")[0])
    assert str(demo / "mean_teacher" / "checkpoints" / "last.pt") in last
    assert load_checkpoint(demo / "mean_teacher" / "checkpoints" / "last.pt")["step"] == step
    assert (demo / "supervised" / "summary.json").is_file() and not (demo / "report.json").exists()
    assert not list(demo.rglob("*.tmp"))


@pytest.mark.skipif(not HAS_PROC, reason="finds the processes in /proc")
def test_a_demo_stopped_while_making_its_data_leaves_no_half_written_folder(tmp_path, start_process):
    demo = tmp_path / "demo"
    run = start_process(["demo", "--out", str(demo), *_tiny_demo(tmp_path / "data", **{"data.demo.num_train": 400})])
    run.wait_for(lambda: any(tmp_path.glob(".data.tmp-*/images/*.png")))
    assert run.stop(signal.SIGTERM) == 143
    assert not run.leftovers()
    assert _last_line(run).startswith(f"prcl: stopped by SIGTERM; continue with: prcl demo --out {demo} ")
    assert not list(tmp_path.glob(".data.*")) and not (tmp_path / "data" / "demo.json").exists()


@pytest.mark.skipif(not HAS_PROC, reason="finds the processes in /proc")
def test_the_ablation_script_passes_a_stop_on_and_says_how_to_continue(tmp_path, start_process):
    out = tmp_path / "ablation"
    settings = _tiny_demo(tmp_path / "data", **{"train.iterations": 400})
    run = start_process([sys.executable, "scripts/ablation.py", "--out", str(out), "--rows", "supervised",
                         "--seeds", "0", "--set", *settings], cwd=Path(__file__).resolve().parents[1], prcl=False)
    training = out / "runs" / "supervised_seed0"
    run.wait_for(lambda: _train_lines(training) >= 2)
    time.sleep(random.Random(7).uniform(0, 0.3))
    assert run.stop(signal.SIGTERM) == 143
    assert not run.leftovers(), "the training or its loader workers outlived the ablation"
    assert _last_line(run).startswith("ablation: stopped by SIGTERM; 1 running trainings stopped; continue with: ")
    log = (out / "logs" / "supervised_seed0.log").read_text().strip().splitlines()
    assert "stopped by SIGTERM at step" in log[-1]
    assert load_checkpoint(training / "checkpoints" / "last.pt")["step"] == int(log[-1].split(" at step ")[1]
                                                                                 .split(";")[0])
