"""The `prcl` command: train, eval, predict, splits, demo.

Mistakes a user can make end with one line on stderr naming the key or file and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prcl.errors import UserError


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def cmd_train(args: argparse.Namespace) -> int:
    from prcl.config import load_config
    from prcl.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    summary = Trainer(cfg, resume=args.resume).fit()
    print(json.dumps({k: summary[k] for k in ("method", "miou", "iterations", "images_per_second")}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from prcl.infer.commands import run_eval

    run_eval(args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from prcl.infer.commands import predict_files

    written = predict_files(args.checkpoint, args.inputs, args.out, device=args.device)
    print(f"wrote {len(written)} predictions to {args.out}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from prcl.data import FolderDataset, check_splits, make_splits, read_id_list, read_splits, write_splits

    if args.action == "make":
        train = read_id_list(args.train_list) if args.train_list else FolderDataset.list_ids(args.root)
        valid = read_id_list(args.valid_list) if args.valid_list else []
        folder = write_splits(args.out, args.num_labels, args.seed, make_splits(train, valid, args.num_labels, args.seed))
        print(f"wrote {folder}")
    else:
        splits = read_splits(args.out, args.num_labels, args.seed)
        image_path = FolderDataset(args.root, [], with_labels=False).image_path if args.root else None
        check_splits(splits, image_path=image_path)
        print(f"ok: {len(splits.labeled)} labeled, {len(splits.unlabeled)} unlabeled, {len(splits.valid)} valid")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prcl.demo import run_demo

    run_demo(out_dir=Path(args.out), overrides=args.overrides, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prcl", description="PRCL semi-supervised semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a segmenter from a config")
    _add_config(p)
    p.add_argument("--resume", help="'auto' (continue from <out_dir>/checkpoints/last.pt) or a checkpoint path")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint, print a per-class table and write JSON")
    _add_config(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--protocol", choices=["whole", "sliding", "center", "random-crop"])
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", help="multi-scale inference, e.g. 0.75 1.0 1.25")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    p.add_argument("--use", choices=["teacher", "student"], default="teacher")
    p.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="write palette masks, overlays and uncertainty maps for images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("splits", help="write or check split files")
    p.add_argument("action", choices=["make", "check"])
    p.add_argument("--out", required=True, help="splits folder (holds <num_labels>/<seed>/)")
    p.add_argument("--num-labels", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="folder dataset root (images/ and masks/) to list or check ids")
    p.add_argument("--train-list", help="file of train ids (default: all images under --root)")
    p.add_argument("--valid-list", help="file of valid ids")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("demo", help="train supervised and PRCL on the embedded demo data and compare")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for both runs")
    p.set_defaults(func=cmd_demo)
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
