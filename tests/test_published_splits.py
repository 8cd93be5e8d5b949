"""Tests for the shipped published split lists (U2PL's) and `prcl splits check --published`."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import pytest

from prcl.cli import main
from prcl.data import Splits, check_splits
from prcl.data.published import (
    PUBLISHED_COUNTS,
    TRAIN_SIZES,
    VALID_SIZES,
    VOC_BLENDED,
    VOC_CLASSIC,
    published_splits,
    published_valid,
)
from prcl.errors import UserError

REFERENCE_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "reference-splits"
FOLDERS = {"voc": "pascal", "cityscapes": "cityscapes"}
ALL_SPLITS = [(dataset, n) for dataset, counts in PUBLISHED_COUNTS.items() for n in counts]


def shipped_files() -> list[Path]:
    """Relative paths (without .gz) of every shipped list."""
    root = Path(str(resources.files("prcl.data").joinpath("published_splits")))
    return sorted(p.relative_to(root).with_suffix("") for p in root.rglob("*.txt.gz"))


def shipped_bytes(relative: Path) -> bytes:
    resource = resources.files("prcl.data").joinpath("published_splits")
    for part in relative.parts[:-1]:
        resource = resource.joinpath(part)
    return resource.joinpath(f"{relative.name}.gz").read_bytes()


# ----------------------------------------------------------------------------- the lists


def test_exactly_the_published_files_ship_and_are_deterministic() -> None:
    expected = {Path(FOLDERS[d], "val.txt") for d in PUBLISHED_COUNTS}
    for dataset, n in ALL_SPLITS:
        expected |= {Path(FOLDERS[dataset], str(n), f"{k}.txt") for k in ("labeled", "unlabeled")}
    assert set(shipped_files()) == expected  # 28 lists, no Cityscapes 150
    for relative in expected:
        data = shipped_bytes(relative)
        assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0", relative  # gzip, mtime=0


@pytest.mark.parametrize(("dataset", "num_labels"), ALL_SPLITS)
def test_each_split_has_its_count_and_covers_the_train_set(dataset: str, num_labels: int) -> None:
    splits = published_splits(dataset, num_labels)
    assert len(splits.labeled) == len(set(splits.labeled)) == num_labels
    assert len(splits.unlabeled) == len(set(splits.unlabeled))
    assert not set(splits.labeled) & set(splits.unlabeled)
    assert len(splits.labeled) + len(splits.unlabeled) == TRAIN_SIZES[dataset]
    assert len(splits.valid) == len(set(splits.valid)) == VALID_SIZES[dataset]
    assert not set(splits.valid) & (set(splits.labeled) | set(splits.unlabeled))
    assert splits.test == []
    check_splits(splits)


def test_all_splits_of_a_dataset_share_one_train_set_and_val_list() -> None:
    for dataset, counts in PUBLISHED_COUNTS.items():
        splits = [published_splits(dataset, n) for n in counts]
        assert len({frozenset(s.labeled + s.unlabeled) for s in splits}) == 1
    assert (len(published_valid("voc")), len(published_valid("cityscapes"))) == (1449, 500)


def test_cityscapes_entries_are_train_and_val_image_paths() -> None:
    splits = published_splits("cityscapes", 186)
    for entry in splits.labeled + splits.unlabeled:
        assert entry.startswith("leftImg8bit/train/") and entry.endswith("_leftImg8bit.png")
    assert all(entry.startswith("leftImg8bit/val/") for entry in splits.valid)


def test_voc_labeled_lists_nest_as_published() -> None:
    labeled = {n: set(published_splits("voc", n).labeled) for n in PUBLISHED_COUNTS["voc"]}
    fine = labeled[1464]  # the classic setting draws labeled ids from the 1,464 fine images
    assert all(labeled[n] <= fine for n in VOC_CLASSIC)
    assert labeled[662] <= labeled[1323] <= labeled[2646]  # blended lists grow by adding ids
    assert fine <= labeled[2646] and fine <= labeled[5291]
    assert set(VOC_BLENDED) | set(VOC_CLASSIC) == set(PUBLISHED_COUNTS["voc"])


def test_reads_return_fresh_lists() -> None:
    first = published_splits("voc", 92)
    first.labeled.clear()
    first.valid.append("not-an-id")
    again = published_splits("voc", 92)
    assert len(again.labeled) == 92 and "not-an-id" not in again.valid


def test_unpublished_count_and_unknown_dataset_are_user_errors() -> None:
    with pytest.raises(UserError) as info:
        published_splits("voc", 100)
    message = str(info.value)
    assert "data.num_labels=100" in message and "92, 183, 366, 662" in message
    assert "data.splits" in message and "prcl splits make" in message and "\n" not in message
    with pytest.raises(UserError, match="cityscapes.*186, 372, 744, 1488"):
        published_splits("cityscapes", 150)
    with pytest.raises(UserError, match="'ade20k'"):
        published_splits("ade20k", 92)


def test_shipped_lists_equal_the_source_files() -> None:
    source = REFERENCE_SPLITS / "u2pl"
    if not source.is_dir():
        pytest.skip(f"reference splits not found at {source}")
    for relative in shipped_files():
        original = (source / relative).read_bytes()
        assert gzip.decompress(shipped_bytes(relative)) == original, relative
    release = REFERENCE_SPLITS / "VOC" / "662" / "3407" / "labeled_filename.txt"
    ids = [line.strip() for line in release.read_text().splitlines() if line.strip()]
    assert ids == published_splits("voc", 662).labeled


# ----------------------------------------------------------------------------- missing files


def test_check_splits_counts_missing_files_and_names_the_first(tmp_path: Path) -> None:
    for name in ("a", "c"):
        (tmp_path / f"{name}.jpg").touch()
    splits = Splits(["a", "b"], ["c", "d", "e"], ["f"])
    with pytest.raises(UserError) as info:
        check_splits(splits, image_path=lambda i: tmp_path / f"{i}.jpg")
    message = str(info.value)
    assert message.startswith("4 files are missing") and "\n" not in message
    assert all(f"'{i}'" in message for i in "bde") and "'f'" not in message  # first three only
    assert str(tmp_path / "b.jpg") in message and "1 more" in message
    # masks: only labeled and valid ids need one
    for name in "bdef":
        (tmp_path / f"{name}.jpg").touch()
    (tmp_path / "a.png").touch()
    with pytest.raises(UserError) as info:
        check_splits(
            splits,
            image_path=lambda i: tmp_path / f"{i}.jpg",
            mask_path=lambda i: tmp_path / f"{i}.png",
        )
    message = str(info.value)
    assert message.startswith("2 files are missing") and str(tmp_path / "b.png") in message
    assert str(tmp_path / "f.png") in message and "'c'" not in message


# ----------------------------------------------------------------------------- the command


def touch_all(paths: list[Path]) -> None:
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        path.touch()


def fake_voc(root: Path, splits: Splits) -> tuple[list[Path], list[Path]]:
    """Image and mask files of ``splits`` under a VOC layout at ``root``, all created."""
    ids = splits.labeled + splits.unlabeled + splits.valid
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    masks = [root / "SegmentationClassAug" / f"{i}.png" for i in splits.labeled + splits.valid]
    touch_all(images + masks)
    return images, masks


def mask_entry(entry: str) -> str:
    """``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` -> its ``gtFine`` labelIds path."""
    folder, name = entry.replace("leftImg8bit/", "gtFine/", 1).rsplit("/", 1)
    return f"{folder}/{name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')}"


def fake_cityscapes(root: Path, splits: Splits) -> tuple[list[Path], list[Path]]:
    """Image and mask files of ``splits`` under a Cityscapes layout at ``root``, all created."""
    images = [root / entry for entry in splits.labeled + splits.unlabeled + splits.valid]
    masks = [root / mask_entry(entry) for entry in splits.labeled + splits.valid]
    touch_all(images + masks)
    return images, masks


@pytest.mark.parametrize(
    ("dataset", "num_labels", "build"),
    [("voc", 92, fake_voc), ("cityscapes", 186, fake_cityscapes)],
)
def test_splits_check_published_against_a_tree(tmp_path, capsys, dataset, num_labels, build):
    splits = published_splits(dataset, num_labels)
    images, masks = build(tmp_path, splits)
    argv = ["splits", "check", "--dataset", dataset, "--root", str(tmp_path), "--published",
            "--num-labels", str(num_labels)]  # fmt: skip

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{dataset} {num_labels}: {num_labels} labeled" in out and out.rstrip().endswith("ok")

    masks[0].unlink()  # the first labeled id's mask
    removed = images[num_labels : num_labels + 5]  # the first five unlabeled images
    for path in removed:
        path.unlink()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "6 files missing" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and f"published {dataset} split {num_labels}: 6 files are missing" in err
    assert str(masks[0]) in err and str(removed[0]) in err and str(removed[1]) in err
    assert str(removed[2]) not in err and "3 more" in err and "docs/datasets.md" in err


def test_splits_check_published_without_root_lists_the_shipped_splits(capsys) -> None:
    assert main(["splits", "check", "--published"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(ALL_SPLITS)
    assert "cityscapes 1488: 1488 labeled, 1487 unlabeled, 500 valid" in lines


def test_splits_command_line_mistakes_are_one_line(tmp_path, capsys) -> None:
    cases = [
        (["splits", "check"], "--published"),
        (["splits", "check", "--published", "--dataset", "voc", "--num-labels", "100"], "92, 183"),
        (["splits", "check", "--published", "--root", str(tmp_path)], "--dataset voc"),
        (["splits", "make", "--out", str(tmp_path), "--num-labels", "3"], "--train-list"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err and "Traceback" not in err
