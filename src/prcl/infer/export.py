"""Export a prcl checkpoint to ONNX (``prcl export``), and check the file against PyTorch.

The exported graph takes ``image``: a normalised float picture batch (N, 3, H, W) (RGB in [0, 1],
minus the ImageNet mean, divided by the ImageNet std, as :class:`prcl.infer.Predictor` does) and
returns ``logits`` (N, C, H, W), upsampled bilinearly (align_corners=True) to the input size as in
evaluation, and, for checkpoints with a probability head, ``variance`` (N, 1, H, W): the head's
variance averaged over its dimensions, upsampled alike. Batch, height and width are dynamic.
The file's metadata (``metadata_props``) holds ``class_colors`` (JSON: one [R, G, B] per class, the
colours ``prcl predict`` draws) and, when the checkpoint names its classes, ``class_names`` (JSON list).

onnx and onnxruntime are optional: ``pip install 'prcl[export]'``.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prcl.errors import UserError
from prcl.infer.predictor import Predictor
from prcl.models.deeplab import without_representation
from prcl.io import atomic_write

MISSING_PACKAGES = "prcl export needs onnx and onnxruntime: pip install 'prcl[export]'"
FORMATS = ("onnx",)
OPSETS = (11, 20)  # dynamic-size bilinear resize needs 11; the TorchScript exporter stops at 20
TOLERANCE = 1e-3  # max abs logits difference, relative to max(1, max |logit|)


def onnx_available() -> bool:
    """True when both onnx and onnxruntime import."""
    try:
        importlib.import_module("onnx")
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


class ExportModule(nn.Module):
    """Segmenter (+ probability head) as image -> logits (and mean variance) at the image's size."""

    def __init__(self, model: nn.Module, probability_head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.probability_head = probability_head

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = image.shape[-2:]
        output = without_representation(self.model)(image)
        logits = F.interpolate(output.logits.float(), size=size, mode="bilinear", align_corners=True)
        if self.probability_head is None:
            return logits
        variance = self.probability_head(output.features).float().mean(dim=1, keepdim=True)
        return logits, F.interpolate(variance, size=size, mode="bilinear", align_corners=True)


def export_module(checkpoint: str | Path, use: str = "teacher", device: str | torch.device = "cpu") -> ExportModule:
    """The checkpoint's model (as :meth:`Predictor.from_checkpoint` loads it), wrapped for export, in eval mode."""
    return _export_module(Predictor.from_checkpoint(checkpoint, device=device, use=use))


def _export_module(predictor: Predictor) -> ExportModule:
    return ExportModule(predictor.model, predictor.probability_head).to(predictor.device).eval()


def class_metadata(predictor: Predictor) -> dict[str, str]:
    """The ONNX metadata on the classes: "class_colors" (JSON [[R, G, B], ...]) and "class_names" (JSON list,
    only when the checkpoint names its classes)."""
    metadata = {"class_colors": json.dumps(predictor.palette.tolist())}
    if predictor.class_names is not None:
        metadata["class_names"] = json.dumps(predictor.class_names, ensure_ascii=False)
    return metadata


def _with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The serialised ONNX model ``data`` with ``metadata`` added to its metadata_props."""
    import onnx

    model = onnx.load_from_string(data)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _logaddexp(g: Any, a: Any, b: Any) -> Any:
    """ONNX for aten::logaddexp (the probability head's log(exp(x) + eps)): max + log(1 + exp(-|a - b|))."""
    high = g.op("Max", a, b)
    gap = g.op("Neg", g.op("Abs", g.op("Sub", a, b)))
    one = g.op("Constant", value_t=torch.tensor(1.0))
    return g.op("Add", high, g.op("Log", g.op("Add", one, g.op("Exp", gap))))


def _onnx_bytes(module: ExportModule, device: torch.device, opset: int) -> bytes:
    outputs = ["logits", "variance"] if module.probability_head is not None else ["logits"]
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ["image", *outputs]}
    buffer = io.BytesIO()
    torch.onnx.register_custom_op_symbolic("aten::logaddexp", _logaddexp, opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            (torch.randn(1, 3, 64, 64, device=device),),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def check_onnx(module: ExportModule, path: str | Path, size: tuple[int, int, int] = (2, 72, 88),
               seed: int = 0) -> dict[str, Any]:
    """Run ``path`` with onnxruntime (CPU) and ``module`` on one random (N, 3, H, W) input; compare.

    Returns {"ok", "max_abs_diff" (logits), "tolerance", "variance_max_abs_diff" (or None), "shape"}.
    """
    import onnxruntime

    batch, height, width = size
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    device = next(module.parameters()).device
    with torch.no_grad():
        expected = module(x.to(device))
    expected = expected if isinstance(expected, tuple) else (expected,)
    expected_np = [e.cpu().numpy() for e in expected]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    logits_diff = float(np.abs(got[0] - expected_np[0]).max())
    tolerance = TOLERANCE * max(1.0, float(np.abs(expected_np[0]).max()))
    variance_diff = float(np.abs(got[1] - expected_np[1]).max()) if len(got) > 1 else None
    ok = got[0].shape == expected_np[0].shape and logits_diff <= tolerance
    if variance_diff is not None:
        ok = ok and got[1].shape == expected_np[1].shape and variance_diff <= TOLERANCE
    return {"ok": ok, "max_abs_diff": logits_diff, "tolerance": tolerance,
            "variance_max_abs_diff": variance_diff, "shape": (batch, 3, height, width)}


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = 17,
    use: str = "teacher",
    device: str | torch.device = "cpu",
    check: bool = True,
) -> dict[str, Any] | None:
    """Export ``checkpoint`` to the ONNX file ``out`` (written atomically); return the check's result.

    With ``check`` (the default) the written file is run with onnxruntime on a random input and
    compared with PyTorch (see :func:`check_onnx`); without it, None is returned. The class names and
    colours go into the file's metadata (:func:`class_metadata`).
    """
    if not onnx_available():
        raise UserError(MISSING_PACKAGES)
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise UserError(f"--opset {opset} is not supported; choose {OPSETS[0]} to {OPSETS[1]} (default 17)")
    predictor = Predictor.from_checkpoint(checkpoint, device=device, use=use)
    module = _export_module(predictor)
    data = _with_metadata(_onnx_bytes(module, next(module.parameters()).device, opset), class_metadata(predictor))
    with atomic_write(out, "wb") as stream:
        stream.write(data)
    return check_onnx(module, out) if check else None


def check_line(result: dict[str, Any]) -> str:
    """One line describing a :func:`check_onnx` result."""
    n, _, h, w = result["shape"]
    line = (f"onnxruntime check on a random {n}x3x{h}x{w} input: logits max abs difference "
            f"{result['max_abs_diff']:.2e} (tolerance {result['tolerance']:.2e})")
    if result["variance_max_abs_diff"] is not None:
        line += f", variance {result['variance_max_abs_diff']:.2e}"
    return f"{line}: {'ok' if result['ok'] else 'MISMATCH'}"
