"""Bad data files (issue 9): image modes, mask modes, the data check before training, worker errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prcl.data import (
    CityscapesDataset,
    DataFileError,
    FolderDataset,
    read_image,
    to_rgb8,
)
from prcl.data import validate as validate_module
from prcl.data.validate import validate_dataset_files
from prcl.errors import UserError

# ----------------------------------------------------------------------------- image modes


def _saved(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def _read_grey(path: Path) -> list[int]:
    """The image read back through the datasets' reader: checks the channels agree, returns row 0."""
    rgb = read_image(path).numpy()  # (3, H, W) uint8
    assert rgb.dtype == np.uint8 and rgb.shape[0] == 3
    assert (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all()
    return rgb[0, 0].tolist()


def test_16_bit_images_are_scaled_by_their_full_range_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], np.uint16)
    png = _saved(tmp_path, Image.fromarray(values), "deep.png")
    with Image.open(png) as opened:
        assert opened.mode.startswith("I;16")  # what PIL reads a 16-bit grey PNG as
    assert _read_grey(png) == [0, 1, 4, 128, 255]  # v / 257, rounded; PIL's convert gives 0, 255 x4
    big_endian_image = Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes())
    big_endian = _saved(tmp_path, big_endian_image, "deep.tif")
    with Image.open(big_endian) as opened:
        assert opened.mode == "I;16B"
    assert _read_grey(big_endian) == [0, 1, 4, 128, 255]


def test_32_bit_integer_images_pass_through_or_scale_by_their_range(tmp_path: Path) -> None:
    small = _saved(tmp_path, Image.fromarray(np.array([[0, 100, 255]], np.int32), mode="I"), "small.tif")
    assert _read_grey(small) == [0, 100, 255]  # values in 0..255: kept
    wide = _saved(tmp_path, Image.fromarray(np.array([[0, 1000, 65535]], np.int32), mode="I"), "wide.tif")
    assert _read_grey(wide) == [0, 4, 255]  # values in 0..65535: scaled like 16-bit


def test_float_images_in_0_1_scale_by_255_and_in_0_255_pass_through(tmp_path: Path) -> None:
    unit = _saved(tmp_path, Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32), mode="F"), "unit.tif")
    assert _read_grey(unit) == [0, 64, 255]
    bytes_range = _saved(tmp_path, Image.fromarray(np.array([[0.0, 2.0, 200.4]], np.float32), mode="F"), "b.tif")
    assert _read_grey(bytes_range) == [0, 2, 200]


def test_palette_alpha_cmyk_and_1_bit_images_convert_to_their_rgb(tmp_path: Path) -> None:
    cmyk = _saved(tmp_path, Image.new("CMYK", (2, 1), (255, 0, 0, 0)), "cmyk.tif")
    assert read_image(cmyk)[:, 0, 0].tolist() == [0, 255, 255]  # full cyan
    la = _saved(tmp_path, Image.new("LA", (2, 1), (90, 7)), "la.png")
    assert read_image(la)[:, 0, 0].tolist() == [90, 90, 90]  # alpha dropped, not blended
    rgba = _saved(tmp_path, Image.new("RGBA", (2, 1), (10, 20, 30, 0)), "rgba.png")
    assert read_image(rgba)[:, 0, 0].tolist() == [10, 20, 30]
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert read_image(_saved(tmp_path, palette, "p.png"))[:, 0, 1].tolist() == [200, 100, 50]
    one = _saved(tmp_path, Image.fromarray(np.array([[False, True]])), "one.png")
    with Image.open(one) as opened:
        assert opened.mode == "1"
    assert _read_grey(one) == [0, 255]


