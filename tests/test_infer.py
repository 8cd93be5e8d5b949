"""Inference: palettes and pictures, and the Predictor (in memory and from a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prcl.checkpoint import save_checkpoint
from prcl.config import config_to_dict, load_config
from prcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from prcl.engine.evaluate import evaluate_model
from prcl.errors import UserError
from prcl.infer import Predictor, colorize, denormalize, heatmap, make_grid, overlay, palette
from prcl.infer.protocols import average_views, dense_maps

from tiny_run import tiny_networks
from tolerances import assert_within, probability_sum_bound, summation_bound

NUM_CLASSES = 3

# --------------------------------------------------------------------------------------------
# visualize
# --------------------------------------------------------------------------------------------


def test_palette_is_the_voc_colour_map() -> None:
    colours = palette(21)
    assert colours.shape == (21, 3) and colours.dtype == np.uint8
    assert colours[0].tolist() == [0, 0, 0]
    assert colours[1].tolist() == [128, 0, 0]
    assert colours[2].tolist() == [0, 128, 0]
    assert colours[15].tolist() == [192, 128, 128]  # VOC "person"
    assert len({tuple(c) for c in palette(300)}) == 300


def test_colorize_maps_classes_and_ignore() -> None:
    mask = np.array([[0, 1, -1], [2, 255, 1]])
    image = colorize(mask, 21)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image[0, 1].tolist() == [128, 0, 0] and image[1, 0].tolist() == [0, 128, 0]
    assert image[0, 2].tolist() == [255, 255, 255] and image[1, 1].tolist() == [255, 255, 255]
    assert colorize(mask, 21, ignore_colour=(0, 0, 0))[0, 2].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="out of range"):
        colorize(np.array([[5]]), 3)


def test_given_class_colours_replace_the_palette() -> None:
    mask = np.array([[0, 1, -1], [2, 255, 1]])
    colors = [(1, 2, 3), (250, 0, 0), (0, 0, 250)]
    image = colorize(mask, 3, colors=colors)
    assert image[0, 0].tolist() == [1, 2, 3] and image[0, 1].tolist() == [250, 0, 0]
    assert image[1, 0].tolist() == [0, 0, 250] and image[0, 2].tolist() == [255, 255, 255]
    blended = overlay(np.zeros((2, 3, 3), np.uint8), mask, alpha=1.0, colors=colors)
    assert blended[1, 2].tolist() == [250, 0, 0] and blended[0, 2].tolist() == [0, 0, 0]  # ignored: the image
    with pytest.raises(ValueError, match="one \\(R, G, B\\) per class"):
        colorize(mask, 3, colors=colors[:2])


def test_overlay_blends_colours_and_keeps_ignored_pixels() -> None:
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[1, -1], [0, 1]])
    blended = overlay(image, mask, alpha=0.5)
    assert blended.shape == (2, 2, 3) and blended.dtype == np.uint8
    assert blended[0, 0].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    assert blended[0, 1].tolist() == [100, 100, 100]  # ignored: the image unchanged
    assert overlay(image, mask, alpha=0.0).tolist() == image.tolist()


def test_heatmap_runs_dark_to_bright() -> None:
    values = np.linspace(0, 1, 50).reshape(5, 10)
    image = heatmap(values)
    assert image.shape == (5, 10, 3) and image.dtype == np.uint8
    luminance = (image.reshape(-1, 3).astype(float) @ np.array([0.2126, 0.7152, 0.0722]))
    assert np.all(np.diff(luminance) >= 0) and luminance[-1] - luminance[0] > 150
    # vmin/vmax clip: everything at or above vmax gets the top colour.
    clipped = heatmap(values, vmin=0.0, vmax=0.5)
    assert clipped[-1, -1].tolist() == clipped.reshape(-1, 3)[25].tolist() == image[-1, -1].tolist()


def test_denormalize_undoes_normalisation() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    normalised = torch.from_numpy(((rgb / 255.0 - mean) / std).transpose(2, 0, 1)).float()
    assert np.array_equal(denormalize(normalised, IMAGENET_MEAN, IMAGENET_STD), rgb)


def test_make_grid_size_and_saved_png(tmp_path: Path) -> None:
    tile = np.zeros((6, 8, 3), dtype=np.uint8)
    tile[:, :, 0] = 200
    rows = [[tile, tile, tile], [tile, tile, tile]]
    untitled = make_grid(rows, [], scale=3)
    assert untitled.size == (3 * 8 * 3, 2 * 6 * 3)
    assert np.asarray(untitled)[0, 0].tolist() == [200, 0, 0]
    path = tmp_path / "out" / "grid.png"
    titled = make_grid(rows, ["image", "prediction", "a very long column title indeed"], scale=3, path=path)
    band = titled.size[1] - 2 * 6 * 3
    assert titled.size[0] == 3 * 8 * 3 and band > 0
    assert np.asarray(titled)[band:].tolist() == np.asarray(untitled).tolist()
    assert (np.asarray(titled)[:band] < 128).any()  # some title text was drawn
    with Image.open(path) as saved:
        assert saved.size == titled.size
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError, match="one size"):
        make_grid([[tile, np.zeros((5, 8, 3), dtype=np.uint8)]], [])


# --------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny resnet18 segmenter, its teacher and probability head, saved as a training checkpoint."""
    torch.manual_seed(0)
    cfg, student, teacher, head = tiny_networks(NUM_CLASSES)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(
        path,
        {
            "config": cfg,
            "student": student.state_dict(),
            "teacher": teacher.state_dict(),
            "probability_head": head.state_dict(),
            "iteration": 10,
            "class_names": ["sky", "road", "tree"],
            "class_colors": [[70, 130, 180], [128, 64, 128], [107, 142, 35]],
        },
    )
    return {"path": path, "student": student, "teacher": teacher, "head": head}


