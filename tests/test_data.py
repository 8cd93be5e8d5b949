"""Tests for the loader side of prcl.data: split files, datasets, transforms, demo data, loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from prcl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CityscapesDataset,
    FolderDataset,
    Splits,
    VOCDataset,
    check_splits,
    demo_class_names,
    eval_transform,
    generate_demo_dataset,
    make_splits,
    read_id_list,
    read_splits,
    train_transform,
    unlabeled_transform,
    write_splits,
)
from prcl.data.demo_dataset import DemoParams
from prcl.errors import UserError

from tolerances import assert_within, summation_bound

# /work/shared/reference-splits beside the repository, or wherever PRCL_REFERENCE_SPLITS points
REFERENCE_SPLITS = Path(
    os.environ.get(
        "PRCL_REFERENCE_SPLITS", Path(__file__).resolve().parents[2] / "shared" / "reference-splits"
    )
)
DEMO_KW = dict(
    num_train=24, num_valid=8, num_test=4, image_size=48, num_classes=6, seed=3, num_labels=6, split_seeds=0
)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **DEMO_KW)


def _denormalise(image: torch.Tensor) -> torch.Tensor:
    """float (3, H, W) normalised -> values in 0..255."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean) * 255.0


def _files_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "demo.json"
    }


# ----------------------------------------------------------------------------- splits


def test_split_files_round_trip_without_final_newline(tmp_path: Path) -> None:
    folder = tmp_path / "splits" / "2" / "7"
    folder.mkdir(parents=True)
    (folder / "labeled_filename.txt").write_text("a\nb")  # no final newline
    (folder / "unlabeled_filename.txt").write_text("c\n\nd\n \n")  # blank lines
    (folder / "valid_filename.txt").write_text("v1\r\nv2")  # CRLF, no final newline
    splits = read_splits(tmp_path / "splits", 2, 7)
    assert splits.labeled == ["a", "b"]
    assert splits.unlabeled == ["c", "d"]
    assert splits.valid == ["v1", "v2"]
    write_splits(tmp_path / "copy", 2, 7, splits)
    assert read_splits(tmp_path / "copy", 2, 7) == splits
    assert (tmp_path / "copy" / "2" / "7" / "labeled_filename.txt").read_text() == "a\nb\n"


def test_read_splits_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=str(tmp_path / "5" / "1")):
        read_splits(tmp_path, 5, 1)


def test_make_splits_is_deterministic_and_disjoint() -> None:
    train = [f"img{k:03d}" for k in range(50)]
    valid = ["v0", "v1"]
    first = make_splits(train, valid, 10, seed=3)
    again = make_splits(list(reversed(train)), valid, 10, seed=3)  # input order does not matter
    other = make_splits(train, valid, 10, seed=4)
    assert first == again
    assert first.labeled != other.labeled
    assert len(first.labeled) == 10 and len(first.unlabeled) == 40
    assert not set(first.labeled) & set(first.unlabeled)
    assert sorted(first.labeled + first.unlabeled) == train
    assert first.valid == valid
    with pytest.raises(UserError, match="num_labels"):
        make_splits(train, valid, 51, seed=0)


def test_check_splits_reports_each_problem(tmp_path: Path) -> None:
    check_splits(Splits(["a"], ["b"], ["c"]))  # a good split passes
    with pytest.raises(UserError, match="'a' more than once"):
        check_splits(Splits(["a", "a"], ["b"], ["c"]))
    with pytest.raises(UserError, match="both labeled and unlabeled.*'b'"):
        check_splits(Splits(["a", "b"], ["b"], ["c"]))
    with pytest.raises(UserError, match="valid ids are also train ids"):
        check_splits(Splits(["a"], ["b"], ["a"]))
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    with pytest.raises(UserError) as info:
        check_splits(Splits(["a"], ["b"], ["c"]), image_path=lambda i: tmp_path / f"{i}.png")
    assert "'b'" in str(info.value) and str(tmp_path / "b.png") in str(info.value)


def test_reference_voc_split_counts_and_no_overlap() -> None:
    root = REFERENCE_SPLITS / "VOC"
    if not (root / "662" / "3407").is_dir():
        pytest.skip(f"reference splits not found at {root}")
    splits = read_splits(root, 662, 3407)
    assert (len(splits.labeled), len(splits.unlabeled), len(splits.valid)) == (662, 9920, 1449)
    check_splits(splits)  # no duplicates, no labeled/unlabeled or valid/train overlap


# ----------------------------------------------------------------------------- datasets


