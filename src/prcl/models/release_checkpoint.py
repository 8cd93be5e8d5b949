"""Key mapping between the authors' release checkpoint and our student / probability head.

The release file is a dict with 'model' and 'ema' (student layout: resnet_conv1.*, resnet_bn1.*,
resnet_layer1..4.*, ASPP.*, project.*, classifier.*, representation.*) and 'uncer_head' (fc1, fc2,
gamma, beta, bn1.*, bn2.*: the same names as our ProbabilityHead). Only the encoder keys differ:
`resnet_<name>` there is `encoder.body.<name>` here (torchvision-layout ResNet, 7x7 stem).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prcl.errors import UserError

if TYPE_CHECKING:
    from prcl.config import Config

RELEASE_ENCODER_PREFIX = "resnet_"
ENCODER_PREFIX = "encoder.body."


def _swap_prefix(key: str, old: str, new: str) -> str:
    return new + key.removeprefix(old) if key.startswith(old) else key


def student_state_from_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release 'model'/'ema' state dict -> our Segmenter state dict (keys renamed, tensors shared)."""
    return {_swap_prefix(k, RELEASE_ENCODER_PREFIX, ENCODER_PREFIX): v for k, v in state.items()}


def release_state_from_student(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Segmenter state dict -> release layout (the inverse of `student_state_from_release`)."""
    return {_swap_prefix(k, ENCODER_PREFIX, RELEASE_ENCODER_PREFIX): v for k, v in state.items()}


def load_release_checkpoint(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read the authors' release checkpoint: {'model', 'ema', 'probability_head'} in our key layout.

    Load the results with `segmenter.load_state_dict(result['ema'])` and
    `probability_head.load_state_dict(result['probability_head'])` (strict by default).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pth"))
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise UserError(f"release checkpoint {path} is a folder{hint}; give the path of the authors' .pth file "
                        "itself, e.g. prcl_voc_662.pth")
    if not path.is_file():
        raise UserError(
            f"release checkpoint {path} does not exist; give the path of the authors' .pth file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix
        raise UserError(
            f"release checkpoint {path} cannot be read with torch.load(weights_only=True) "
            f"({type(error).__name__}); check that the file is complete"
        ) from None
    needed = ("model", "ema", "uncer_head")
    if not isinstance(checkpoint, Mapping) or not all(isinstance(checkpoint.get(k), Mapping) for k in needed):
        raise UserError(
            f"release checkpoint {path} lacks the entries {list(needed)}; give the authors' release file"
        )
    return {
        "model": student_state_from_release(checkpoint["model"]),
        "ema": student_state_from_release(checkpoint["ema"]),
        "probability_head": dict(checkpoint["uncer_head"]),
    }


# ---------------------------------------------------------------- conversion to a prcl checkpoint

# The release: DeepLabV3+ ResNet-101 at output stride 16, PASCAL VOC (21 classes), PRCL.
RELEASE_ENCODER = "resnet101"
RELEASE_NUM_CLASSES = 21
RELEASE_OUTPUT_STRIDE = 16
# Not a training checkpoint (no optimizer, step or RNG state): `prcl train --resume` refuses it
# with one line, since the trainer resumes only its own format (prcl.engine.run_dir.CHECKPOINT_FORMAT).
# This value and the "source" prefix below keep their old word ("reference"): they are written into
# converted files, and files converted before the rename carry them.
CONVERTED_FORMAT = "prcl-converted-reference-1"
_RELEASE_KEYS = {
    "data.dataset": "voc",
    "data.num_classes": RELEASE_NUM_CLASSES,
    "model.encoder": RELEASE_ENCODER,
    "model.output_stride": RELEASE_OUTPUT_STRIDE,
    "method.name": "prcl",
}


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}  # type: ignore[misc]


def _layout_difference(got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between a state dict and the one a module expects (keys, then shapes), else None."""
    got_shapes, want_shapes = _shapes(got), _shapes(expected)
    missing = [k for k in want_shapes if k not in got_shapes]
    extra = [k for k in got_shapes if k not in want_shapes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected tensors missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
        return " and ".join(parts)
    for key, shape in want_shapes.items():
        if got_shapes[key] != shape:
            return f"{key} has shape {got_shapes[key]}, expected {shape}"
    return None


def _release_hint(difference: str) -> str:
    if difference.startswith("classifier.3."):
        return " (a model with another number of classes)"
    return ""


def release_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of the release run: the packaged voc_blended.yaml (ResNet-101, VOC, PRCL, output
    stride 16) without ImageNet encoder weights, then ``key=value`` overrides (e.g. data.root=PATH).
    Overrides that change the architecture, the dataset or the method are refused."""
    from importlib import resources

    from prcl.config import config_to_dict, load_config

    packaged = Path(str(resources.files("prcl") / "configs" / "voc_blended.yaml"))
    forced = [f"{key}={value}" for key, value in _RELEASE_KEYS.items()] + ["model.weights=null"]
    cfg = load_config(packaged, [*forced, *overrides])
    tree = config_to_dict(cfg)
    for key, value in _RELEASE_KEYS.items():
        section, name = key.split(".")
        if tree[section][name] != value:
            raise UserError(f"{key} of a converted release checkpoint is {value!r}, not {tree[section][name]!r}: "
                            f"the authors' release is fixed; leave {key} out of the overrides")
    return cfg


def convert_release_checkpoint(
    path: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """Convert the authors' release checkpoint ``path`` into a prcl checkpoint written atomically to ``out``.

    student <- 'model', teacher <- 'ema', probability_head <- 'uncer_head'; "config" is
    :func:`release_config` (``overrides`` such as ``data.root=/data/VOC2012`` apply to it), "class_names"
    and "class_colors" the VOC names and colour map, "source" names the release file. `prcl eval`,
    `prcl predict` and `Predictor.from_checkpoint` read it; `prcl train --resume` does not (it holds no training state).
    Checks before writing: ``out`` is writable, then the config, then that every tensor loads strictly into
    ``build_segmenter("resnet101", 21, 16)`` and ``ProbabilityHead()``; every failure is one UserError line.
    Returns the written dict.
    """
    from prcl.checkpoint import save_checkpoint
    from prcl.config import config_to_dict
    from prcl.data.classes import voc_color_map
    from prcl.data.datasets import VOC_CLASS_NAMES
    from prcl.data.validate import check_output_file
    from prcl.io import remove_leftovers
    from prcl.models import ProbabilityHead, build_segmenter

    path = Path(path).expanduser()
    out = check_output_file(out, "--out")
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise UserError(f"--out {out} is the release file itself; write the converted checkpoint to another file")
    cfg = release_config(overrides)
    release = load_release_checkpoint(path)
    segmenter = build_segmenter(RELEASE_ENCODER, RELEASE_NUM_CLASSES, RELEASE_OUTPUT_STRIDE, weights=None)
    head = ProbabilityHead()
    expected = {"model": segmenter.state_dict(), "ema": segmenter.state_dict(), "probability_head": head.state_dict()}
    release_names = {"model": "model", "ema": "ema", "probability_head": "uncer_head"}
    for entry, module in (("model", segmenter), ("ema", segmenter), ("probability_head", head)):
        where = f"release checkpoint {path}: its '{release_names[entry]}' entry does not fit"
        target = "ProbabilityHead()" if entry == "probability_head" else (
            f"the ResNet-101 DeepLabV3+ with {RELEASE_NUM_CLASSES} classes (the VOC release)")
        difference = _layout_difference(release[entry], expected[entry])
        if entry != "probability_head" and difference is not None:
            # our key names, shown as the release's
            difference = difference.replace(ENCODER_PREFIX, RELEASE_ENCODER_PREFIX)
        if difference is not None:
            raise UserError(f"{where} {target}: {difference}{_release_hint(difference)}")
        try:
            module.load_state_dict(release[entry])  # strict: dtypes and anything the shapes miss
        except (RuntimeError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{where} {target}: {first}") from None
    state = {
        "format": CONVERTED_FORMAT,
        "source": f"reference release {path}",
        "config": config_to_dict(cfg),
        "class_names": list(VOC_CLASS_NAMES),
        "class_colors": voc_color_map(RELEASE_NUM_CLASSES).tolist(),
        "student": dict(release["model"]),
        "teacher": dict(release["ema"]),
        "probability_head": dict(release["probability_head"]),
    }
    remove_leftovers(out.parent, out.name)  # what a conversion killed while writing left there
    save_checkpoint(out, state)
    return state