def test_modes_without_one_right_conversion_are_refused_by_name(tmp_path: Path) -> None:
    negative = _saved(tmp_path, Image.fromarray(np.array([[-1.0, 3.0]], np.float32), mode="F"), "neg.tif")
    with pytest.raises(UserError) as info:
        read_image(negative)
    message = str(info.value)
    assert str(negative) in message and "mode F" in message and "-1..3" in message and "\n" not in message
    with pytest.raises(UserError, match=r"mode I\b.*70000"):
        to_rgb8(Image.fromarray(np.array([[0, 70000]], np.int32), mode="I"), "huge.tif")
    with pytest.raises(UserError, match="NaN"):
        to_rgb8(Image.fromarray(np.array([[np.nan, 1.0]], np.float32), mode="F"), "nan.tif")


# ----------------------------------------------------------------------------- mask modes


def test_masks_must_be_8_bit_grey_or_palette_pngs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    mask = tmp_path / "masks" / "x.png"
    dataset = FolderDataset(tmp_path, ["x"], num_classes=3)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(mask)  # a colour mask
    with pytest.raises(UserError, match=r"mode RGB.*\(L\) or palette \(P\)"):
        dataset[0]
    Image.fromarray(np.ones((2, 2), np.uint16)).save(mask)  # 16-bit
    with pytest.raises(UserError, match=r"mode I;16"):
        dataset[0]
    Image.fromarray(np.ones((2, 2), np.uint8)).save(mask, format="JPEG")  # lossy values
    with pytest.raises(UserError, match="JPEG file"):
        dataset[0]
    Image.fromarray(np.array([[1, 255], [2, 0]], np.uint8)).save(mask)
    assert dataset[0]["mask"].tolist() == [[1, -1], [2, 0]]


# ----------------------------------------------------------------------------- the data check


