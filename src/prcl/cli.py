"""The `prcl` command: train, eval, predict, splits, demo, plot.

Mistakes a user can make end with one line on stderr naming the key or file and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prcl.errors import UserError

if TYPE_CHECKING:
    from prcl.data import SegmentationDataset


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def cmd_train(args: argparse.Namespace) -> int:
    from prcl.config import load_config
    from prcl.engine import distributed
    from prcl.engine.trainer import Trainer, TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    try:
        summary = Trainer(cfg, resume=args.resume, resume_force=args.resume_force).fit()
    except TrainingInterrupted as stopped:
        print(f"prcl: {stopped}", file=sys.stderr)
        return stopped.exit_code
    finally:
        distributed.cleanup()  # leave the process group (under torchrun), after an error too
    print(json.dumps({k: summary[k] for k in ("method", "miou", "iterations", "images_per_second")}))
    return 0


def _require(args: argparse.Namespace, command: str, needed: dict[str, str]) -> None:
    """UserError naming every missing argument of ``prcl <command>`` (argparse would print usage too)."""
    missing = [flag for dest, flag in needed.items() if not getattr(args, dest)]
    if missing:
        raise UserError(f"`prcl {command}` needs {' and '.join(missing)} (see prcl {command} --help)")


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse's errors for this subcommand one line on stderr (no usage block), exit 2."""

    def error(message: str) -> None:
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def cmd_eval(args: argparse.Namespace) -> int:
    from prcl.infer.commands import run_eval

    _require(args, "eval", {"config": "--config FILE", "checkpoint": "--checkpoint FILE"})
    run_eval(args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from prcl.infer.commands import predict_files

    _require(args, "predict", {"checkpoint": "--checkpoint FILE", "inputs": "image files, folders or globs",
                               "out": "--out FOLDER"})
    result = predict_files(args.checkpoint, args.inputs, args.out, device=args.device, protocol=args.protocol,
                           window=args.window, stride=args.stride, save_probs=args.save_probs,
                           batch_size=args.batch, uncertainty=args.uncertainty)
    print(f"{len(result.written)} written, {len(result.failed)} failed (outputs in {args.out})")
    return 1 if result.failed else 0


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


def _intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let the subcommand's positionals come before and after its options (``R.pth --out F key=value``)."""
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        parser.parse_known_args = plain  # type: ignore[method-assign]  # parse_known_intermixed_args calls it
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args  # type: ignore[method-assign]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    return parser


def cmd_convert_reference(args: argparse.Namespace) -> int:
    from prcl.models.reference_checkpoint import convert_reference_checkpoint

    _require(args, "convert-reference", {"release": "the release .pth file", "out": "--out FILE"})
    convert_reference_checkpoint(args.release, args.out, args.overrides)
    print(f"wrote {args.out} (converted from {args.release}; for prcl eval, predict and export, not --resume)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from prcl.data.validate import check_output_file
    from prcl.infer import export

    _require(args, "export", {"checkpoint": "--checkpoint FILE", "out": "--out FILE"})
    if args.format not in export.FORMATS:
        raise UserError(f"--format {args.format} is not supported; use --format onnx")
    if not export.onnx_available():
        print(export.MISSING_PACKAGES, file=sys.stderr)
        return 2
    check_output_file(args.out, "--out")
    result = export.export_onnx(args.checkpoint, args.out, opset=args.opset, use=args.use, device=args.device,
                                check=not args.no_check)
    print(f"wrote {args.out} ({args.format}, opset {args.opset}, {args.use} weights)")
    if result is None:
        return 0
    print(export.check_line(result))
    return 0 if result["ok"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from prcl.demo import run_demo

    run_demo(out_dir=Path(args.out), overrides=args.overrides, seed=args.seed)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from prcl.infer.plots import plot_runs

    try:
        out = plot_runs(args.runs, args.out)
    except ImportError as error:
        raise UserError(str(error)) from None
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _one_line_errors(argparse.ArgumentParser(prog="prcl",
                                                      description="PRCL semi-supervised semantic segmentation"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = _one_line_errors(sub.add_parser("train", help="train a segmenter from a config"))
    _add_config(p)
    p.add_argument("--resume", help="'auto' (continue from <out_dir>/checkpoints/last.pt) or a checkpoint path")
    p.add_argument("--resume-force", action="store_true",
                   help="resume although config keys changed that do not break the run (e.g. optim.lr)")
    p.set_defaults(func=cmd_train)

    p = _one_line_errors(sub.add_parser("eval", help="evaluate a checkpoint, print a per-class table and write JSON"))
    _add_config(p, required=False)  # checked in cmd_eval: a missing flag is one line, not a usage block
    p.add_argument("--checkpoint", help="checkpoint to evaluate (required)")
    p.add_argument("--protocol", choices=["whole", "sliding", "center", "random-crop"])
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", help="multi-scale inference, e.g. 0.75 1.0 1.25")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    p.add_argument("--use", choices=["teacher", "student"], default="teacher")
    p.add_argument("--out", help="JSON file for the results (default: <checkpoint>.eval-<split>.json beside "
                   "the checkpoint); checked to be writable before evaluating, written atomically")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(func=cmd_eval)

    p = _one_line_errors(sub.add_parser(
        "predict", help="write palette masks, overlays and uncertainty maps for images",
        description="For each image write <name>_mask.png (palette), <name>_overlay.png and "
                    "<name>_uncertainty.png (see --uncertainty) into --out. <name> is the file's stem (photo.jpg -> "
                    "photo_mask.png); inputs that share a stem keep their extension (x.jpg and x.png -> "
                    "x.jpg_mask.png and x.png_mask.png) so no output overwrites another. Existing outputs "
                    "of the same names are replaced. A file that cannot be decoded is named on stderr and "
                    "skipped; the last line says 'N written, M failed'. Exit status: 0 all written, 1 some "
                    "failed, 2 nothing done (a usage error, a bad checkpoint, no images)."))
    p.add_argument("--checkpoint", help="checkpoint to predict with (required)")
    p.add_argument("inputs", nargs="*", help="image files, folders (every .png .jpg .jpeg .bmp .tif .tiff .webp "
                   "below, recursively) or quoted globs such as 'photos/**/*.jpg' (at least one)")
    p.add_argument("--out", help="output folder (required; created if missing)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--protocol", choices=["whole", "sliding"],
                   help="whole image or sliding windows (default: the checkpoint config's eval protocol)")
    p.add_argument("--window", type=int, help="sliding window size in pixels (implies sliding; default: the "
                   "config's eval.window, i.e. its crop size)")
    p.add_argument("--stride", type=int, help="sliding window stride in pixels (implies sliding; default: two "
                   "thirds of --window, or the config's eval.stride)")
    p.add_argument("--save-probs", action="store_true",
                   help="also write <name>_probs.npy: the (C, H, W) float32 softmax probabilities")
    p.add_argument("--batch", type=int, default=4, help="images of the same size predicted together (default 4; "
                   "lower it when the device runs out of memory on large images)")
    p.add_argument("--uncertainty", choices=["entropy", "variance"], default="entropy",
                   help="what <name>_uncertainty.png shows: the softmax entropy (default; any checkpoint) or the "
                   "PRCL probability head's mean variance. On the demo the entropy finds the errors far better "
                   "(AUROC, docs/usage.md)")
    p.set_defaults(func=cmd_predict)

    p = _one_line_errors(sub.add_parser("splits", help="write or check split files"))
    p.add_argument("action", nargs="?", choices=["make", "check"], help="make: write split files; check: check them")
    p.add_argument("--out", help="splits folder (holds <num_labels>/<seed>/); not needed with --published")
    p.add_argument("--num-labels", type=int, help="labeled images (with --published: default every published count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=["folder", "voc", "cityscapes"], default="folder",
                   help="layout under --root: folder (images/, masks/), voc (VOCdevkit/VOC2012) or cityscapes")
    p.add_argument("--root", help="dataset root, to list ids (make) or check that the files exist (check)")
    p.add_argument("--published", action="store_true",
                   help="check: use the shipped published (U2PL) lists; without --root just list them")
    p.add_argument("--train-list", help="file of train ids (default: all images under --root of a folder dataset)")
    p.add_argument("--valid-list", help="file of valid ids (make: never among the train ids; without "
                   "--train-list they are left out of the folder's images)")
    p.add_argument("--force", action="store_true", help="make: replace existing split files in <out>/<num_labels>/<seed>/")
    p.set_defaults(func=cmd_splits)

    p = _intermixed(_one_line_errors(sub.add_parser(
        "convert-reference", help="convert the authors' release checkpoint (.pth) into a prcl checkpoint",
        description="Write the authors' release checkpoint (ResNet-101 DeepLabV3+, PASCAL VOC, 21 classes, "
                    "output stride 16) as a prcl checkpoint for prcl eval, predict and export: student <- model, "
                    "teacher <- ema, probability head <- uncer_head. Its config is the packaged "
                    "voc_blended.yaml (data.root data/VOCdevkit/VOC2012) with key=value overrides applied, "
                    "e.g. data.root=/data/VOC2012. It holds no training state: prcl train --resume refuses it.")))
    p.add_argument("release", nargs="?", help="the authors' release checkpoint (.pth; required)")
    p.add_argument("--out", help="converted checkpoint to write (required; written atomically)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides stored in the checkpoint, e.g. data.root=/data/VOC2012")
    p.set_defaults(func=cmd_convert_reference)

    p = _one_line_errors(sub.add_parser(
        "export", help="export a checkpoint to ONNX (needs pip install 'prcl[export]')",
        description="Write the checkpoint's model as an ONNX file: input 'image' (N, 3, H, W) float, RGB in [0, 1] "
                    "normalised with the ImageNet mean/std; outputs 'logits' (N, C, H, W) and, for checkpoints with "
                    "a probability head, 'variance' (N, 1, H, W), both at the input size. Batch, height and width "
                    "are dynamic. The file is then checked against PyTorch with onnxruntime (exit 1 on a mismatch)."))
    p.add_argument("--checkpoint", help="checkpoint to export (required)")
    p.add_argument("--format", default="onnx", help="export format (only onnx; the default)")
    p.add_argument("--out", help="file to write (required; written atomically)")
    p.add_argument("--use", choices=["teacher", "student"], default="teacher")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check of the written file")
    p.add_argument("--device", default="cpu", help="device to trace on: cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(func=cmd_export)

    p = _one_line_errors(sub.add_parser("demo", help="train supervised and PRCL on the embedded demo data and compare"))
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for both runs")
    p.set_defaults(func=cmd_demo)

    p = _one_line_errors(sub.add_parser(
        "plot", help="draw a run's curves (losses, lr, mIoU, images/s) into a PNG (needs prcl[plots])",
        description="Read each run folder's metrics.jsonl and draw one PNG: the losses, the lr (and lambda), the "
                    "validation mIoU per evaluation and images/s; several runs are overlaid, labelled by folder."))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (train.out_dir) holding metrics.jsonl")
    p.add_argument("--out", help="PNG to write (default: <RUN_DIR>/curves.png for one run, comparison.png in the "
                   "first run's parent folder for several); written atomically")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"prcl: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prcl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
