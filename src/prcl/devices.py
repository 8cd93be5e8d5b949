"""Which torch device a setting names: cpu, cuda, cuda:N or auto, checked before any work."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from prcl.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # what train.device and --device accept


def resolve_device(name: str | torch.device, setting: str = "train.device") -> torch.device:
    """``name`` -> the torch.device to use; UserError (one line) if it does not exist here.

    ``auto``: the first CUDA GPU when torch sees one, else the CPU. ``cuda`` / ``cuda:N``: that GPU,
    refused when torch sees no CUDA GPU (or fewer than N + 1). ``setting`` names where the value
    came from in the message: a config key (``train.device``, printed ``train.device=cuda``) or a
    flag (``--device``, printed ``--device cuda``).
    """
    import torch  # here, so that the config (which reads DEVICE_PATTERN) does not import torch

    text = str(name).strip().lower()
    given = f"{setting} {name}" if setting.startswith("-") else f"{setting}={name}"
    if not DEVICE_PATTERN.fullmatch(text):
        raise UserError(f"{given} is not a device; use auto, cpu, cuda or cuda:N")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "check the driver and CUDA_VISIBLE_DEVICES")
        raise UserError(f"{given} but no CUDA GPU is visible to torch ({why}); use cpu or auto")
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"{given} but torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                        f"(cuda:0..cuda:{count - 1}); use one of those, cuda or auto")
    return device