def test_folder_dataset_reads_demo_files(demo_root: Path) -> None:
    splits = read_splits(demo_root / "splits", 6, 0)
    dataset = FolderDataset(demo_root, splits.labeled, with_labels=True, num_classes=6)
    check_splits(splits, image_path=dataset.image_path)
    sample = dataset[0]
    image_id = splits.labeled[0]
    assert sample["id"] == image_id
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].dtype == torch.uint8
    assert sample["image"].shape == (3, 48, 48)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (48, 48)
    on_disk = np.asarray(Image.open(demo_root / "images" / f"{image_id}.png"))
    assert torch.equal(sample["image"].permute(1, 2, 0), torch.from_numpy(on_disk.copy()))
    mask_file = Image.open(demo_root / "masks" / f"{image_id}.png")
    assert mask_file.mode == "P"
    assert torch.equal(sample["mask"], torch.from_numpy(np.asarray(mask_file).astype(np.int64)))
    unlabeled = FolderDataset(demo_root, splits.unlabeled, with_labels=False)
    assert "mask" not in unlabeled[0] and len(unlabeled) == 18


def _write_folder_sample(root: Path, image_id: str, mask: np.ndarray, mode: str = "L") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    image = Image.fromarray(np.full((*mask.shape, 3), 100, np.uint8))
    image.save(root / "images" / f"{image_id}.jpg")
    png = Image.fromarray(mask.astype(np.uint8))
    if mode == "P":
        png.putpalette([v for k in range(256) for v in (k, 255 - k, 0)])
    png.save(root / "masks" / f"{image_id}.png")


@pytest.mark.parametrize("mode", ["L", "P"])
def test_folder_dataset_maps_255_to_ignore(tmp_path: Path, mode: str) -> None:
    values = np.array([[0, 1, 255], [2, 255, 3]])
    _write_folder_sample(tmp_path, "x", values, mode)
    mask = FolderDataset(tmp_path, ["x"], num_classes=4)[0]["mask"]
    assert mask.tolist() == [[0, 1, -1], [2, -1, 3]]


def test_folder_dataset_label_out_of_range_names_file_and_value(tmp_path: Path) -> None:
    _write_folder_sample(tmp_path, "x", np.array([[0, 1], [7, 2]]))
    dataset = FolderDataset(tmp_path, ["x"], num_classes=6)
    with pytest.raises(UserError) as info:
        dataset[0]
    assert str(tmp_path / "masks" / "x.png") in str(info.value) and "7" in str(info.value)


def test_folder_dataset_corrupt_image_names_file(tmp_path: Path) -> None:
    _write_folder_sample(tmp_path, "x", np.zeros((4, 4)))
    (tmp_path / "images" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError, match=str(tmp_path / "images" / "x.jpg")):
        FolderDataset(tmp_path, ["x"], num_classes=2)[0]


def test_missing_data_roots_name_the_folder_and_the_demo(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for build in (
        lambda: FolderDataset(missing, ["x"]),
        lambda: VOCDataset(missing, ["x"]),
        lambda: CityscapesDataset(missing, ["x"]),
    ):
        with pytest.raises(UserError) as info:
            build()
        assert str(missing) in str(info.value) and "data.dataset=demo" in str(info.value)


def test_voc_dataset_layout(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "JPEGImages" / "2007_000033.jpg")
    Image.fromarray(np.array([[0, 20, 255, 3, 3, 3]] * 5, np.uint8)).save(
        root / "SegmentationClass" / "2007_000033.png"
    )
    dataset = VOCDataset(tmp_path / "VOCdevkit", ["2007_000033"], label_dir="SegmentationClass")
    assert dataset.root == root  # the VOCdevkit folder is accepted too
    assert dataset[0]["mask"][0].tolist() == [0, 20, -1, 3, 3, 3]
    with pytest.raises(UserError, match="SegmentationClassAug"):
        VOCDataset(root, ["2007_000033"])  # the default label folder is missing


def test_cityscapes_dataset_maps_label_ids_and_accepts_id_forms(tmp_path: Path) -> None:
    city = "aachen"
    name = "aachen_000013_000019"
    for folder in (tmp_path / "leftImg8bit" / "train" / city, tmp_path / "gtFine" / "train" / city):
        folder.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(
        tmp_path / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png"
    )
    label_path = tmp_path / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png"
    Image.fromarray(np.array([[7, 26, 0, 255], [33, 8, 1, 24]], np.uint8)).save(label_path)
    forms = [name, f"{name}_leftImg8bit", f"{city}/{name}", f"{city}/{name}_leftImg8bit.png"]
    dataset = CityscapesDataset(tmp_path, forms)
    assert len({dataset.image_path(i) for i in forms}) == 1
    assert CityscapesDataset.list_ids(tmp_path) == [name]
    assert dataset[0]["mask"].tolist() == [[0, 13, -1, -1], [18, 1, -1, 11]]
    assert all(torch.equal(dataset[k]["mask"], dataset[0]["mask"]) for k in range(1, 4))
    Image.fromarray(np.array([[7, 40], [7, 7]], np.uint8)).save(label_path)
    with pytest.raises(UserError, match="value 40"):
        dataset[0]


# ----------------------------------------------------------------------------- transforms


def _sample(height: int, width: int, mask: torch.Tensor | None = None) -> dict:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    if mask is None:
        mask = torch.randint(-1, 5, (height, width), generator=generator)
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "id": "s"}


