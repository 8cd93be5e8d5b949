"""What `prcl eval` and `prcl predict` do, callable from Python too."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from prcl.config import Config
from prcl.data.datasets import decode_image
from prcl.data.validate import check_output_file, check_output_folder
from prcl.devices import resolve_device
from prcl.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, split: str = "valid", use: str = "teacher",
                        device: str = "cpu") -> dict:
    """mIoU of a checkpoint's network on the config's ``split`` (valid, or test for the demo)."""
    from prcl.engine.data_setup import build_run_data
    from prcl.engine.evaluate import evaluate_model
    from prcl.infer import Predictor

    torch_device = resolve_device(device, "--device")
    data = build_run_data(cfg)
    dataset = data.valid if split == "valid" else data.test
    if dataset is None:
        raise UserError(f"this dataset has no {split} split; use --split valid")
    predictor = Predictor.from_checkpoint(checkpoint, device=torch_device, use=use)
    if predictor.num_classes != cfg.data.num_classes:
        raise UserError(f"{checkpoint} predicts {predictor.num_classes} classes but the config's dataset has "
                        f"{cfg.data.num_classes}; evaluate with the config it was trained with")
    result = evaluate_model(predictor.model, dataset, cfg, torch_device)
    result["class_names"] = data.class_names
    result["checkpoint"] = str(checkpoint)
    result["split"] = split
    result["network"] = use
    return result


def format_table(result: dict) -> str:
    """Per-class IoU table (percent), the mIoU with what was scored, and the reference's mean beside it."""
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
    return "\n".join(lines)


def _all_class_note(result: dict) -> str:
    """Whether the reference's mean over all classes differs from our mean over the classes present."""
    all_classes = result.get("miou_all_classes")
    if all_classes is None:
        absent = [name for name, iou in zip(result["class_names"], result["per_class_iou"]) if iou is None]
        return (f"the reference's mean over all classes is undefined here (NaN): "
                f"{len(absent)} classes never occur ({', '.join(absent[:3])})")
    if abs(all_classes - result["miou"]) < 5e-5:
        return "the reference's mean over all classes is the same"
    return (f"the reference's mean over all classes differs: {100 * all_classes:.2f} (a class only "
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
    from prcl.engine.checkpoint import write_json

    resolve_device(args.device, "--device")
    out = check_output_file(eval_output_path(args.checkpoint, args.out, args.split),
                            "--out" if args.out else "the results file (set --out)")
    cfg = load_config(args.config, args.overrides)
    extra = []
    if args.protocol:
        extra.append(f"eval.protocol={args.protocol}")
    if args.flip:
        extra.append("eval.flip=true")
    if args.scales:
        extra.append(f"eval.scales=[{','.join(str(s) for s in args.scales)}]")
    cfg = apply_overrides(cfg, extra) if extra else cfg
    result = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, use=args.use, device=args.device)
    result["eval"] = cfg.eval.model_dump()
    print(format_table(result))
    write_json(out, result)  # atomic; creates the folder
    print(f"results: {out}")
    return result


def _inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"input not found: {path} (give image files or folders of images)")
    if not files:
        raise UserError(f"no images found in {', '.join(paths)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def output_names(files: list[Path]) -> list[str]:
    """The name each input's outputs start with: its stem (``x.jpg`` -> ``x``), or, where two inputs
    share a stem (``x.jpg`` and ``x.png``), the file name with its extension (``x.jpg``, ``x.png``),
    so no output overwrites another. Inputs whose file names are the same too (``a/x.jpg`` and
    ``b/x.jpg``) are refused: predict them into separate folders."""
    stems: dict[str, set[Path]] = {}
    for path in files:
        stems.setdefault(path.stem, set()).add(path.resolve())
    names = [path.stem if len(stems[path.stem]) == 1 else path.name for path in files]
    seen: dict[str, Path] = {}
    for path, name in zip(files, names):
        if name in seen and seen[name].resolve() != path.resolve():
            raise UserError(f"inputs {seen[name]} and {path} would write the same {name}_mask.png; "
                            "predict them into separate --out folders")
        seen[name] = path
    return names


def predict_files(checkpoint: str | Path, inputs: list[str], out_dir: str | Path, device: str = "cpu") -> list[Path]:
    """For each image: ``<name>_mask.png`` (palette), ``<name>_overlay.png`` and, with a probability
    head, ``<name>_uncertainty.png`` (mean variance) in ``out_dir``. Returns the mask paths.

    ``<name>`` is the input's stem (``photo.jpg`` -> ``photo_mask.png``); inputs sharing a stem keep
    their extension (``x.jpg_mask.png`` and ``x.png_mask.png``), see :func:`output_names`. The device,
    the inputs and the output folder are checked before the checkpoint is loaded; each file is
    written atomically.
    """
    from prcl.engine.checkpoint import atomic_write
    from prcl.infer import Predictor
    from prcl.infer.visualize import heatmap, overlay, palette

    torch_device = resolve_device(device, "--device")
    files = _inputs(inputs)
    names = output_names(files)
    out = check_output_folder(out_dir, "--out")
    predictor = Predictor.from_checkpoint(checkpoint, device=torch_device)
    out.mkdir(parents=True, exist_ok=True)
    flat_palette = palette(256).reshape(-1).tolist()
    written = []
    for path, name in zip(files, names):
        picture = decode_image(path)
        prediction = predictor.predict(picture)
        mask = Image.fromarray(prediction.mask.astype(np.uint8), mode="P")
        mask.putpalette(flat_palette)
        outputs = {f"{name}_mask.png": mask,
                   f"{name}_overlay.png": Image.fromarray(overlay(picture, prediction.mask,
                                                                  num_classes=predictor.num_classes))}
        if prediction.uncertainty is not None:
            outputs[f"{name}_uncertainty.png"] = Image.fromarray(heatmap(prediction.uncertainty))
        for filename, image in outputs.items():
            with atomic_write(out / filename) as handle:
                image.save(handle, format="PNG")
        written.append(out / f"{name}_mask.png")
    return written
