"""Which torch device a setting names (cpu, cuda, cuda:N or auto, checked before any work), and which CPU this is."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

from prcl.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # what train.device and --device accept

# The flags a CPU figure is reported with: what decides the kernels torch and oneDNN pick.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its flags) from Linux's ``cpuinfo``; elsewhere (no such file) the platform's
    processor name and no flags."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 says flags, Arm features
            flags = frozenset(value.split())
    return model or platform.machine() or "unknown CPU", flags


def cpu_description() -> str:
    """One line for benchmark reports: model, cores this process may use, the flags that pick kernels, and a
    ONEDNN_MAX_CPU_ISA limit when one is set."""
    model, flags = cpu_info()
    cores = usable_cpus()
    present = [flag for flag in REPORTED_FLAGS if flag in flags]
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"CPU {model}, {cores} cores, flags {' '.join(present) or 'none of ' + ' '.join(REPORTED_FLAGS)}"
            + (f", ONEDNN_MAX_CPU_ISA={limit}" if limit else ""))


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
