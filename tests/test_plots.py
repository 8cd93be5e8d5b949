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


# ------------------------------------------------------------------------------ pseudo-label pictures
def _title_band() -> int:
    """The height make_grid gives a line of titles (the column titles and the grid's title alike)."""
    from prcl.infer.visualize import make_grid

    return make_grid([[np.zeros((8, 8, 3), np.uint8)]], ["t"], scale=1).height - 8


def test_pseudo_label_grid_shows_the_confidence_in_its_threshold_bands():
    import torch

    from prcl.engine.tensorboard_log import BELOW_THRESHOLDS_COLOUR, NO_LABEL_COLOUR, pseudo_label_grid
    from prcl.infer.visualize import heatmap, palette
    from prcl.methods import PseudoLabelPictures

    size = 40
    labels = torch.full((2, size, size), 2, dtype=torch.long)
    labels[:, :, :10] = -1  # no pseudo-label in the first 10 columns
    labels[1, :, 10:] = 1
    confidence = torch.zeros(2, size, size)
    confidence[:, :, 10:20], confidence[:, :, 20:30], confidence[:, :, 30:] = 0.5, 0.8, 0.99
    variance = torch.linspace(0.2, 0.3, size * size).view(1, size, size).repeat(2, 1, 1)
    pictures = PseudoLabelPictures(torch.zeros(2, 3, size, size), labels, confidence,
                                   {"un_threshold": 0.97, "weak_threshold": 0.7}, variance)
    grid = pseudo_label_grid(pictures, num_classes=4)
    band = _title_band()
    assert grid.shape[1] == 4 * size and grid.shape[0] > 2 * band + 2 * size  # the legend below
    body = grid[2 * band: 2 * band + 2 * size]  # the variance range's title, then the column titles
    ramp = heatmap(np.array([[1.0, 2.0]]), vmin=0.0, vmax=2.0)[0]  # the two bands' colours: teal, yellow
    for row, label in enumerate((2, 1)):
        tile = lambda column: body[row * size: (row + 1) * size, column * size: (column + 1) * size]  # noqa: E731
        assert (tile(1)[:, :10] == NO_LABEL_COLOUR).all() and (tile(1)[:, 10:] == palette(4)[label]).all()
        bands = tile(2)
        assert (bands[:, :10] == NO_LABEL_COLOUR).all() and (bands[:, 10:20] == BELOW_THRESHOLDS_COLOUR).all()
        assert (bands[:, 20:30] == ramp[0]).all() and (bands[:, 30:] == ramp[1]).all()
        assert not np.array_equal(ramp[0], ramp[1])
    variance_tile = body[:size, 3 * size:]  # one scale for both images: the smallest value dark, the largest bright
    assert np.array_equal(variance_tile[0, 0], heatmap(np.zeros((1, 1)), 0, 1)[0, 0])
    assert np.array_equal(variance_tile[-1, -1], heatmap(np.ones((1, 1)), 0, 1)[0, 0])
    # the mean teacher's: three columns, one threshold, no title line
    pictures.variance, pictures.thresholds = None, {"un_threshold": 0.97}
    grid = pseudo_label_grid(pictures, num_classes=4)
    assert grid.shape[1] == 3 * size
    bands = grid[band: band + size, 2 * size:]
    assert (bands[:, 10:30] == BELOW_THRESHOLDS_COLOUR).all() and (bands[:, 30:] == ramp[1]).all()


