"""Checkpoints: atomic save, safe load (``weights_only``), and the RNG state for exact resumption.

A checkpoint is a dict of tensors, dicts, lists, numbers, strings and None, written with
``torch.save`` and read back with ``torch.load(weights_only=True)`` (no arbitrary pickles).
Writes go through :func:`prcl.io.atomic_write` (a temporary file in the target folder, flushed to
disk, then renamed over the target), so an interrupted write never leaves a half-written checkpoint
in place of a good one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prcl.errors import UserError
from prcl.io import atomic_write


class _KeepWriteError:
    """The stream torch.save writes to, keeping the first OSError of a failed write: torch reports that
    only as a RuntimeError ("[enforce fail at inline_container.cc] unexpected pos")."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.error = stream, None

    def write(self, data: Any) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.stream.flush()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, dicts, lists, numbers, strings, None) to ``path`` atomically.

    A failed write (a full disk) is a :class:`prcl.io.WriteError` naming ``path``; the file there before
    is kept whole.
    """
    with atomic_write(path, "wb") as stream:
        keeper = _KeepWriteError(stream)
        try:
            torch.save(state, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None  # atomic_write turns it into the one-line WriteError
            raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Raises UserError naming the file when it is missing, unreadable, damaged or not a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (check the path, e.g. runs/prcl/checkpoints/last.pt)")
    if path.is_dir():
        raise UserError(f"checkpoint path is a folder, not a file: {path} (name a .pt file inside it)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        reason = " ".join(str(error).split())[:200]
        raise UserError(
            f"{path} is not a prcl checkpoint or is damaged ({type(error).__name__}: {reason}); "
            "use a file written by prcl train, e.g. checkpoints/last.pt"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} is not a prcl checkpoint or is damaged (it holds a {type(state).__name__}, not a dict)"
        )
    return state


# --------------------------------------------------------------------------------------------
# random number generator state
# --------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's ``random``, NumPy's global RNG, torch's CPU RNG and every CUDA device.

    Only plain types and tensors, so ``torch.load(weights_only=True)`` reads it back.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured; parts missing from ``state`` are left as they are.

    CUDA states are restored for the devices present in both the state and this machine.
    """
    if "python" in state:
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "numpy" in state:
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["bit_generator"],
                numpy_state["keys"].cpu().numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), index)