def _folder(root: Path, samples: dict[str, tuple[tuple[int, int], np.ndarray | None]]) -> Path:
    """images/<id>.png of the given size and masks/<id>.png with the given values (None: no mask)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for image_id, (size, mask) in samples.items():
        Image.fromarray(np.full((*size, 3), 80, np.uint8)).save(root / "images" / f"{image_id}.png")
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{image_id}.png")
    return root


def _good(size: tuple[int, int] = (4, 5)) -> tuple[tuple[int, int], np.ndarray]:
    mask = np.zeros(size, np.uint8)
    mask[0, 0] = 255
    mask[1, 1] = 20
    return size, mask


def test_data_check_counts_and_names_each_kind_of_bad_file(tmp_path: Path) -> None:
    label_37 = np.zeros((4, 5), np.uint8)
    label_37[2, 2] = 37
    root = _folder(tmp_path / "data", {
        "good": _good(), "label37": ((4, 5), label_37), "small": ((4, 5), np.zeros((3, 5))),
        "broken": _good(), "nomask": ((4, 5), None), "valid": _good(),
    })
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    labeled = FolderDataset(root, ["good", "label37", "small", "broken", "nomask"], num_classes=21)
    valid = FolderDataset(root, ["valid"], num_classes=21)
    with pytest.raises(UserError) as info:
        validate_dataset_files({"labeled": labeled, "valid": valid, "test": None}, 21,
                               cache_path=tmp_path / "run" / ".validated.json", workers=2, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"data check: 4 of 12 files under {root} are bad")
    assert "1 file is missing: masks/nomask.png" in message
    assert "1 file cannot be read: images/broken.png (cannot decode" in message
    assert "1 mask differs in size from its image: masks/small.png (3x5, image 4x5)" in message
    assert "1 mask has values >= 21 (not 255): masks/label37.png (37)" in message
    assert message.endswith("fix the masks or set data.num_classes")
    # the good files were cached even though the check failed
    cached = json.loads((tmp_path / "run" / ".validated.json").read_text())["files"]
    assert str(root / "images" / "good.png") in cached and str(root / "images" / "broken.png") not in cached


def test_data_check_passes_good_data_and_cityscapes_label_ids(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"a": _good(), "b": _good((6, 3))})
    report = validate_dataset_files([FolderDataset(root, ["a", "b"], num_classes=21)], 21, None, 1, False)
    assert (report.files, report.read, report.cached) == (4, 4, 0)
    with pytest.raises(UserError, match=r"2 masks have values >= 3 \(not 255\): masks/a.png \(20\), masks/b.png"):
        validate_dataset_files([FolderDataset(root, ["a", "b"])], 3, None, 1, False)

    city = tmp_path / "cityscapes"
    for folder in ("leftImg8bit/train/aachen", "gtFine/train/aachen"):
        (city / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(city / "leftImg8bit/train/aachen/aachen_0_0_leftImg8bit.png")
    label = city / "gtFine/train/aachen/aachen_0_0_gtFine_labelIds.png"
    Image.fromarray(np.array([[7, 26], [0, 255]], np.uint8)).save(label)  # labelIds, not train ids
    dataset = CityscapesDataset(city, ["aachen_0_0"])
    validate_dataset_files([dataset], 19, None, 1, False)
    Image.fromarray(np.array([[7, 40], [0, 255]], np.uint8)).save(label)
    with pytest.raises(UserError, match=r"values that are not Cityscapes labelIds 0..33 or 255: .*\(40\).*gtFine_labelIds"):
        validate_dataset_files([dataset], 19, None, 1, False)


def test_data_check_cache_skips_unchanged_files_and_rereads_changed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path / "data", {f"s{k}": _good() for k in range(5)})
    dataset = FolderDataset(root, [f"s{k}" for k in range(5)], num_classes=21)
    cache = tmp_path / "run" / ".validated.json"
    reads: list[str] = []
    real_read = validate_module._read_file

    def counting_read(path: Path, kind: str) -> dict:
        reads.append(Path(path).name + ":" + kind)
        return real_read(path, kind)

    monkeypatch.setattr(validate_module, "_read_file", counting_read)
    first = validate_dataset_files([dataset], 21, cache, workers=3, progress=False)
    assert len(reads) == 10 and first.read == 10 and first.cache_written
    assert [p.name for p in cache.parent.iterdir()] == [".validated.json"]  # no temporary file left

    reads.clear()
    second = validate_dataset_files([dataset], 21, cache, workers=3, progress=False)
    assert reads == [] and (second.read, second.cached) == (0, 10) and not second.cache_written

    # a changed mask (new content, size and mtime) is read again, and checked again
    bad = np.zeros((4, 5), np.uint8)
    bad[0, 0] = 99
    Image.fromarray(bad).save(root / "masks" / "s3.png")
    os.utime(root / "masks" / "s3.png", ns=(1, 1))
    with pytest.raises(UserError, match=r"masks/s3.png \(99\)"):
        validate_dataset_files([dataset], 21, cache, workers=3, progress=False)
    assert reads == ["s3.png:mask"]

    # a different num_classes re-checks the cached values without reading any file
    reads.clear()
    with pytest.raises(UserError, match=r"5 masks have values >= 10"):
        validate_dataset_files([FolderDataset(root, dataset.ids[:3] + dataset.ids[4:], num_classes=10)]
                               + [FolderDataset(root, ["s3"])], 10, cache, workers=1, progress=False)
    assert reads == []  # every file, the bad-valued mask too, came from the cache: its values are cached

    # a damaged cache is ignored and rewritten
    cache.write_text("{not json")
    reads.clear()
    validate_dataset_files([FolderDataset(root, ["s0"], num_classes=21)], 21, cache, 1, False)
    assert len(reads) == 2 and json.loads(cache.read_text())["version"] == validate_module.CACHE_VERSION


# ----------------------------------------------------------------------------- worker errors


def test_a_data_error_in_a_loader_worker_stays_one_line(tmp_path: Path) -> None:
    label = np.zeros((4, 5), np.uint8)
    label[1, 1] = 37
    root = _folder(tmp_path, {"x": ((4, 5), label)})
    dataset = FolderDataset(root, ["x"], num_classes=21)
    with pytest.raises(DataFileError) as in_process:
        dataset[0]
    assert in_process.value.worker_traceback == ""
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    error = info.value
    assert isinstance(error, DataFileError)
    assert str(error) == str(in_process.value)  # the worker's message, without torch's wrapping
    assert "\n" not in str(error) and "label value 37" in str(error)
    assert "Traceback" in error.worker_traceback and "DataLoader worker" in error.worker_traceback


def test_data_file_error_unwraps_torch_worker_text() -> None:
    wrapped = ("Caught DataFileError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataFileError(...)\n'
               "prcl.data.datasets.DataFileError: mask m.png has mode RGB; save it as mode L or P\n")
    error = DataFileError(wrapped)
    assert str(error) == "mask m.png has mode RGB; save it as mode L or P"
    assert error.worker_traceback == wrapped
    plain = DataFileError("image file not found: a.png", reason="missing")
    assert str(plain) == "image file not found: a.png" and plain.reason == "missing"
    assert torch.utils.data.get_worker_info() is None


# ----------------------------------------------------------------------------- issue 20: batches and labels


def _run_folder(root: Path, masks: list[np.ndarray], counts: tuple[int, int, int]) -> Path:
    """A folder dataset of 64 x 64 images with these masks, and split files for (labeled, unlabeled, valid)
    counts under <root>/splits/<labeled>/0/; returns the splits folder."""
    ids = [f"i{k}" for k in range(len(masks))]
    _folder(root, {image_id: ((64, 64), mask) for image_id, mask in zip(ids, masks)})
    folder = root / "splits" / str(counts[0]) / "0"
    folder.mkdir(parents=True)
    start = 0
    for name, count in zip(("labeled", "unlabeled", "valid"), counts):
        (folder / f"{name}_filename.txt").write_text("".join(f"{i}\n" for i in ids[start:start + count]))
        start += count
    return root / "splits"


def _train(tmp_path: Path, capsys: pytest.CaptureFixture[str], splits: Path, **overrides: object) -> tuple[int, str]:
    from prcl.cli import main
    from tiny_run import tiny_overrides

    labeled = next(splits.iterdir()).name  # the one <num_labels> folder
    values = {"data.dataset": "folder", "data.splits": str(splits), "data.num_classes": 4, "data.num_labels": labeled,
              **overrides}
    code = main(["train", "-c", os.devnull, *tiny_overrides(tmp_path / "data", tmp_path / "run", iterations=1,
                                                            **values)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return code, err[0]


def _class_masks(count: int) -> list[np.ndarray]:
    return [np.full((64, 64), k % 4, np.uint8) for k in range(count)]


@pytest.mark.parametrize("key, value, split, size", [
    ("data.batch_size", 100000, "labeled", 4),
    ("data.unlabeled_batch_size", 5, "unlabeled", 3),
])
def test_a_batch_larger_than_its_split_is_one_line_before_anything_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: int, split: str, size: int
) -> None:
    splits = _run_folder(tmp_path / "data", _class_masks(9), (4, 3, 2))
    code, line = _train(tmp_path, capsys, splits, **{"data.batch_size": 4, "data.unlabeled_batch_size": 3,
                                                     key: value})
    assert code == 2
    assert line.startswith(f"prcl: error: {key}={value} is larger than the {split} split ({size} images)")
    assert f"set {key}={size} or less" in line
    assert not (tmp_path / "run").exists()


def test_labeled_masks_without_a_labeled_pixel_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = [np.full((64, 64), 255, np.uint8)] * 4 + _class_masks(4)
    splits = _run_folder(tmp_path / "data", masks, (4, 2, 2))
    code, line = _train(tmp_path, capsys, splits, **{"data.batch_size": 2, "data.unlabeled_batch_size": 2})
    assert code == 2
    assert "none of the 4 labeled masks" in line and "holds a labeled pixel" in line
    assert "every training step would be skipped" in line
    # nothing of a run: only the data check's record of the files it read (kept so a rerun reads only fixes)
    assert [p.name for p in (tmp_path / "run").rglob("*")] in ([], [".validated.json"])


def test_the_data_check_counts_labeled_pixels_per_split(tmp_path: Path) -> None:
    ignored = np.full((4, 5), 255, np.uint8)
    one = ignored.copy()
    one[2, 3] = 1
    root = _folder(tmp_path / "data", {"a": ((4, 5), ignored), "b": ((4, 5), ignored), "c": ((4, 5), one)})
    check = {"labeled": FolderDataset(root, ["a", "b"], num_classes=3), "valid": FolderDataset(root, ["c"]),
             "test": None}
    with pytest.raises(UserError) as info:
        validate_dataset_files(check, 3, None, 1, False, need_labels=("labeled", "valid"))
    assert str(info.value).startswith(f"data check: none of the 2 labeled masks under {root} holds a labeled pixel")
    validate_dataset_files(check, 3, None, 1, False)  # not asked: good files pass
    check["labeled"] = FolderDataset(root, ["a", "c"], num_classes=3)  # one pixel is enough
    validate_dataset_files(check, 3, None, 1, False, need_labels=("labeled", "valid"))
    check["valid"] = FolderDataset(root, ["b"])
    with pytest.raises(UserError, match="none of the 1 valid masks .* so evaluation would score nothing"):
        validate_dataset_files(check, 3, None, 1, False, need_labels=("labeled", "valid"))

    city = tmp_path / "cityscapes"  # labelIds 0..6 (unlabeled, ego vehicle, ...) all map to ignore
    for folder in ("leftImg8bit/train/aachen", "gtFine/train/aachen"):
        (city / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(city / "leftImg8bit/train/aachen/aachen_0_0_leftImg8bit.png")
    label = city / "gtFine/train/aachen/aachen_0_0_gtFine_labelIds.png"
    Image.fromarray(np.array([[0, 3], [6, 255]], np.uint8)).save(label)
    with pytest.raises(UserError, match="none of the 1 labeled masks"):
        validate_dataset_files({"labeled": CityscapesDataset(city, ["aachen_0_0"])}, 19, None, 1, False,
                               need_labels=["labeled"])
    Image.fromarray(np.array([[0, 3], [7, 255]], np.uint8)).save(label)  # 7: road
    validate_dataset_files({"labeled": CityscapesDataset(city, ["aachen_0_0"])}, 19, None, 1, False,
                           need_labels=["labeled"])


def test_loader_workers_are_bounded_by_the_usable_cpus_with_one_notice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prcl.engine import sampling

    monkeypatch.setattr(sampling, "usable_cpus", lambda: 3)
    monkeypatch.setattr(sampling, "_NOTICED", set())
    assert [sampling.loader_workers(n) for n in (0, 2, 12)] == [0, 2, 12]  # up to 4 per CPU
    assert capsys.readouterr().err == ""
    assert sampling.loader_workers(100000) == 12
    err = capsys.readouterr().err.splitlines()
    assert err == ["prcl: notice: data.num_workers=100000 is more than 4 per CPU this process can use (3); "
                   "loading with 12 workers"]
    assert sampling.loader_workers(100000) == 12 and capsys.readouterr().err == ""  # once per value
    assert sampling.loader_workers(13) == 12 and "num_workers=13" in capsys.readouterr().err


@pytest.mark.slow
def test_steps_skipped_for_want_of_labeled_pixels_say_so(demo_root, tmp_path: Path, monkeypatch) -> None:
    from prcl.engine.trainer import Trainer, TrainingDiverged
    from tiny_run import tiny_config

    cfg = tiny_config(demo_root, tmp_path / "run", method="supervised", iterations=4,
                      **{"train.max_nonfinite_steps": 2})
    trainer = Trainer(cfg)
    real_loaders = trainer._loaders

    def unlabeled_masks():
        labeled, unlabeled = real_loaders()

        def ignored():
            for batch in labeled:
                yield {**batch, "mask": torch.full_like(batch["mask"], -1)}  # every pixel ignored

        return ignored(), unlabeled

    monkeypatch.setattr(trainer, "_loaders", unlabeled_masks)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "2 steps in a row skipped" in message and "labeled batch held no labeled pixel" in message
    assert "optim.lr" not in message and "\n" not in message
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in records if r["type"] == "skipped"] == ["no labeled pixel"] * 2
