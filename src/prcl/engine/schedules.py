"""Learning-rate and contrastive-weight schedules as functions of training progress."""

from __future__ import annotations

from prcl.config import Config
from prcl.losses import ramp_weight


def schedule_progress(step: int, cfg: Config) -> float:
    """Training progress in [0, 1] that the schedules see at ``step`` (0-based, before the update).

    Continuous (``step / iterations``) by default; with ``train.epoch_iterations`` set, it moves in
    whole epochs like the reference, which steps lr and lambda once per epoch.
    """
    iterations = cfg.train.iterations
    if cfg.train.epoch_iterations:
        epochs = max(1, -(-iterations // cfg.train.epoch_iterations))
        return min(step // cfg.train.epoch_iterations / epochs, 1.0)
    return min(step / iterations, 1.0)


def poly_lr(base_lr: float, progress: float, power: float = 0.9, min_lr: float = 1e-6) -> float:
    """``base_lr * (1 - progress)^power``, never below ``min_lr``."""
    return max(base_lr * (1.0 - progress) ** power, min_lr)


def contrast_weight(step: int, cfg: Config) -> float:
    """lambda of the PRCL loss at ``step``: the reference ramp in epochs, or a constant.

    The epoch is ``step // train.epoch_iterations`` when that is set (the reference's convention);
    otherwise the run spans ``prcl.max_epoch`` epochs and the epoch follows progress continuously.
    """
    p = cfg.prcl
    if p.lambda_schedule == "constant":
        return p.max_value
    if cfg.train.epoch_iterations:
        epoch = float(step // cfg.train.epoch_iterations)
    else:
        epoch = min(step / cfg.train.iterations, 1.0) * p.max_epoch
    return ramp_weight(epoch, max_epoch=p.max_epoch, begin_epoch=p.begin_epoch,
                       max_value=p.max_value, min_value=p.min_value, ramp_mult=p.ramp_mult)