def _picture(height: int = 50, width: int = 70) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3)).astype(np.uint8)


def test_prediction_shapes_for_a_size_not_multiple_of_four(trained: dict) -> None:
    predictor = Predictor(trained["teacher"], NUM_CLASSES, probability_head=trained["head"])
    prediction = predictor.predict(_picture())
    assert prediction.mask.shape == (50, 70) and prediction.mask.dtype == np.int64
    assert prediction.probabilities.shape == (NUM_CLASSES, 50, 70)
    # a softmax: the probabilities sum to 1 up to the float32 rounding of their steps
    assert_within(prediction.probabilities.sum(0), np.ones((50, 70)), probability_sum_bound(NUM_CLASSES))
    assert np.array_equal(prediction.mask, prediction.probabilities.argmax(0))
    assert np.array_equal(prediction.confidence, prediction.probabilities.max(0))  # read off the same numbers
    assert prediction.uncertainty is not None and prediction.uncertainty.shape == (50, 70)
    assert np.all(prediction.uncertainty > 0) and np.all(prediction.uncertainty < 1)
    assert prediction.uncertainty.std() > 0
    assert not predictor.model.training and not predictor.probability_head.training


def test_inputs_pil_numpy_and_tensor_agree(trained: dict) -> None:
    predictor = Predictor(trained["teacher"], NUM_CLASSES)
    picture = _picture(33, 41)
    from_numpy = predictor.predict(picture)
    from_pil = predictor.predict(Image.fromarray(picture))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (torch.from_numpy(picture).permute(2, 0, 1) / 255.0 - mean) / std
    from_tensor = predictor.predict(normalised.float())
    assert from_numpy.uncertainty is None
    assert np.array_equal(from_pil.probabilities, from_numpy.probabilities)  # the same pixels, the same code
    # normalised here with the predictor's own correctly rounded steps (/ 255, - mean, / std): the same input bits
    assert np.array_equal(from_tensor.probabilities, from_numpy.probabilities)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(picture.astype(np.float32))


def test_from_checkpoint_matches_the_in_memory_model(trained: dict) -> None:
    picture = _picture()
    loaded = Predictor.from_checkpoint(trained["path"])
    assert loaded.config is not None and loaded.config.model.encoder == "resnet18"
    assert loaded.class_names == ["sky", "road", "tree"]
    assert loaded.palette.tolist() == [[70, 130, 180], [128, 64, 128], [107, 142, 35]]
    in_memory = Predictor(trained["teacher"], NUM_CLASSES, probability_head=trained["head"]).predict(picture)
    restored = loaded.predict(picture)
    assert np.array_equal(restored.mask, in_memory.mask)
    # the same weights through the same code on the same machine: bit for bit
    assert np.array_equal(restored.probabilities, in_memory.probabilities)
    assert np.array_equal(restored.uncertainty, in_memory.uncertainty)  # (the same, for the head)
    # use="student" loads the other weights.
    student = Predictor.from_checkpoint(trained["path"], use="student").predict(picture)
    expected = Predictor(trained["student"], NUM_CLASSES).predict(picture)
    assert np.array_equal(student.probabilities, expected.probabilities)  # the same weights and code again
    # the teacher is the student plus weight noise of 0.05: its probabilities move by tenths, not by rounding
    assert np.abs(student.probabilities - restored.probabilities).max() > 0.1


