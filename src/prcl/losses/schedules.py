"""Weight of the contrastive loss over training (docs/method.md)."""

from __future__ import annotations

import math


def ramp_weight(
    epoch: float,
    max_epoch: float = 200.0,
    begin_epoch: float = 0.0,
    max_value: float = 1.0,
    min_value: float = 0.0,
    ramp_mult: float = -5.0,
) -> float:
    """``lambda(e) = min_value + (max_value - min_value) * exp(ramp_mult * ((e - begin) / (max - begin))^2)``.

    With the defaults (ramp_mult = -5, min 0, max 1) this is the reference's ramp-down:
    1.0 at epoch 0, 0.7316 at 50, 0.2865 at 100, 0.0601 at 150, 0.0071 at 199. Before
    ``begin_epoch`` the weight is ``max_value``; from ``max_epoch`` on it stays at its end value.
    ``epoch`` may be fractional, so the schedule can follow training progress continuously.
    """
    if max_epoch <= begin_epoch:
        raise ValueError(f"max_epoch ({max_epoch}) must be greater than begin_epoch ({begin_epoch})")
    progress = min(max(epoch - begin_epoch, 0.0) / (max_epoch - begin_epoch), 1.0)
    return min_value + (max_value - min_value) * math.exp(ramp_mult * progress * progress)
