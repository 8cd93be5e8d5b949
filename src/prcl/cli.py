"""The `prcl` command: train, eval, predict, splits, convert-release, export, demo, plot.

This module parses the arguments; what each command does is ``cmd_<name>`` in ``prcl.commands.<module>``,
imported when that command runs. Mistakes a user can make end with one line on stderr naming the key or file
and the fix, exit 2; SIGINT and SIGTERM end a command with one line, exit 130 / 143 (``prcl.stopping``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from prcl.errors import UserError
from prcl.stopping import Stopped, stop_raises


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _seed(text: str) -> int:
    """A ``--seed`` value: an integer in [0, prcl.config.MAX_SEED] (numpy refuses negative seeds)."""
    from prcl.config import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text[:40]!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_SEED}], got {text[:40]}")
    return value


def _scale(text: str) -> float:
    """An ``--scales`` value: a factor in (0, prcl.config.MAX_SCALE], the range of eval.scales."""
    from prcl.config import MAX_SCALE

    try:
        value = float(text)
    except ValueError:
        if "=" in text:  # --scales takes every number after it: an override there is read as one more scale
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a scale; put key=value overrides before "
                                             "--scales (it reads every value after it)") from None
        raise argparse.ArgumentTypeError(f"invalid float value: {text[:40]!r}") from None
    if not 0 < value <= MAX_SCALE:
        raise argparse.ArgumentTypeError(f"each scale must be in (0, {MAX_SCALE:g}], got {text[:40]}")
    return value


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse's errors for this subcommand one line on stderr (no usage block), exit 2."""

    def error(message: str) -> None:
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


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


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``prcl.commands.<module>.<name>(args)``, imported when the command runs (so parsing imports no torch)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"prcl.commands.{module}"), name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = _one_line_errors(argparse.ArgumentParser(prog="prcl",
                                                      description="PRCL semi-supervised semantic segmentation"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = _one_line_errors(sub.add_parser("train", help="train a segmenter from a config"))
    _add_config(p)
    p.add_argument("--resume", help="'auto' (continue from <out_dir>/checkpoints/last.pt) or a checkpoint path")
    p.add_argument("--resume-force", action="store_true",
                   help="resume although config keys changed that do not break the run (e.g. optim.lr)")
    p.set_defaults(func=_command("train", "cmd_train"))

    p = _one_line_errors(sub.add_parser("eval", help="evaluate a checkpoint, print a per-class table and write JSON"))
    _add_config(p, required=False)  # checked in cmd_eval: a missing flag is one line, not a usage block
    p.add_argument("--checkpoint", help="checkpoint to evaluate (required)")
    p.add_argument("--protocol", choices=["whole", "sliding", "center", "random-crop"])
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=_scale, nargs="+", help="multi-scale inference, e.g. 0.75 1.0 1.25 "
                   "(each in (0, 8])")
    p.add_argument("--split", choices=["valid", "test"], default="valid")
    p.add_argument("--use", choices=["teacher", "student"], default="teacher")
    p.add_argument("--out", help="JSON file for the results (default: <checkpoint>.eval-<split>.json beside "
                   "the checkpoint); checked to be writable before evaluating, written atomically")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(func=_command("evaluate", "cmd_eval"))

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
    p.set_defaults(func=_command("predict", "cmd_predict"))

    p = _one_line_errors(sub.add_parser("splits", help="write or check split files"))
    p.add_argument("action", nargs="?", choices=["make", "check"], help="make: write split files; check: check them")
    p.add_argument("--out", help="splits folder (holds <num_labels>/<seed>/); not needed with --published")
    p.add_argument("--num-labels", type=int, help="labeled images (with --published: default every published count)")
    p.add_argument("--seed", type=_seed, default=0, help="split seed, 0..4294967295 (default 0)")
    p.add_argument("--dataset", choices=["folder", "voc", "cityscapes"], default="folder",
                   help="layout under --root: folder (images/, masks/), voc (VOCdevkit/VOC2012) or cityscapes")
    p.add_argument("--root", help="dataset root, to list ids (make) or check that the files exist (check)")
    p.add_argument("--published", action="store_true",
                   help="check: use the shipped published (U2PL) lists; without --root just list them")
    p.add_argument("--train-list", help="file of train ids (default: all images under --root of a folder dataset)")
    p.add_argument("--valid-list", help="file of valid ids (make: never among the train ids; without "
                   "--train-list they are left out of the folder's images)")
    p.add_argument("--force", action="store_true", help="make: replace existing split files in <out>/<num_labels>/<seed>/")
    p.set_defaults(func=_command("splits", "cmd_splits"))

    p = _intermixed(_one_line_errors(sub.add_parser(
        "convert-release", help="convert the authors' release checkpoint (.pth) into a prcl checkpoint",
        description="Write the authors' release checkpoint (ResNet-101 DeepLabV3+, PASCAL VOC, 21 classes, "
                    "output stride 16) as a prcl checkpoint for prcl eval, predict and export: student <- model, "
                    "teacher <- ema, probability head <- uncer_head. Its config is the packaged "
                    "voc_blended.yaml (data.root data/VOCdevkit/VOC2012) with key=value overrides applied, "
                    "e.g. data.root=/data/VOC2012. It holds no training state: prcl train --resume refuses it.")))
    p.add_argument("release", nargs="?", help="the authors' release checkpoint (.pth; required)")
    p.add_argument("--out", help="converted checkpoint to write (required; written atomically)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides stored in the checkpoint, e.g. data.root=/data/VOC2012")
    p.set_defaults(func=_command("convert", "cmd_convert_release"))

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
    p.set_defaults(func=_command("export", "cmd_export"))

    p = _one_line_errors(sub.add_parser("demo", help="train supervised and PRCL on the embedded demo data and compare"))
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=_seed, default=0, help="train.seed of both runs, 0..4294967295 (default 0)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for both runs")
    p.set_defaults(func=_command("demo", "cmd_demo"))

    p = _one_line_errors(sub.add_parser(
        "plot", help="draw a run's curves (losses, lr, mIoU, images/s) into a PNG (needs prcl[plots])",
        description="Read each run folder's metrics.jsonl and draw one PNG: the losses, the lr (and lambda), the "
                    "validation mIoU per evaluation and images/s; several runs are overlaid, labelled by folder."))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (train.out_dir) holding metrics.jsonl")
    p.add_argument("--out", help="PNG to write (default: <RUN_DIR>/curves.png for one run, comparison.png in the "
                   "first run's parent folder for several); written atomically")
    p.set_defaults(func=_command("plot", "cmd_plot"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    received: list[int] = []
    try:
        with stop_raises() as received:  # SIGINT / SIGTERM: Stopped where the command is, so its cleanup runs
            return args.func(args)
    except Stopped as stop:
        print(f"prcl: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("prcl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if received:  # the Stopped was replaced by an error of the cleanup it interrupted
            stop = Stopped(received[-1])
            print(f"prcl: {stop}", file=sys.stderr)
            return stop.exit_code
        if isinstance(error, UserError):
            print(f"prcl: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