def test_sliding_predictor_keeps_the_input_size(trained: dict) -> None:
    predictor = Predictor(
        trained["teacher"], NUM_CLASSES, probability_head=trained["head"], protocol="sliding", window=32, stride=20
    )
    prediction = predictor.predict(_picture(50, 70))
    assert prediction.mask.shape == (50, 70) and prediction.uncertainty.shape == (50, 70)
    # a softmax averaged over the windows covering a pixel (two at most here on each axis): sums to 1 up to rounding
    assert_within(prediction.probabilities.sum(0), np.ones((50, 70)), probability_sum_bound(NUM_CLASSES, views=4))


@torch.no_grad()
def test_whole_image_maps_are_upsampled_softmax_and_mean_variance(trained: dict) -> None:
    model, head = trained["teacher"].eval(), trained["head"].eval()
    x = torch.randn(3, 50, 70)
    prediction = Predictor(model, NUM_CLASSES, probability_head=head).predict(x)
    output = model(x[None])
    size = (50, 70)
    logits = F.interpolate(output.logits, size=size, mode="bilinear", align_corners=True)
    variance = F.interpolate(head(output.features).mean(1, keepdim=True), size=size, mode="bilinear",
                             align_corners=True)
    # the same network call; the predictor's resize (4 weighted terms) and softmax (C terms, one division) may
    # round in another order than these: a few eps of probabilities <= 1
    assert_within(prediction.probabilities, logits.softmax(1)[0], summation_bound(1.0, 4 + NUM_CLASSES + 2))
    # the head's 256 variances averaged, then resized (4 terms): rounding relative to the variances (< 1)
    assert_within(prediction.uncertainty, variance[0, 0], summation_bound(1.0, 256 + 4))


@torch.no_grad()
@pytest.mark.parametrize("protocol, flip, scales", [("whole", False, (1.0,)), ("whole", True, (0.75, 1.25)),
                                                     ("sliding", True, (1.0,))])
def test_maps_with_the_variance_resize_both_at_once_as_one_by_one(trained: dict, protocol, flip, scales) -> None:
    """dense_maps resizes the logits and the extra map in one call and writes the softmax back in place: the same
    maps as resizing each alone (bilinear acts per channel), for every protocol and view; an extra map of another
    size than the logits goes its own way."""
    from prcl.infer.protocols import mean_variance

    model, head = trained["teacher"].eval(), trained["head"].eval()
    image = torch.randn(2, 3, 50, 70, generator=torch.Generator().manual_seed(3))
    extra = mean_variance(head)

    def one_by_one(x: torch.Tensor) -> torch.Tensor:
        output = model(x, representation=False)
        size = x.shape[-2:]
        probabilities = F.interpolate(output.logits.float(), size=size, mode="bilinear", align_corners=True).softmax(1)
        variance = F.interpolate(extra(output), size=size, mode="bilinear", align_corners=True)
        return torch.cat([probabilities, variance], dim=1)

    window, stride = (32, 32), (20, 20)
    got = average_views(dense_maps(model, NUM_CLASSES, extra=extra), image, protocol, window, stride, flip, scales)
    want = average_views(one_by_one, image, protocol, window, stride, flip, scales)
    assert got.shape == (2, NUM_CLASSES + 1, 50, 70)
    # the same operations on the same numbers; a softmax over a strided slice may sum in another order (C terms)
    assert_within(got, want, summation_bound(1.0, NUM_CLASSES + 2))

    def coarse(output) -> torch.Tensor:  # half the logits' size: resized on its own
        return F.avg_pool2d(extra(output), 2)

    maps = dense_maps(model, NUM_CLASSES, extra=coarse)(image)
    assert maps.shape == (2, NUM_CLASSES + 1, 50, 70)
    assert_within(maps[:, :NUM_CLASSES].sum(1), torch.ones(2, 50, 70), probability_sum_bound(NUM_CLASSES))


