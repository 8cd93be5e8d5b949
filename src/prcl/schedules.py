"""Learning-rate and contrastive-weight schedules as functions of the step, and the release's epoch.

Two kinds of schedule, chosen by the config:

- continuous (no ``train.epoch_iterations``): progress is ``step / train.iterations``;
- per epoch (``train.epoch_iterations`` set, or derived from ``train.epoch_images`` as the
  release does): lr and lambda change once per epoch, and the schedule spans ``train.epochs``
  epochs (``train.iterations`` may stop the run earlier).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from prcl.errors import UserError

if TYPE_CHECKING:
    from prcl.config import Config, TrainConfig


def due(step: int, every: int, total: int) -> bool:
    """Whether the step ending at count ``step`` (1-based) is a periodic one: a multiple of ``every``
    (0: none), or the run's last step ``total``. One rule for logs (and their probes), checkpoints
    and evaluations (``train.log_every``, ``train.checkpoint_every``, ``train.eval_every``)."""
    return step == total or (every > 0 and step % every == 0)


def release_epoch_iterations(num_labels: int, global_batch: int, epoch_images: int = 2000) -> int:
    """Iterations per epoch as the release's multi-GPU script counts them.

    The release runs ``iter_num = int(epoch_images / batch / world_size / L)`` passes over its
    labeled loader per epoch, L being that loader's batches per process, ``ceil(ceil(num_labels /
    world_size) / batch)``, which equals ``ceil(num_labels / global_batch)``. Both depend on the
    global labeled batch only, so 8 GPUs x 2 and 2 GPUs x 8 give the same epoch. VOC 662 at a
    global batch of 16: L = 42, 2 passes, 84 iterations; VOC 1323: 83; Cityscapes 150 at 48: 40.

    Where the formula gives 0 passes (VOC 2646 and 5291 at 16: the release trains
    nothing there), we run one pass over the labeled set per epoch (our choice, docs/method.md).

    Args:
        num_labels: labeled images.
        global_batch: labeled images per optimiser step over all processes (and micro-batches).
        epoch_images: the release's nominal epoch size (2000).
    """
    if num_labels < 1 or global_batch < 1 or epoch_images < 1:
        raise ValueError(f"need positive counts, got {num_labels=}, {global_batch=}, {epoch_images=}")
    batches = -(-num_labels // global_batch)
    passes = epoch_images // (global_batch * batches)
    return max(passes, 1) * batches


def resolve_schedule(train: TrainConfig, num_labels: int, global_batch: int) -> None:
    """Fill in ``train.epoch_iterations`` (from ``epoch_images``, as the release) and ``train.iterations``
    (from ``epochs``, when null) in place; a ``train.iterations`` past the schedule's end is a UserError."""
    if train.epoch_iterations is None and train.epoch_images is not None:
        train.epoch_iterations = release_epoch_iterations(num_labels, global_batch, train.epoch_images)
    if train.epochs is not None:
        length = train.epochs * train.epoch_iterations
        train.iterations = length if train.iterations is None else train.iterations
        if train.iterations > length:
            raise UserError(f"train.iterations ({train.iterations}) is past the end of the schedule, train.epochs x "
                            f"{train.epoch_iterations} iterations = {length}; set train.iterations=null to run the "
                            "whole schedule, or raise train.epochs")


def schedule_epochs(cfg: Config) -> int | None:
    """Epochs the schedules span (None for a continuous schedule)."""
    train = cfg.train
    if not train.epoch_iterations:
        return None
    return train.epochs if train.epochs is not None else math.ceil(train.iterations / train.epoch_iterations)


def describe_schedule(cfg: Config, world_size: int = 1) -> str:
    """One line for the start of a run, e.g. ``schedule: 200 epochs x 84 iterations = 16800, ...``."""
    train, epochs = cfg.train, schedule_epochs(cfg)
    accumulate = cfg.train.accumulate
    batch = (f"global batch {cfg.data.batch_size * world_size * accumulate} labeled"
             f" ({world_size} process{'es' if world_size > 1 else ''} x {cfg.data.batch_size}"
             f"{f' x {accumulate} micro-batches' if accumulate > 1 else ''})")
    if epochs is None:
        return f"schedule: continuous over {train.iterations} iterations, {batch}"
    length = epochs * train.epoch_iterations
    stop = "" if train.iterations == length else f"; stopping early at iteration {train.iterations}"
    return (f"schedule: {epochs} epochs x {train.epoch_iterations} iterations = {length}, lr and lambda "
            f"stepped per epoch, {batch}{stop}")


def schedule_progress(step: int, cfg: Config) -> float:
    """Training progress in [0, 1] that the lr schedule sees at ``step`` (0-based, before the update).

    Continuous (``step / iterations``) without an epoch length; with one, it moves in whole epochs
    like the release, which steps the lr once per epoch: ``(step // epoch_iterations) / epochs``.
    """
    epochs = schedule_epochs(cfg)
    if epochs is None:
        return min(step / cfg.train.iterations, 1.0)
    return min(step // cfg.train.epoch_iterations / epochs, 1.0)


def poly_lr(base_lr: float, progress: float, power: float = 0.9, min_lr: float = 1e-6) -> float:
    """``base_lr * (1 - progress)^power``, never below ``min_lr``."""
    return max(base_lr * (1.0 - progress) ** power, min_lr)


def ramp_weight(
    epoch: float,
    max_epoch: float = 200.0,
    begin_epoch: float = 0.0,
    max_value: float = 1.0,
    min_value: float = 0.0,
    ramp_mult: float = -5.0,
) -> float:
    """Weight of the contrastive loss over training (docs/method.md, "Weight of the contrast (lambda)").

    ``lambda(e) = min_value + (max_value - min_value) * exp(ramp_mult * ((e - begin) / (max - begin))^2)``.

    With the defaults (ramp_mult = -5, min 0, max 1) this is the release's ramp-down:
    1.0 at epoch 0, 0.7316 at 50, 0.2865 at 100, 0.0601 at 150, 0.0071 at 199. Before
    ``begin_epoch`` the weight is ``max_value``; from ``max_epoch`` on it stays at its end value.
    ``epoch`` may be fractional, so the schedule can follow training progress continuously.
    """
    if max_epoch <= begin_epoch:
        raise ValueError(f"max_epoch ({max_epoch}) must be greater than begin_epoch ({begin_epoch})")
    progress = min(max(epoch - begin_epoch, 0.0) / (max_epoch - begin_epoch), 1.0)
    return min_value + (max_value - min_value) * math.exp(ramp_mult * progress * progress)


def contrast_weight(step: int, cfg: Config) -> float:
    """lambda of the PRCL loss at ``step``: the release ramp in epochs, or a constant.

    The epoch is ``step // train.epoch_iterations`` when there is an epoch length (the release's
    convention; the ramp spans ``prcl.max_epoch`` of them); otherwise the run spans
    ``prcl.max_epoch`` epochs and the epoch follows progress continuously.
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
