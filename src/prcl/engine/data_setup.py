"""Datasets of a run, from the config: labeled, unlabeled, valid and (demo only) test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from prcl import distributed
from prcl.config import Config
from prcl.data import (
    CityscapesDataset,
    FolderDataset,
    Splits,
    VOCDataset,
    check_splits,
    eval_transform,
    generate_demo_dataset,
    read_id_list,
    read_splits,
    run_classes,
    split_dir,
    train_transform,
    unlabeled_transform,
)
from prcl.data.published import PUBLISHED_COUNTS, published_splits, published_valid
from prcl.data.splits import describe_missing, missing_split_files
from prcl.errors import UserError



@dataclass
class RunData:
    labeled: Dataset
    unlabeled: Dataset
    valid: Dataset
    test: Dataset | None
    class_names: list[str]
    root: Path
    class_colors: list[tuple[int, int, int]]  # one RGB per class, as class_names


def _splits_root(cfg: Config, root: Path) -> Path:
    if cfg.data.splits:
        return Path(cfg.data.splits).expanduser()
    if (root / "splits").is_dir():
        return root / "splits"
    raise UserError(f"no split files for {root}: set data.splits to a folder holding "
                    f"<num_labels>/<split_seed>/labeled_filename.txt (write one with `prcl splits`)")


def read_run_splits(cfg: Config, root: Path) -> Splits:
    """The split lists of a run.

    VOC and Cityscapes without ``data.splits``: the published lists for ``data.num_labels``
    (shipped with prcl). Otherwise the files under ``<data.splits>/<num_labels>/<split_seed>/``;
    for VOC and Cityscapes a folder without ``valid_filename.txt`` validates on the published val
    list (e.g. the PRCL release's Cityscapes 150 split, whose own valid list names test images).
    """
    data = cfg.data
    if data.dataset in PUBLISHED_COUNTS and not data.splits:
        return published_splits(data.dataset, data.num_labels)
    splits_root = _splits_root(cfg, root)
    folder = split_dir(splits_root, data.num_labels, data.split_seed)
    if data.dataset in PUBLISHED_COUNTS and folder.is_dir() and not (folder / "valid_filename.txt").exists():
        return Splits(read_id_list(folder / "labeled_filename.txt"), read_id_list(folder / "unlabeled_filename.txt"),
                      published_valid(data.dataset))
    return read_splits(splits_root, data.num_labels, data.split_seed)


def demo_root(cfg: Config) -> Path:
    """Generate (or reuse) the embedded demo dataset the config describes.

    Under torchrun the first process writes it while the others wait, then they all reuse it.
    """
    root = _generate_demo(cfg) if distributed.is_main() else None
    distributed.barrier()
    return root if root is not None else _generate_demo(cfg)


def _generate_demo(cfg: Config) -> Path:
    d = cfg.data.demo
    return generate_demo_dataset(cfg.data.root, num_train=d.num_train, num_valid=d.num_valid, num_test=d.num_test,
                                 image_size=d.image_size, num_classes=d.num_classes, seed=d.seed,
                                 num_labels=cfg.data.num_labels, split_seeds=cfg.data.split_seed)


def build_run_data(cfg: Config) -> RunData:
    """The four datasets with their transforms; every split id is checked against its image (and mask) file."""
    data = cfg.data
    labeled_tf = train_transform(data.crop_size, tuple(data.scale_range))
    unlabeled_tf = unlabeled_transform(data.crop_size)
    test_ids: list[str] = []
    if data.dataset in ("demo", "folder"):
        if data.dataset == "demo":
            root = demo_root(cfg)
        else:
            if not data.root:
                raise UserError("data.root is not set: point it at a folder with images/ and masks/")
            root = Path(data.root).expanduser()
        splits = read_run_splits(cfg, root)
        if (root / "splits" / "test_filename.txt").is_file():
            test_ids = read_id_list(root / "splits" / "test_filename.txt")

        def make(ids, labels, tf):
            return FolderDataset(root, ids, with_labels=labels, num_classes=data.num_classes, transform=tf)
    elif data.dataset == "voc":
        root = VOCDataset.find_root(data.root)
        splits = read_run_splits(cfg, root)

        def make(ids, labels, tf):
            return VOCDataset(root, ids, with_labels=labels, transform=tf)
    else:  # cityscapes
        root = Path(data.root).expanduser()
        splits = read_run_splits(cfg, root)

        def make(ids, labels, tf, split="train"):
            return CityscapesDataset(root, ids, with_labels=labels, split=split, transform=tf)

    classes = run_classes(data, root)
    labeled = make(splits.labeled, True, labeled_tf)
    unlabeled = make(splits.unlabeled, False, unlabeled_tf)
    if cfg.train.pseudo_label_probe and unlabeled.ids and all(unlabeled.mask_path(i).is_file() for i in unlabeled.ids):
        # masks of the unlabeled images exist (the demo, VOC's SegmentationClassAug): read for the probe only
        unlabeled = make(splits.unlabeled, True, unlabeled_tf)
    valid = (make(splits.valid, True, eval_transform(), split="val") if data.dataset == "cityscapes"
             else make(splits.valid, True, eval_transform()))
    check_splits(splits)
    missing = missing_split_files(splits, labeled, valid)
    if missing:
        raise UserError(f"{describe_missing(missing)}; check data.root or the split files")
    test = make(test_ids, True, eval_transform()) if test_ids else None
    return RunData(labeled, unlabeled, valid, test, classes.names, root, classes.colors)