@torch.no_grad()
def test_predictor_and_evaluation_share_the_path(trained: dict) -> None:
    model = trained["teacher"]
    views = {"protocol": "sliding", "window": 32, "stride": 20, "flip": True, "scales": (0.75, 1.0)}
    predictor = Predictor(model, NUM_CLASSES, probability_head=trained["head"], **views)
    pictures = [torch.randn(3, 38, 45), torch.randn(3, 29, 34)]
    predictions = [predictor.predict(picture) for picture in pictures]
    # The same probabilities as the evaluation path's maps averaged over the same views.
    evaluated = average_views(dense_maps(model.eval(), NUM_CLASSES), pictures[0][None], **views)[0]
    assert np.array_equal(predictions[0].probabilities, evaluated.numpy())  # the predictor runs this very code
    # Evaluating against the Predictor's own masks with the same views scores every pixel right.
    dataset = [{"image": picture, "mask": torch.from_numpy(prediction.mask)}
               for picture, prediction in zip(pictures, predictions)]
    cfg = SimpleNamespace(data=SimpleNamespace(num_classes=NUM_CLASSES, num_workers=0),
                          eval=SimpleNamespace(**{**views, "scales": list(views["scales"])}))
    result = evaluate_model(model, dataset, cfg, "cpu")
    assert result["pixel_accuracy"] == 1.0 and result["images"] == 2


def test_from_checkpoint_errors_name_the_file(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.pt"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "weights_only.pt"
    save_checkpoint(bad, {"teacher": trained["teacher"].state_dict()})
    with pytest.raises(UserError, match="weights_only.pt.*config"):
        Predictor.from_checkpoint(bad)
    wrong = tmp_path / "wrong_classes.pt"
    cfg = load_config(None, ["model.encoder=resnet18", "data.num_classes=5"])
    save_checkpoint(wrong, {"config": config_to_dict(cfg), "teacher": trained["teacher"].state_dict()})
    with pytest.raises(UserError, match="wrong_classes.pt do not fit"):
        Predictor.from_checkpoint(wrong)


def test_checkpoints_without_usable_classes_get_the_default_palette(trained: dict, tmp_path: Path) -> None:
    cfg = config_to_dict(load_config(None, ["model.encoder=resnet18", f"data.num_classes={NUM_CLASSES}"]))
    weights = {"config": cfg, "teacher": trained["teacher"].state_dict()}
    for extra in ({}, {"class_colors": [[1, 2, 3]]}, {"class_colors": [[1, 2, 3], [4, 5, 6], [7, 8, 300]]}):
        path = tmp_path / "old.pt"
        save_checkpoint(path, {**weights, **extra})
        predictor = Predictor.from_checkpoint(path)
        assert predictor.class_colors is None and predictor.palette.tolist() == palette(NUM_CLASSES).tolist()


def test_make_grid_title_and_legend_frame_the_grid(tmp_path: Path) -> None:
    tile = np.full((6, 8, 3), 200, dtype=np.uint8)
    rows = [[tile, tile]]
    plain = np.asarray(make_grid(rows, ["a", "b"], scale=4))
    legend = [("background", (0, 0, 0)), ("road", (128, 0, 0)), ("tree", (0, 128, 0)), ("sky", (128, 128, 0))]
    framed = np.asarray(make_grid(rows, ["a", "b"], scale=4, title="test mIoU: PRCL 54.4", legend=legend))
    assert framed.shape[1] == plain.shape[1] and framed.shape[0] > plain.shape[0]
    # the grid itself sits unchanged between the title line and the legend rows
    top = next(y for y in range(framed.shape[0]) if np.array_equal(framed[y:y + plain.shape[0]], plain))
    assert top > 0 and (framed[:top] < 128).any()  # a title was drawn above
    below = framed[top + plain.shape[0]:]
    assert below.shape[0] > 0
    for _, colour in legend[1:]:  # every swatch colour (black is also the text colour) appears below the grid
        assert (below.reshape(-1, 3) == np.array(colour)).all(axis=1).any(), colour
