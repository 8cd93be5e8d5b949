"""Mixed precision: bf16 where the device computes it natively, fp16 + scaler elsewhere; the losses in float32.

(A whole step of every method under bf16 autocast: TestMethodContract in test_methods.py.)
"""

from __future__ import annotations

import torch

from prcl.engine.trainer import autocast_dtype
from prcl.losses import ContrastOptions, PRCLLoss, pseudo_label_loss


def test_bf16_on_cpus_and_recent_gpus_fp16_on_older_gpus(monkeypatch):
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16  # e.g. V100, T4: needs the gradient scaler


def test_losses_and_prototypes_stay_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu = torch.randn(2, 16, 8, 8, generator=g).bfloat16().requires_grad_()
        var = (torch.rand(2, 16, 8, 8, generator=g) * 0.5 + 0.25).bfloat16().requires_grad_()
        labels = torch.randint(0, 3, (2, 8, 8), generator=g)
        prob = torch.softmax(torch.randn(2, 3, 8, 8, generator=g), 1)
        options = ContrastOptions(num_queries=4, num_negatives=8, temperature=0.5, kernel="chunked")
        contrast, details = PRCLLoss(options)(mu, var, labels, labels >= 0, prob, generator=g, return_details=True)
        logits = torch.randn(2, 3, 8, 8, generator=g).bfloat16()
        unsup = pseudo_label_loss(logits, labels, torch.rand(2, 8, 8, generator=g), threshold=0.0)
    assert contrast.dtype == torch.float32 and details["variance_gap_loss"].dtype == torch.float32
    assert unsup.dtype == torch.float32
    contrast.backward()
    assert mu.grad is not None and torch.isfinite(mu.grad.float()).all()