@pytest.mark.parametrize("size", [(40, 50), (20, 24)])
def test_train_transform_shapes_and_dtypes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    sample = _sample(*size)
    out = train_transform(32, scale_range=(0.5, 1.5))(sample)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.int64
    assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    assert out["id"] == "s"
    assert set(out["mask"].unique().tolist()) <= set(range(-1, 5))
    ragged = train_transform((24, 36))(sample)
    assert ragged["image"].shape == (3, 24, 36) and ragged["mask"].shape == (24, 36)


def test_unlabeled_and_eval_transform_shapes() -> None:
    torch.manual_seed(0)
    sample = _sample(40, 50)
    del sample["mask"]
    out = unlabeled_transform(32)(sample)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    whole = eval_transform()(_sample(40, 50))
    assert whole["image"].shape == (3, 40, 50) and whole["mask"].shape == (40, 50)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (sample["image"].float() / 255 - mean) / std
    # torchvision's scaling and normalisation against these three steps, each rounding values up to (1 + mean) / std
    assert_within(whole["image"], expected, summation_bound((1 + mean) / std, 4))


def test_padding_reflects_image_and_ignores_mask() -> None:
    sample = _sample(20, 24, mask=torch.zeros(20, 24, dtype=torch.int64))
    out = unlabeled_transform(32)(sample)  # scale 1, no flip: the crop is the padded image
    mask = out["mask"]
    assert (mask[:20, :24] == 0).all()
    assert (mask[20:, :] == -1).all() and (mask[:, 24:] == -1).all()
    reflected = F.pad(sample["image"], [0, 0, 8, 12], padding_mode="reflect").float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    # normalised and back (3 + 2 roundings) with values up to 255 (1 + mean); another padding is off by grey levels
    assert_within(_denormalise(out["image"]), reflected, summation_bound(255 * (1 + mean), 8))


def test_padding_larger_than_the_image_still_reflects() -> None:
    sample = _sample(5, 7, mask=torch.ones(5, 7, dtype=torch.int64))
    out = unlabeled_transform(40)(sample)
    assert out["image"].shape == (3, 40, 40)
    assert (out["mask"] == 1).sum() == 35 and (out["mask"] == -1).sum() == 40 * 40 - 35


def _interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood lies in the crop and holds one valid label: free of
    interpolation across label edges (the crop border counts as an edge: what lies beyond it
    is unknown)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), [radius] * 4, value=-100.0)
    size = 2 * radius + 1
    high = torch.nn.functional.max_pool2d(padded, size, 1)[0, 0]
    low = -torch.nn.functional.max_pool2d(-padded, size, 1)[0, 0]
    return (high == low) & (mask >= 0)


def test_geometry_keeps_image_and_mask_aligned() -> None:
    torch.manual_seed(1)
    transform = train_transform(48, scale_range=(0.5, 1.5), strong=False)
    for k in range(12):
        generator = torch.Generator().manual_seed(k)
        blocks = torch.randint(0, 6, (6, 8), generator=generator)  # asymmetric pattern of blocks
        mask = blocks.repeat_interleave(10, 0).repeat_interleave(10, 1)  # (60, 80)
        # every channel encodes the class
        image = (mask * 40).to(torch.uint8).expand(3, -1, -1).clone()
        out = transform({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)})
        decoded = (_denormalise(out["image"]).mean(0) / 40).round().long()
        inside = _interior(out["mask"])
        assert inside.sum() > 100  # enough pixels for the check to mean something
        assert (decoded[inside] == out["mask"][inside]).float().mean() > 0.99
        mirrored = (decoded.flip(-1)[inside] == out["mask"][inside]).float().mean()
        assert mirrored < 0.8  # the check notices a flip applied to one side only


def test_colour_ops_leave_the_mask_alone() -> None:
    torch.manual_seed(2)
    sample = _sample(36, 36)
    transform = train_transform(36, scale_range=(1.0, 1.0), strong=True)
    for _ in range(8):
        out = transform(sample)
        mask = out["mask"]
        assert torch.equal(mask, sample["mask"]) or torch.equal(mask, sample["mask"].flip(-1))


# ----------------------------------------------------------------------------- demo dataset


