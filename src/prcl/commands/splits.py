"""`prcl splits make` writes split files; `prcl splits check` checks them, or lists and checks the shipped ones."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from prcl.errors import UserError

if TYPE_CHECKING:
    from prcl.data import SegmentationDataset


def cmd_splits(args: argparse.Namespace) -> int:
    if args.action is None:
        raise UserError("`prcl splits` needs an action: make (write split files) or check (see prcl splits --help)")
    if args.action == "make":
        _splits_make(args)
    elif args.published:
        _splits_check_published(args)
    else:
        _splits_check_folder(args)
    return 0


def _splits_make(args: argparse.Namespace) -> None:
    """Write ``<out>/<num_labels>/<seed>/`` from --train-list or the images of a folder dataset.

    Refuses (before writing anything) to replace existing split files without --force, valid ids
    that are also train ids, and, with --root, ids whose files are missing: what it writes passes
    `prcl splits check`. Without --train-list the train ids are the folder's images minus the valid ids.
    """
    from prcl.data import (
        FolderDataset,
        check_splits,
        make_splits,
        split_dir,
        write_splits,
    )
    from prcl.data.splits import (
        describe_missing,
        existing_split_files,
        missing_split_files,
    )
    from prcl.data.validate import check_output_folder
    from prcl.io import remove_leftovers

    if args.published:
        raise UserError("--published is for `prcl splits check`; `make` writes your own splits")
    missing = [flag for flag, value in (("--out FOLDER", args.out), ("--num-labels N", args.num_labels))
               if value is None]
    if args.train_list is None and (args.root is None or args.dataset != "folder"):
        missing.append("--train-list FILE (or --root of a folder dataset with images/ and masks/, whose images it lists)")
    if missing:
        raise UserError(f"`prcl splits make` needs {' and '.join(missing)} (see prcl splits --help)")
    folder = split_dir(args.out, args.num_labels, args.seed)
    existing = existing_split_files(args.out, args.num_labels, args.seed)
    if existing and not args.force:
        raise UserError(f"split folder {folder} already holds {', '.join(p.name for p in existing)}; "
                        "pass --force to replace them, or choose another --out, --num-labels or --seed")
    check_output_folder(folder, "--out")
    valid = _read_list_arg(args.valid_list, "--valid-list") if args.valid_list else []
    if args.train_list:
        train = _read_list_arg(args.train_list, "--train-list")
    else:
        held_out = set(valid)
        train = [i for i in FolderDataset.list_ids(args.root) if i not in held_out]
    splits = make_splits(train, valid, args.num_labels, args.seed)
    if args.root is None:
        check_splits(splits)
    elif args.dataset == "folder":
        check_splits(splits, image_path=FolderDataset(args.root, [], with_labels=False).image_path)
    else:
        check_splits(splits)
        gone = missing_split_files(splits, *_splits_datasets(args.dataset, args.root))
        if gone:
            raise UserError(f"{describe_missing(gone)}; check --root or the id lists")
    remove_leftovers(folder)  # what a `splits make` killed while writing left there
    written = write_splits(args.out, args.num_labels, args.seed, splits, overwrite=args.force)
    print(f"{'replaced' if existing else 'wrote'} {written}: {len(splits.labeled)} labeled, "
          f"{len(splits.unlabeled)} unlabeled, {len(splits.valid)} valid")


def _read_list_arg(path: str, flag: str) -> list[str]:
    from prcl.data import read_id_list

    if not Path(path).expanduser().is_file():
        raise UserError(f"{flag} {path}: file not found; give a text file with one image id per line")
    return read_id_list(Path(path).expanduser())


def _splits_check_folder(args: argparse.Namespace) -> None:
    """Check ``<out>/<num_labels>/<seed>/`` (and, with --root, that its files exist)."""
    from prcl.data import FolderDataset, check_splits, read_splits
    from prcl.data.splits import describe_missing, missing_split_files

    if args.out is None or args.num_labels is None:
        raise UserError(
            "`prcl splits check` needs --out FOLDER and --num-labels N (your split files), "
            "or --published (the shipped lists)"
        )
    splits = read_splits(args.out, args.num_labels, args.seed)
    if args.root is None:
        check_splits(splits)
    elif args.dataset == "folder":
        check_splits(splits, image_path=FolderDataset(args.root, [], with_labels=False).image_path)
    else:
        check_splits(splits)  # duplicates and overlaps, before the per-folder file checks
        missing = missing_split_files(splits, *_splits_datasets(args.dataset, args.root))
        if missing:
            raise UserError(f"{describe_missing(missing)}; check --root or the split files (docs/datasets.md)")
    print(f"ok: {len(splits.labeled)} labeled, {len(splits.unlabeled)} unlabeled, {len(splits.valid)} valid")


def _splits_check_published(args: argparse.Namespace) -> None:
    """Print the shipped lists; with --root, check each against the dataset on disk.

    One line per split on stdout; if any split has missing files or wrong counts, a UserError
    names the first such split (main() prints it and exits 2).
    """
    from prcl.data.published import PUBLISHED_COUNTS

    datasets = list(PUBLISHED_COUNTS) if args.dataset == "folder" else [args.dataset]
    if args.root is not None and args.dataset == "folder":
        raise UserError("--published with --root needs --dataset voc or --dataset cityscapes")
    for dataset in datasets:
        published = PUBLISHED_COUNTS[dataset]
        if args.num_labels is not None and args.num_labels not in published:
            raise UserError(
                f"--num-labels {args.num_labels} has no published {dataset} split (published "
                f"counts: {', '.join(map(str, published))}); pick one, or use --out for your own"
            )
    if args.root is None:
        print("published splits shipped with prcl (U2PL, Apache-2.0; see prcl/data/published_splits/README.md):")
    failures: list[str] = []
    for dataset in datasets:
        datasets_on_disk = _splits_datasets(dataset, args.root) if args.root is not None else None
        counts = PUBLISHED_COUNTS[dataset] if args.num_labels is None else (args.num_labels,)
        for num_labels in counts:
            problem = _splits_check_one_published(dataset, num_labels, datasets_on_disk)
            if problem:
                failures.append(problem)
    if failures:
        more = f" ({len(failures)} splits failed in all)" if len(failures) > 1 else ""
        raise UserError(f"{failures[0]}{more}")


def _splits_check_one_published(
    dataset: str, num_labels: int, on_disk: tuple[SegmentationDataset, SegmentationDataset] | None
) -> str | None:
    """Print one split's line; return the error text (None when it is fine or not checked)."""
    from prcl.data import check_splits
    from prcl.data.published import TRAIN_SIZES, published_splits
    from prcl.data.splits import describe_missing, missing_split_files

    splits = published_splits(dataset, num_labels)
    sizes = f"{len(splits.labeled)} labeled, {len(splits.unlabeled)} unlabeled, {len(splits.valid)} valid"
    name = f"published {dataset} split {num_labels}"
    wrong = []
    if len(splits.labeled) != num_labels:
        wrong.append(f"labeled list holds {len(splits.labeled)} ids, expected {num_labels}")
    if len(splits.labeled) + len(splits.unlabeled) != TRAIN_SIZES[dataset]:
        wrong.append(f"labeled + unlabeled is not the {TRAIN_SIZES[dataset]} train images")
    try:
        check_splits(splits)  # duplicates, labeled/unlabeled overlap, val ids in train
    except UserError as error:
        wrong.append(str(error))
    if wrong:
        print(f"{dataset} {num_labels}: {sizes}: wrong")
        return f"{name}: {'; '.join(wrong)}; the shipped lists are damaged, reinstall prcl"
    if on_disk is None:
        print(f"{dataset} {num_labels}: {sizes}")
        return None
    missing = missing_split_files(splits, *on_disk)
    if not missing:
        print(f"{dataset} {num_labels}: {sizes}: ok")
        return None
    print(f"{dataset} {num_labels}: {sizes}: {len(missing)} files missing")
    return f"{name}: {describe_missing(missing)}; check data.root, see docs/datasets.md"


def _splits_datasets(dataset: str, root: str) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, valid) datasets of ``dataset`` at ``root``, for their image_path and mask_path."""
    from prcl.data import CityscapesDataset, VOCDataset

    if dataset == "voc":
        voc = VOCDataset(root, [])
        return voc, voc
    return CityscapesDataset(root, [], split="train"), CityscapesDataset(root, [], split="val")
