"""Key mapping between the authors' release checkpoint and our student / probability head.

The release file is a dict with 'model' and 'ema' (student layout: resnet_conv1.*, resnet_bn1.*,
resnet_layer1..4.*, ASPP.*, project.*, classifier.*, representation.*) and 'uncer_head' (fc1, fc2,
gamma, beta, bn1.*, bn2.*: the same names as our ProbabilityHead). Only the encoder keys differ:
`resnet_<name>` there is `encoder.body.<name>` here (torchvision-layout ResNet, 7x7 stem).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from prcl.errors import UserError

REFERENCE_ENCODER_PREFIX = "resnet_"
ENCODER_PREFIX = "encoder.body."


def _swap_prefix(key: str, old: str, new: str) -> str:
    return new + key.removeprefix(old) if key.startswith(old) else key


def student_state_from_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference 'model'/'ema' state dict -> our Segmenter state dict (keys renamed, tensors shared)."""
    return {_swap_prefix(k, REFERENCE_ENCODER_PREFIX, ENCODER_PREFIX): v for k, v in state.items()}


def reference_state_from_student(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Segmenter state dict -> reference layout (the inverse of `student_state_from_reference`)."""
    return {_swap_prefix(k, ENCODER_PREFIX, REFERENCE_ENCODER_PREFIX): v for k, v in state.items()}


def load_reference_checkpoint(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read the authors' release checkpoint: {'model', 'ema', 'probability_head'} in our key layout.

    Load the results with `segmenter.load_state_dict(result['ema'])` and
    `probability_head.load_state_dict(result['probability_head'])` (strict by default).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"reference checkpoint {path} does not exist; give the path of the authors' .pth file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix
        raise UserError(
            f"reference checkpoint {path} cannot be read with torch.load(weights_only=True) "
            f"({type(error).__name__}); check that the file is complete"
        ) from None
    needed = ("model", "ema", "uncer_head")
    if not isinstance(checkpoint, Mapping) or not all(isinstance(checkpoint.get(k), Mapping) for k in needed):
        raise UserError(
            f"reference checkpoint {path} lacks the entries {list(needed)}; give the authors' release file"
        )
    return {
        "model": student_state_from_reference(checkpoint["model"]),
        "ema": student_state_from_reference(checkpoint["ema"]),
        "probability_head": dict(checkpoint["uncer_head"]),
    }
