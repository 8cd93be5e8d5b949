"""`prcl eval`: a checkpoint scored on a split, a per-class table on stdout and the results as JSON."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prcl.commands import require
from prcl.data.validate import check_output_file
from prcl.devices import resolve_device
from prcl.errors import UserError, shown
from prcl.stopping import Stopped

if TYPE_CHECKING:
    from prcl.config import Config


# The keys that describe the network a checkpoint holds: the checkpoint's own config builds it, so an evaluation
# config that says otherwise would be silently ignored. (model.weights, the start of training, does not matter.)
NETWORK_KEYS = ("model.encoder", "model.output_stride", "data.num_classes")


def check_network_keys(cfg: Config, stored: Config, checkpoint: str | Path, overrides: Sequence[str] = (),
                       config_file: str | Path | None = None) -> None:
    """UserError naming the first of ``NETWORK_KEYS`` on which ``cfg`` (the evaluation's config) contradicts
    ``stored`` (the checkpoint's), and where the evaluation's value came from (an override or the config file)."""
    for key in NETWORK_KEYS:
        section, name = key.split(".")
        wanted, held = getattr(getattr(cfg, section), name), getattr(getattr(stored, section), name)
        if wanted == held:
            continue
        given = [o for o in overrides if o.partition("=")[0].strip() == key]
        source = f"override {shown(given[-1])}" if given else f"in {config_file}" if config_file else "in the config"
        fix = "drop the override" if given else f"evaluate with the config it was trained with, or set {key}={held}"
        raise UserError(f"{key} is {wanted} ({source}) but checkpoint {checkpoint} holds a network with {key}={held}: "
                        f"the checkpoint's network is what is evaluated; {fix}")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, split: str = "valid", use: str = "teacher",
                        device: str = "cpu", overrides: Sequence[str] = (),
                        config_file: str | Path | None = None) -> dict:
    """mIoU of a checkpoint's network on the config's ``split`` (valid, or test for the demo). The config must
    agree with the checkpoint's on ``NETWORK_KEYS`` (:func:`check_network_keys`; ``overrides`` and
    ``config_file`` only name where a contradicting value came from)."""
    from prcl.engine.data_setup import build_run_data
    from prcl.engine.evaluate import evaluate_model
    from prcl.infer import Predictor

    torch_device = resolve_device(device, "--device")
    data = build_run_data(cfg)  # the data's own errors (folders, class names) first: they need no checkpoint
    predictor = Predictor.from_checkpoint(checkpoint, device=torch_device, use=use)
    assert predictor.config is not None  # set by from_checkpoint
    check_network_keys(cfg, predictor.config, checkpoint, overrides, config_file)
    dataset = data.valid if split == "valid" else data.test
    if dataset is None:
        raise UserError(f"this dataset has no {split} split; use --split valid")
    result = evaluate_model(predictor.model, dataset, cfg, torch_device, probability_head=predictor.probability_head)
    result["class_names"] = data.class_names
    result["checkpoint"] = str(checkpoint)
    result["split"] = split
    result["network"] = use
    return result


def format_table(result: dict) -> str:
    """Per-class IoU table (percent), the mIoU with what was scored, and the release's mean beside it."""
    names = result["class_names"]
    width = max(12, *(len(n) for n in names)) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}"]
    for name, iou in zip(names, result["per_class_iou"]):
        lines.append(f"{name:<{width}}{'-' if iou is None or math.isnan(iou) else f'{100 * iou:.2f}':>8}")
    scored = ", ".join(str(part) for part in (
        f"protocol {result['protocol']}", f"split {result.get('split', 'valid')}", result.get("network", "teacher"),
        f"{result['images']} images") if part)
    lines.append(f"{'mIoU':<{width}}{100 * result['miou']:>8.2f}   ({scored})")
    lines.append(_all_class_note(result))
    if "uncertainty" in result:
        from prcl.metrics import format_uncertainty

        lines.append(format_uncertainty(result["uncertainty"]))
    return "\n".join(lines)


def _all_class_note(result: dict) -> str:
    """Whether the release's mean over all classes differs from our mean over the classes present."""
    all_classes = result.get("miou_all_classes")
    if all_classes is None:
        absent = [name for name, iou in zip(result["class_names"], result["per_class_iou"]) if iou is None]
        return (f"the release's mean over all classes is undefined here (NaN): "
                f"{len(absent)} classes never occur ({', '.join(absent[:3])})")
    if abs(all_classes - result["miou"]) < 5e-5:
        return "the release's mean over all classes is the same"
    return (f"the release's mean over all classes differs: {100 * all_classes:.2f} (a class only "
            f"predicted, never labeled, counts there as IoU 0)")


def eval_output_path(checkpoint: str | Path, out: str | Path | None, split: str = "valid") -> Path:
    """Where `prcl eval` writes its JSON: ``out``, else ``<checkpoint>.eval-<split>.json`` beside it."""
    return Path(out).expanduser() if out else Path(checkpoint).with_suffix(f".eval-{split}.json")


def run_eval(args) -> dict:
    """`prcl eval`: config + overrides, protocol options from flags, table on stdout, JSON beside.

    The device and the output path are checked before anything is loaded or evaluated; the JSON
    is written atomically.
    """
    from prcl.config import apply_overrides, load_config
    from prcl.io import remove_leftovers, write_json

    resolve_device(args.device, "--device")
    out = check_output_file(eval_output_path(args.checkpoint, args.out, args.split),
                            "--out" if args.out else "the results file (set --out)")
    remove_leftovers(out.parent, out.name)  # what an eval killed while writing left there
    cfg = load_config(args.config, args.overrides)
    extra = []
    if args.protocol:
        extra.append(f"eval.protocol={args.protocol}")
    if args.flip:
        extra.append("eval.flip=true")
    if args.scales:
        extra.append(f"eval.scales=[{','.join(str(s) for s in args.scales)}]")
    cfg = apply_overrides(cfg, extra) if extra else cfg
    try:
        result = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, use=args.use, device=args.device,
                                     overrides=args.overrides, config_file=args.config)
    except Stopped as stop:  # SIGINT / SIGTERM (prcl.stopping): the loader's workers are already stopped
        raise stop.with_detail(f"the evaluation did not finish; nothing was written to {out}") from None
    result["eval"] = cfg.eval.model_dump()
    print(format_table(result))
    write_json(out, result)  # atomic; creates the folder
    print(f"results: {out}")
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    require(args, "eval", {"config": "--config FILE", "checkpoint": "--checkpoint FILE"})
    run_eval(args)
    return 0
