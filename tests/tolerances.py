"""Tolerances for tests that compare two numerically different computations of one quantity.

Two float32 computations of the same value (two memory layouts, batch sizes or kernels, ONNX Runtime
against PyTorch, float32 code against a float64 formula) round differently, and by how much depends on
the CPU: oneDNN, MKL and ATen pick their kernels, and so their summation orders, by instruction set (AMX
and AVX-512 on the Intel Xeon we develop on, other kernels on the AMD EPYC of CI). So such a test bounds
the difference by what the compared computation can round, derived from the quantities it compares, and
says why in one comment; ``torch.equal`` stays where the same code runs twice on the same machine.

Other kernels on an Intel machine: ``ONEDNN_MAX_CPU_ISA=AVX2 python -m pytest ...`` makes oneDNN take its
AVX2 kernels. It reproduces the AMD EPYC's difference in tests/test_train.py::test_channels_last_* (4.1e-5
on encoder.body.conv1.weight, where the AMX kernels give 2e-8).
"""

from __future__ import annotations

import numpy as np
import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: the spacing of float32 numbers just above 1
EPS64 = torch.finfo(torch.float64).eps  # 2.2e-16

# How far two float32 forward passes of one of the test networks (resnet18 to resnet101 with the DeepLabv3+
# decoder, the probability head) may differ, relative to the largest output, when their kernels sum in
# other orders. Each layer sums up to 4608 products (3 x 3 x 512); two orders of such a sum differ by about
# sqrt(4608) eps = 8e-6 of its magnitude (rounding errors add like a random walk), and after each
# normalisation these add up the same way over the layers in a row, about 20 (resnet18) to 100 (resnet101):
# sqrt(100) x 8e-6 = 8e-5 at most. 1e-4 covers that estimate and is 75 times the largest difference
# measured (1.3e-6: ONNX Runtime against PyTorch, resnet18 and resnet101, with oneDNN's AVX2 kernels). A
# wrong weight, layout or normalisation moves the outputs by a sizeable part of their magnitude.
NETWORK_ROUNDING = 1e-4


def summation_bound(magnitude, terms: int, eps: float = EPS32):
    """The largest rounding of a sum of ``terms`` floats whose absolute values add up to ``magnitude``.

    Whatever the order of the additions, the error is at most (terms - 1) u magnitude, u = eps / 2
    (Higham, Accuracy and Stability of Numerical Algorithms, 2002, section 4.2); ``terms x eps x
    magnitude`` is twice that, which covers the rounding of the products summed and of a few elementwise
    steps (scaling, normalising, dividing) before or after the sum. ``magnitude`` may be a tensor (one
    bound per element).
    """
    return terms * eps * magnitude


def network_bound(outputs) -> float:
    """How far another float32 forward pass of the same network and input may be from ``outputs``
    (see NETWORK_ROUNDING)."""
    return NETWORK_ROUNDING * float(_float64(outputs).abs().max())


def probability_bound(logit_bound: float) -> float:
    """How far softmax probabilities may move when the logits move by at most ``logit_bound``.

    dp_i = p_i (dz_i - sum_j p_j dz_j) and |dz_i - sum_j p_j dz_j| <= (1 - p_i) 2 max|dz|, so
    |dp_i| <= 2 p_i (1 - p_i) max|dz| <= max|dz| / 2.
    """
    return logit_bound / 2


def assert_within(actual, expected, bound, what: str = "") -> None:
    """|actual - expected| <= bound elementwise (bound: a number or a tensor/array broadcast to them)."""
    actual_, expected_ = (_float64(x) for x in (actual, expected))
    assert actual_.shape == expected_.shape, f"{what}: shapes {tuple(actual_.shape)} and {tuple(expected_.shape)}"
    error = (actual_ - expected_).abs()
    bound_ = _float64(bound).expand_as(error)
    over = error > bound_
    if over.any():
        worst = int((error - bound_).flatten().argmax())
        raise AssertionError(f"{what}: {int(over.sum())} of {error.numel()} values differ by more than the bound; "
                             f"worst {float(error.flatten()[worst]):.3g} > {float(bound_.flatten()[worst]):.3g} "
                             f"(largest difference {float(error.max()):.3g})")


def _float64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def probability_sum_bound(num_classes: int, views: int = 1) -> float:
    """How far float32 softmax probabilities, averaged over ``views`` maps (windows, flips, scales) and
    resized bilinearly, may sum from 1.

    A probability is off by the rounding of the softmax (C exponentials summed, one division: C + 2
    roundings), of a bilinear resize (4 weighted terms) and of the average (views summed, one division);
    summing C of them adds C more: ``summation_bound(1, 2 C + views + 7)``.
    """
    return summation_bound(1.0, 2 * num_classes + views + 7)