@pytest.mark.slow  # generates the demo data on first use
def test_pseudo_label_examples_are_fixed_and_leave_the_random_state_alone(demo_root, tmp_path):
    import torch

    from prcl.engine.data_setup import build_run_data
    from prcl.engine.tensorboard_log import pseudo_label_examples
    from tiny_run import tiny_config

    unlabeled = build_run_data(tiny_config(demo_root, tmp_path / "unused")).unlabeled
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = pseudo_label_examples(unlabeled, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.shape == (4, 3, 64, 64)
    assert torch.equal(pseudo_label_examples(unlabeled, seed=0), first)
    assert not torch.equal(pseudo_label_examples(unlabeled, seed=1), first)


def _pictures(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    return events


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prcl", "mean_teacher", "supervised"])
def test_training_shows_its_pseudo_labels_in_tensorboard(demo_root, tmp_path, method):
    import torch

    from prcl.checkpoint import load_checkpoint
    from prcl.engine.data_setup import build_run_data
    from prcl.engine.tensorboard_log import (BELOW_THRESHOLDS_COLOUR, NO_LABEL_COLOUR, PSEUDO_LABEL_TAG,
                                             pseudo_label_examples)
    from prcl.engine.trainer import Trainer
    from prcl.infer.visualize import heatmap
    from prcl.models import build_segmenter
    from tiny_run import tiny_config

    out = tmp_path / "run"
    cfg = tiny_config(demo_root, out, method=method, iterations=2, **{"train.eval_every": 1})
    Trainer(cfg).fit()
    events = _pictures(out / "tensorboard")
    tags = [tag for tag in events.Tags()["images"] if tag.startswith("pseudo_labels")]
    if method == "supervised":
        assert tags == [] and "valid/predictions/0" in events.Tags()["images"]
        return
    assert tags == [PSEUDO_LABEL_TAG]
    pictures = events.Images(PSEUDO_LABEL_TAG)
    assert [event.step for event in pictures] == [1, 2]  # one grid per evaluation
    images = pseudo_label_examples(build_run_data(cfg).unlabeled, cfg.train.seed)  # the pictures' images
    size, columns = images.shape[-1], (4 if method == "prcl" else 3)
    assert images.shape[-2] == size
    band = _title_band()
    top = 2 * band if method == "prcl" else band  # PRCL's grid names the variance's range in a title line
    grids = [np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")) for event in pictures]
    for grid in grids:
        assert grid.shape[1] == columns * size and grid.shape[0] > top + 4 * size
    body = grids[-1][top: top + 4 * size]

    # The last grid's pseudo-labels are the teacher's classes at that step (last.pt), moved and mixed.
    num_classes = cfg.data.num_classes
    teacher = build_segmenter(cfg.model.encoder, num_classes, cfg.model.output_stride, weights=None)
    teacher.load_state_dict(load_checkpoint(out / "checkpoints/last.pt")["teacher"])
    with torch.no_grad():  # in eval mode, upsampled to the image before the arg max, as the pictures take it
        logits = torch.nn.functional.interpolate(teacher.eval()(images).logits, size=images.shape[-2:],
                                                 mode="bilinear", align_corners=True)
        predicted = logits.argmax(dim=1)
    colours = build_run_data(cfg).class_colors  # the demo's classes draw in its masks' colours
    allowed = {tuple(colours[c]) for c in predicted.unique().tolist()} | {NO_LABEL_COLOUR}
    labels = {tuple(c) for c in body[:, size: 2 * size].reshape(-1, 3)}
    assert labels <= allowed and labels != {NO_LABEL_COLOUR}
    # The confidence in bands: grey below every threshold, one ramp colour per threshold above it.
    thresholds = 2 if method == "prcl" else 1
    ramp = heatmap(np.arange(1, thresholds + 1, dtype=float)[None], vmin=0.0, vmax=float(thresholds))[0]
    bands = {tuple(c) for c in body[:, 2 * size: 3 * size].reshape(-1, 3)}
    assert bands <= {NO_LABEL_COLOUR, BELOW_THRESHOLDS_COLOUR, *map(tuple, ramp)}
    if method == "prcl":  # the variance as a heat map: colours of the ramp, not the bands' flat grey
        variance = body[:, 3 * size:]
        assert len({tuple(c) for c in variance.reshape(-1, 3)}) > 1 and BELOW_THRESHOLDS_COLOUR not in map(
            tuple, variance.reshape(-1, 3))


@pytest.mark.slow
def test_pseudo_label_pictures_do_not_change_the_training(demo_root, tmp_path):
    """Bit for bit (train.deterministic): the same losses, evaluations and weights with the pictures as without."""
    import json

    import torch

    from prcl.checkpoint import load_checkpoint
    from prcl.engine.trainer import Trainer
    from tiny_run import tiny_config

    runs = {}
    for shown in ("true", "false"):
        torch.manual_seed(0)
        out = tmp_path / shown
        Trainer(tiny_config(demo_root, out, iterations=3, **{"train.eval_every": 1, "train.deterministic": "true",
                                                              "train.tensorboard": shown})).fit()
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        timing = {"images_per_second", "data_seconds", "peak_memory_mb", "seconds"}
        runs[shown] = ([{k: v for k, v in line.items() if k not in timing} for line in lines],
                       load_checkpoint(out / "checkpoints/last.pt"))
    assert (tmp_path / "true/tensorboard").is_dir() and not (tmp_path / "false/tensorboard").exists()
    (with_lines, with_state), (without_lines, without_state) = runs["true"], runs["false"]
    assert with_lines == without_lines and sum(line["type"] == "eval" for line in with_lines) >= 3
    for part in ("student", "teacher", "probability_head"):
        for key, value in without_state[part].items():
            assert torch.equal(with_state[part][key], value), f"{part}.{key}"