def test_demo_layout_and_classes(demo_root: Path) -> None:
    assert len(list((demo_root / "images").glob("*.png"))) == 36
    assert len(list((demo_root / "masks").glob("*.png"))) == 36
    splits = read_splits(demo_root / "splits", 6, 0)
    assert (len(splits.labeled), len(splits.unlabeled), len(splits.valid)) == (6, 18, 8)
    assert len(read_id_list(demo_root / "splits" / "test_filename.txt")) == 4
    seen: set[int] = set()
    for path in sorted((demo_root / "masks").glob("*.png")):
        values = set(np.unique(np.asarray(Image.open(path))).tolist())
        assert len(values) >= 2, path
        assert values <= set(range(6))
        seen |= values
    assert seen == set(range(6))
    assert demo_class_names(6) == ["brick", "grass", "gravel", "fur", "coffee", "stars"]


def test_demo_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    same = generate_demo_dataset(tmp_path / "same", **DEMO_KW)
    other = generate_demo_dataset(tmp_path / "other", **{**DEMO_KW, "seed": 4})
    reference = _files_bytes(demo_root)
    assert _files_bytes(same) == reference
    other_bytes = _files_bytes(other)
    assert other_bytes.keys() == reference.keys()
    images = [k for k in reference if k.startswith("images")]
    assert all(other_bytes[k] != reference[k] for k in images)


def test_a_killed_demo_generation_leaves_nothing_once_the_next_one_ran(tmp_path: Path) -> None:
    """A process killed while it rendered leaves its temporary folder; the next generation removes it, and
    leaves those of processes still running (or of other machines) alone."""
    import socket

    host, ended = socket.gethostname(), _ended_pid()
    dead = tmp_path / f".data.tmp-{host}-{ended}-0a1b2c3d"
    alive = tmp_path / f".data.tmp-{host}-{os.getpid()}-0a1b2c3d"
    elsewhere = tmp_path / f".data.tmp-{host}x-{ended}-0a1b2c3d"
    for folder in (dead, alive, elsewhere):
        (folder / "images").mkdir(parents=True)
    generate_demo_dataset(tmp_path / "data", **{**DEMO_KW, "num_train": 6, "num_labels": 2, "num_test": 0})
    assert not dead.exists() and alive.is_dir() and elsewhere.is_dir()


def _ended_pid() -> int:
    """The id of a process that has ended (and was reaped: no process has it now)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_demo_colour_alone_does_not_separate_classes(tmp_path: Path) -> None:
    root = generate_demo_dataset(
        tmp_path / "d", num_train=40, num_valid=20, num_test=0, image_size=64, num_classes=6, seed=0,
        num_labels=4, split_seeds=0,
    )

    def pixels(role: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        ids = [f"{role}_{k:05d}" for k in range(count)]
        colours = [np.asarray(Image.open(root / "images" / f"{i}.png")).reshape(-1, 3) for i in ids]
        labels = [np.asarray(Image.open(root / "masks" / f"{i}.png")).reshape(-1) for i in ids]
        return np.concatenate(colours).astype(np.float64), np.concatenate(labels)

    colours, labels = pixels("train", 40)
    centroids = np.stack([colours[labels == c].mean(0) for c in range(6)])
    test_colours, test_labels = pixels("valid", 20)
    nearest = ((test_colours[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (nearest == test_labels).mean()
    # measured about 0.2 (chance is 1/6); a mosaic where colour gives the class scores far higher
    assert accuracy < 0.35, accuracy


def test_demo_cache_is_idempotent_and_follows_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRCL_CACHE", str(tmp_path / "cache"))
    kw = {**DEMO_KW, "num_train": 8, "num_valid": 2, "num_test": 0, "num_labels": 2}
    root = generate_demo_dataset(**kw)
    params = DemoParams(8, 2, 0, 48, 6, 3)
    assert root == (tmp_path / "cache" / "demo" / params.digest()).absolute()
    image = root / "images" / "train_00000.png"
    stamp = image.stat().st_mtime_ns
    assert generate_demo_dataset(**kw) == root
    assert image.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert generate_demo_dataset(**{**kw, "num_labels": 4}) == root  # new splits, same images
    assert image.stat().st_mtime_ns == stamp
    assert len(read_splits(root / "splits", 4, 0).labeled) == 4
    assert generate_demo_dataset(**{**kw, "seed": 5}) != root  # other images, other folder
    # an explicit root with other parameters is regenerated in place
    explicit = generate_demo_dataset(tmp_path / "mine", **kw)
    generate_demo_dataset(tmp_path / "mine", **{**kw, "num_train": 9})
    assert len(list((explicit / "images").glob("train_*.png"))) == 9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary folders left behind
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo dataset"):
        generate_demo_dataset(tmp_path / "theirs", **kw)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
