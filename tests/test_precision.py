"""Mixed precision: bf16 where the device computes it natively, fp16 + scaler elsewhere; the losses in float32."""

from __future__ import annotations

import torch

from prcl.config import load_config
from prcl.engine.trainer import autocast_dtype
from prcl.losses import ContrastOptions, PRCLLoss, pseudo_label_loss
from prcl.methods import StepInput, build_method
from prcl.models import build_segmenter


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


def test_a_whole_prcl_step_under_bf16_autocast_gives_float32_losses():
    cfg = load_config(None, ["data.num_classes=3", "prcl.num_queries=8", "prcl.num_negatives=16",
                             "prcl.kernel=chunked", "method.strong_scale_range=[1.0,1.0]",
                             "method.un_threshold=0.0", "method.weak_threshold=0.0"])
    torch.manual_seed(0)
    method = build_method(cfg)
    nets = method.build_networks(build_segmenter("resnet18", num_classes=3).train())
    g = torch.Generator().manual_seed(0)
    batch = StepInput(labeled_images=torch.randn(2, 3, 64, 64, generator=g),
                      labels=torch.randint(0, 3, (2, 64, 64), generator=g),
                      unlabeled_images=torch.randn(2, 3, 64, 64, generator=g), step=0,
                      generator=torch.Generator().manual_seed(1), probe=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method.train_step(nets, batch)
    for name in ("loss", "sup", "unsup", "prcl"):
        assert losses[name].dtype == torch.float32, name
    losses["loss"].backward()
    assert all(p.grad.dtype == torch.float32 for p in nets["student"].parameters() if p.grad is not None)
