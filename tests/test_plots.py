"""prcl plot and the pictures a training run leaves: curves.png, TensorBoard scalars and prediction images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from prcl.cli import main

import matplotlib  # noqa: E402,F401  (a dev extra: a missing package fails here, never skips)


def write_run(folder, steps=6, scale=1.0, torn=False):
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        lines.append({"type": "train", "step": step, "loss": scale * 2.0 / step, "sup": scale / step,
                      "unsup": 0.5 / step, "prcl": 0.3 / step, "lr": 0.01 * (1 - step / (steps + 1)),
                      "contrast_weight": step / steps, "images_per_second": 10.0 + step, "skipped_steps": 0})
        if step % 3 == 0:
            lines.append({"type": "eval", "split": "valid", "step": step, "miou": 0.1 * step * scale,
                          "per_class_iou": [0.1, 0.2], "protocol": "whole"})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if torn:
        text += '{"type": "train", "step": 99, "loss": 1.'  # an interrupted append
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_plot_one_run_writes_curves(tmp_path, capsys):
    run = write_run(tmp_path / "run-a")
    assert main(["plot", str(run)]) == 0
    assert "curves.png" in capsys.readouterr().out
    with Image.open(run / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_plot_two_runs_overlaid(tmp_path):
    one = write_run(tmp_path / "a")
    two = write_run(tmp_path / "b", scale=0.5)
    assert main(["plot", str(one)]) == 0
    assert main(["plot", str(one), str(two)]) == 0
    comparison = tmp_path / "comparison.png"  # the default for several runs: beside the first one
    with Image.open(comparison) as both, Image.open(one / "curves.png") as single:
        assert both.size == single.size
        assert both.convert("RGB").tobytes() != single.convert("RGB").tobytes()
    out = tmp_path / "pictures" / "mine.png"
    assert main(["plot", str(one), str(two), "--out", str(out)]) == 0
    assert out.read_bytes() == comparison.read_bytes()


def test_plot_skips_a_torn_last_line(tmp_path):
    from prcl.infer.plots import read_metrics

    run = write_run(tmp_path / "torn", torn=True)
    train, valid = read_metrics(run)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in valid] == [3, 6]
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").is_file()


def test_plot_without_metrics_is_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prcl: error: ") and "metrics.jsonl" in err[0]
    assert list(empty.iterdir()) == []


def test_plot_needs_a_run_folder(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["plot"])
    assert stop.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_training_writes_curves_and_tensorboard(demo_root, tmp_path):
    import tensorboard  # noqa: F401  (a dev extra: fails when missing, never skips)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prcl.engine.trainer import Trainer
    from tiny_run import tiny_config

    out = tmp_path / "run"
    Trainer(tiny_config(demo_root, out, iterations=2)).fit()
    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "valid/miou" in scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    # The predictions on the first validation images: image | label | prediction, at the image's size.
    from prcl.engine.data_setup import build_run_data
    from prcl.infer.visualize import colorize

    cfg = tiny_config(demo_root, out, iterations=2)
    data = build_run_data(cfg)
    valid, colours = data.valid, set(data.class_colors)  # the demo's classes draw in its masks' colours
    tags = sorted(tag for tag in events.Tags()["images"] if tag.startswith("valid/predictions/"))
    assert tags == [f"valid/predictions/{i}" for i in range(min(4, len(valid)))]
    for index, tag in enumerate(tags):
        (event,) = events.Images(tag)
        assert event.step == 2
        picture = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        mask = valid[index]["mask"].numpy()
        height, width = mask.shape
        assert picture.shape[1] == 3 * width
        label_tile = picture[-height:, width : 2 * width]
        assert np.array_equal(label_tile, colorize(mask, cfg.data.num_classes, colors=data.class_colors))
        assert {tuple(c) for c in label_tile[mask >= 0]} <= colours
        predicted = {tuple(c) for c in picture[-height:, 2 * width :].reshape(-1, 3)}
        assert predicted <= colours
