"""The training loop shared by every method, from a laptop CPU to many GPUs under torchrun.

The trainer knows no method: it builds the student, asks the method (``prcl.methods``) for its
networks and optimiser groups, moves them to the device, wraps the trained ones for data
parallelism, and then runs the method's step, the optimiser, and the method's post-step update.
With ``train.accumulate: N`` an optimiser step sums the gradients of N micro-batches, each the
method's step on its own labeled and unlabeled batch with its loss divided by N.

What a run writes, and reads back when it resumes, is kept by ``prcl.engine.run_dir``.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from prcl import distributed
from prcl.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from prcl.config import Config, config_to_dict
from prcl.data.datasets import DataFileError
from prcl.data.validate import validate_dataset_files
from prcl.errors import UserError
from prcl.methods import Networks, StepInput, build_method
from prcl.models import build_segmenter, fetch_weights, unwrap_model
from prcl.schedules import describe_schedule, due, poly_lr, schedule_progress
from prcl.stopping import Stopped, stop_after_step

from .data_setup import build_run_data
from .evaluate import EvaluationStopped, evaluate_model
from .run_dir import CHECKPOINT_FORMAT, RunDir, write_errors
from .sampling import close_loaders, loader_workers, mixed_seed, step_loader
from .tensorboard_log import (PSEUDO_LABEL_TAG, TensorBoardLog, prediction_rows, pseudo_label_examples,
                              pseudo_label_generator, pseudo_label_grid)


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; ``exit_code`` is 128 + the signal number. ``what`` says where it stopped
    and which checkpoint holds it, ``resume`` is the command that continues it; the message is both."""

    def __init__(self, what: str, exit_code: int, resume: str) -> None:
        super().__init__(f"{what}; continue with: {resume}")
        self.what, self.exit_code, self.resume = what, exit_code, resume


STOPPING = "stopping after this step, which is saved first"
"""What the trainer says on stderr when the first stop signal arrives (see prcl.stopping.stop_after_step)."""


def use_deterministic_kernels() -> None:
    """``train.deterministic``: kernels that give the same bits on every run. On the CPU two runs of one config
    then end with identical weights; on GPUs some backward kernels (bilinear upsampling) have no deterministic
    version and warn instead. cuDNN autotuning is off (it may pick other kernels per run)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def kernel_settings() -> tuple[bool, bool, bool]:
    """The process-wide torch settings ``use_deterministic_kernels`` changes: deterministic algorithms, warn only,
    cuDNN autotuning (``restore_kernel_settings`` puts them back; the CUBLAS_WORKSPACE_CONFIG it may set stays, as
    it only takes effect when CUDA starts)."""
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark)


def restore_kernel_settings(settings: tuple[bool, bool, bool]) -> None:
    deterministic, warn_only, benchmark = settings
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type for ``train.amp``: bfloat16 where the device computes it natively (CPUs,
    NVIDIA Ampere and newer), else float16, which needs the gradient scaler (its range is narrow)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on a GPU, the peak allocated GPU memory."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    peak = {"peak_memory_mb": rss_kb / (1024 * 1024 if sys.platform == "darwin" else 1024)}
    if device.type == "cuda":
        peak["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def _mean_record(values: list[dict], device: torch.device) -> dict[str, float | None]:
    """The logged values of a step: each key's mean over the micro-batches that gave a number for it (None where
    none did; a key some micro-batches lack, such as ``prcl_anchors``, is averaged over those that have it).
    ``values``: the method's values per micro-batch, tensors and floats; the tensors are read in one sync."""
    tensors = [(key, value) for record in values for key, value in record.items() if isinstance(value, torch.Tensor)]
    numbers = torch.stack([value.float().to(device) for _, value in tensors]).tolist() if tensors else []
    collected: dict[str, list] = {}
    for record in values:  # the floats first, then the tensors, as one micro-batch's record was always written
        for key, value in record.items():
            if not isinstance(value, torch.Tensor):
                collected.setdefault(key, []).append(value)
    for (key, _), number in zip(tensors, numbers):
        collected.setdefault(key, []).append(number)
    means = {}
    for key, found in collected.items():
        given = [float(number) for number in found if number is not None]
        means[key] = sum(given) / len(given) if given else None
    return means


@dataclass
class _LoopCounters:
    """What the loop counts within one ``fit`` besides the checkpointed state."""

    nonfinite_in_a_row: int = 0
    data_seconds: float = 0.0  # waiting for batches, since the last logged step
    data_steps: int = 0


class Trainer:
    """Builds everything a run needs from a ``Config`` and trains it: ``Trainer(cfg).fit()``."""

    def __init__(self, cfg: Config, resume: str | None = None, resume_force: bool = False) -> None:
        self.cfg = cfg
        # train.deterministic holds for this trainer: fit() puts the process's settings back when it ends, so the next
        # trainer (or whatever the process does next: a notebook, the demo's next run) starts from them
        self._kernel_settings = kernel_settings()
        self.device = distributed.setup(cfg.train.device)
        self.main = distributed.is_main()
        self.run_dir = RunDir(cfg.train.out_dir, self.main)
        # Everything that can be checked without building the run, before any work is done.
        self.run_dir.check_writable()
        self.run_dir.lock()  # an existing folder: before anything is read or written there
        try:
            if cfg.train.deterministic:
                use_deterministic_kernels()
            self._build(cfg, resume, resume_force)
        except BaseException:
            self.run_dir.unlock()  # a Trainer that failed to build holds no folder
            restore_kernel_settings(self._kernel_settings)  # and leaves the process's settings as they were
            raise

    def _build(self, cfg: Config, resume: str | None, resume_force: bool) -> None:
        """Everything else a run needs, checked before its folder is written: the resumed checkpoint, the
        method, the data (every file read once), the networks and the optimiser; then the folder is prepared."""
        resumed = self.run_dir.checkpoint_to_resume(cfg, resume, resume_force)
        self.method = build_method(cfg)
        self.data = build_run_data(cfg)
        # The encoder's weights (a download the first time for "imagenet") before the file check, which writes
        # the run folder's first file; a resumed run takes every weight from its checkpoint instead.
        weights = fetch_weights(cfg.model.encoder, cfg.model.weights) if resumed is None else None
        self._check_data()
        torch.manual_seed(cfg.train.seed)
        # channels_last: convolutions read NHWC, faster on CPUs (oneDNN) and tensor cores alike.
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        student = build_segmenter(cfg.model.encoder, cfg.data.num_classes, cfg.model.output_stride, weights=weights)
        self.nets = self._place(self.method.build_networks(student))
        # The networks the optimiser updates (the teacher is not among them): put in train mode each step.
        self.trained_nets = [net for net in self.nets.values() if any(p.requires_grad for p in net.parameters())]

        o = cfg.optim
        groups = self.method.optimizer_groups({name: unwrap_model(net) for name, net in self.nets.items()})
        for group in groups:
            group["base_lr"] = group["lr"]
        self.optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=o.weight_decay)
        self.autocast_dtype = autocast_dtype(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=cfg.train.amp and self.autocast_dtype == torch.float16)
        unlabeled_batch = cfg.data.unlabeled_batch_size if self.method.uses_unlabeled else 0
        self.images_per_step = (cfg.data.batch_size + unlabeled_batch) * distributed.world_size() * cfg.train.accumulate

        self.step = 0
        self.best_miou = -1.0
        self.skipped_steps = 0
        self.train_seconds = 0.0  # time in training steps, summed over resumed sessions
        self.trained_steps = 0
        # called with the trainer after each step (the demo's remaining-time estimate reads self.step)
        self.step_hooks: list[Callable[[Trainer], None]] = []
        self._pseudo_label_images: torch.Tensor | None = None  # TensorBoard's pseudo-label examples, read once
        self.saved_step: int | None = None  # the step last.pt holds, once this session saved it
        self.counters = _LoopCounters()
        if resumed is not None:
            self.load_state(resumed)
        self.run_dir.prepare(cfg, self.step)
        self.tensorboard = TensorBoardLog(self.run_dir.path / "tensorboard" if self.main and cfg.train.tensorboard
                                          else None, purge_step=self.step + 1 if self.step else None)

    def _place(self, nets: Networks) -> Networks:
        """Every network on the device in the run's memory format, compiled with ``train.compile``; under a
        process group, BatchNorm synchronised over GPUs and each network with trained parameters wrapped in DDP."""
        placed = {}
        for name, net in nets.items():
            net = net.to(self.device, memory_format=self.memory_format)
            if distributed.is_distributed() and self.device.type == "cuda":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            if self.cfg.train.compile:
                net.compile()  # in place: the module and its state_dict keys stay as they are
            if distributed.is_distributed() and any(p.requires_grad for p in net.parameters()):
                net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
            placed[name] = net
        return placed

    def _check_data(self) -> None:
        """Every split the run reads is non-empty and holds at least one batch, and (main process) every image and
        mask decodes, masks match their images' sizes and hold class indices or 255, and the labeled and valid
        masks hold labeled pixels: checked in parallel, remembered per file."""
        d, c = self.data, self.cfg.data
        needed = {"labeled": d.labeled, "valid": d.valid, **({"unlabeled": d.unlabeled} if self.method.uses_unlabeled
                                                              else {})}
        for name, dataset in needed.items():
            if len(dataset) == 0:
                raise UserError(f"the {name} split of data.dataset={self.cfg.data.dataset} is empty; check data.root, "
                                "data.splits and data.num_labels")
        batches = [("labeled", "data.batch_size", c.batch_size, "label more images (data.num_labels)")]
        if self.method.uses_unlabeled:
            batches.append(("unlabeled", "data.unlabeled_batch_size", c.unlabeled_batch_size, "add unlabeled images"))
        for name, key, batch, more in batches:  # a step would load its split's images over and over
            if batch > len(needed[name]):
                raise UserError(f"{key}={batch} is larger than the {name} split ({len(needed[name])} images); set "
                                f"{key}={len(needed[name])} or less, or {more}")
        if self.main:
            validate_dataset_files({"labeled": d.labeled, "valid": d.valid, "test": d.test}, self.cfg.data.num_classes,
                                   self.run_dir.validation_cache, workers=max(4, loader_workers(c.num_workers)),
                                   progress=self.cfg.train.progress and None, need_labels=("labeled", "valid"))
        distributed.barrier()

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resumed run needs; each network under its name ("student", "teacher", ...)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_dict(self.cfg),
            "class_names": self.data.class_names,
            "class_colors": [list(color) for color in self.data.class_colors],
            "step": self.step,
            **{name: unwrap_model(net).state_dict() for name, net in self.nets.items()},
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_miou": self.best_miou,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "trained_steps": self.trained_steps,
            "rng": capture_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        """Restore a checkpoint whose format and config ``RunDir.checkpoint_to_resume`` already checked."""
        try:
            for name, net in self.nets.items():
                unwrap_model(net).load_state_dict(state[name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state.get("method") or {})
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as error:
            raise UserError(f"the checkpoint does not match this config (model.encoder, data.num_classes or "
                            f"method.name differ?): {str(error).splitlines()[0]}") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        best = self.run_dir.best_score()  # a best.pt written after the evaluation that followed last.pt
        if best is not None:
            self.best_miou = max(self.best_miou, best)
        self.skipped_steps = int(state["skipped_steps"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.trained_steps = int(state.get("trained_steps", 0))
        restore_rng_state(state["rng"])

    def save(self, name: str) -> None:
        """``checkpoints/<name>`` (main process): the whole state, written atomically."""
        if self.main:
            path = self.run_dir.checkpoints / name
            with write_errors(path):
                save_checkpoint(path, self.state_dict())
        if name == "last.pt":
            self.saved_step = self.step

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl (main process), and its numbers in TensorBoard."""
        if self.main:
            self.run_dir.append(record)
            self.tensorboard.record(record)

    # -------------------------------------------------------------------------------------- training
    def _loaders(self):
        """The labeled and (methods that use them) unlabeled step loaders from the current step; close both. A loader
        step is one micro-batch, so the stream of optimiser step s starts at loader step s x ``train.accumulate``."""
        cfg, rank, world = self.cfg, distributed.rank(), distributed.world_size()
        pin, start = self.device.type == "cuda", self.step * cfg.train.accumulate
        labeled = step_loader(self.data.labeled, cfg.data.batch_size, cfg.train.seed, start,
                              cfg.data.num_workers, rank, world, pin)
        unlabeled = None
        if self.method.uses_unlabeled:
            try:
                unlabeled = step_loader(self.data.unlabeled, cfg.data.unlabeled_batch_size, cfg.train.seed + 1,
                                        start, cfg.data.num_workers, rank, world, pin)
            except BaseException:  # a stop signal while its workers start: none of the first loader's left
                labeled.close()
                raise
        return labeled, unlabeled

    def _next_batches(self, labeled, unlabeled) -> list[tuple[dict, dict | None]]:
        """The next optimiser step's ``train.accumulate`` micro-batches, each a (labeled, unlabeled or None) pair."""
        return [(next(labeled), next(unlabeled) if unlabeled is not None else None)
                for _ in range(self.cfg.train.accumulate)]

    def _set_lr(self, progress: float) -> float:
        """Poly-decay every optimiser group's lr from its base; returns the first group's (the student's)."""
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(group["base_lr"], progress, o.poly_power, o.min_lr)
        return self.optimizer.param_groups[0]["lr"]

    def _logged(self, step: int) -> bool:
        """Whether the step that ends at count ``step`` (1-based) is written to metrics.jsonl."""
        return due(step, self.cfg.train.log_every, self.cfg.train.iterations)

    def train_step(self, batches: list[tuple[dict, dict | None]]) -> dict[str, float | None] | None:
        """One optimiser step over its micro-batches ``batches`` (``train.accumulate`` (labeled, unlabeled or None)
        pairs from the loaders; one pair without accumulation): the gradients of every micro-batch's loss / N add
        up to those of their mean, then one optimiser step (and one gradient-scaler step). Returns the logged
        values, each the mean over the micro-batches (``_mean_record``); None when a loss or the summed gradient
        was not finite on some process (the step is skipped, the weights unchanged)."""
        lr = self._set_lr(schedule_progress(self.step, self.cfg))
        for net in self.trained_nets:
            net.train()
        self.optimizer.zero_grad(set_to_none=True)
        values = []
        for micro, (labeled, unlabeled) in enumerate(batches):
            with self._gradient_sync(last=micro == len(batches) - 1):
                values.append(self._micro_step(self._step_input(labeled, unlabeled, micro, len(batches)),
                                               len(batches)))
            if values[-1] is None:
                self.optimizer.zero_grad(set_to_none=True)
                return None
        grad_norm = self._gradient_norm()
        if grad_norm is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # unscale_ ran: a float16 scaler lowers its scale (no-op when disabled)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(self.nets, self.step)
        return {**_mean_record(values, self.device), "lr": lr, "grad_norm": grad_norm}

    def _step_input(self, labeled: dict, unlabeled: dict | None, micro: int, count: int) -> StepInput:
        """Micro-batch ``micro`` of ``count`` in this step, on the device. The method's own sampling is seeded by
        the micro-batch's loader step (step x count + micro: the step itself without accumulation) and the rank;
        every micro-batch of a logged step is probed."""
        cfg, device = self.cfg, self.device
        probe = self._logged(self.step + 1)
        generator = torch.Generator(device).manual_seed(
            mixed_seed(cfg.train.seed, self.step * count + micro, distributed.rank()))
        return StepInput(
            labeled_images=labeled["image"].to(device, non_blocking=True, memory_format=self.memory_format),
            labels=labeled["mask"].to(device, non_blocking=True),
            unlabeled_images=unlabeled["image"].to(device, non_blocking=True, memory_format=self.memory_format)
            if unlabeled is not None else None,
            step=self.step, generator=generator, probe=probe,
            unlabeled_masks=unlabeled["mask"].to(device, non_blocking=True)  # read by the probe only
            if probe and unlabeled is not None and "mask" in unlabeled else None)

    def _gradient_sync(self, last: bool):
        """Under DDP the gradients are all-reduced in the backward of the step's last micro-batch only; before
        it, each process sums its own (``no_sync`` around forward and backward). Other collectives (SyncBatchNorm,
        the prototypes' statistics) run in every micro-batch."""
        stack = ExitStack()
        if not last:
            for net in self.trained_nets:
                if isinstance(net, DistributedDataParallel):
                    stack.enter_context(net.no_sync())
        return stack

    def _micro_step(self, batch: StepInput, count: int) -> dict | None:
        """The method's step on one micro-batch and the backward of its loss / ``count``, the gradients added to
        those already there. Returns the method's values detached, or None (no backward) when the loss is not
        finite on some process: the step ends there, its later micro-batches are not run."""
        amp = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.cfg.train.amp else nullcontext()
        with amp:
            losses = self.method.train_step(self.nets, batch)
        if not distributed.all_true(bool(torch.isfinite(losses["loss"])), self.device):
            return None
        self.scaler.scale(losses["loss"] / count).backward()
        return {key: value.detach() if isinstance(value, torch.Tensor) else value for key, value in losses.items()}

    def _gradient_norm(self) -> float | None:
        """The L2 norm of all trained parameters' gradients after AMP unscaling (nothing is clipped); None when it
        is not finite on some process."""
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        return float(grad_norm) if distributed.all_true(bool(torch.isfinite(grad_norm)), self.device) else None

    def eval_network(self) -> nn.Module:
        """The network that is evaluated and saved for inference (the method decides: teacher or student)."""
        return self.method.eval_network(self.nets)

    def probability_head_network(self) -> nn.Module | None:
        head = self.nets.get("probability_head")
        return unwrap_model(head) if head is not None else None

    def evaluate(self, dataset: Dataset, signals: list[int] | None = None) -> dict:
        """mIoU of the evaluated network; with a probability head, its uncertainty measures too. With the
        ``signals`` list of ``fit`` (one process only) a stop signal abandons it between two images:
        EvaluationStopped."""
        stop = (lambda: bool(signals)) if signals is not None and not distributed.is_distributed() else None
        return evaluate_model(self.eval_network(), dataset, self.cfg, self.device,
                              probability_head=self.probability_head_network(), stop=stop)

    def _train_loop(self, labeled, unlabeled, bar, signals: list[int]) -> dict | None:
        """Steps until ``train.iterations``. After each step its log line, then on schedule (``due``) a checkpoint
        and an evaluation; a stop signal ends the run after a checkpoint (one during an evaluation abandons it:
        EvaluationStopped, or, under torchrun, stops after it). Returns the last validation result."""
        t, total = self.cfg.train, self.cfg.train.iterations
        self.counters = _LoopCounters()
        last_result: dict | None = None
        while self.step < total:
            started = time.perf_counter()
            batches = self._next_batches(labeled, unlabeled)
            loaded = time.perf_counter()
            record = self.train_step(batches)
            self._count_step(time.perf_counter() - started, loaded - started)
            bar.update(1)
            for hook in self.step_hooks:
                hook(self)
            if record is None:
                self._skip_step(labeled_pixels=all(bool((lab["mask"] >= 0).any()) for lab, _ in batches))
            else:
                self._log_step(record, bar)
            evaluate_now = due(self.step, t.eval_every, total)
            stop = self._stop_requested(signals)
            if evaluate_now or stop or due(self.step, t.checkpoint_every, total):
                self.save("last.pt")  # before an evaluation, which could fail or be stopped
            if evaluate_now and not stop:
                last_result = self._evaluate_and_keep_best(signals)
                stop = self._stop_requested(signals)  # one that came as it ended: no further step
            if stop:
                raise self._interrupted(stop)
        return last_result

    def _count_step(self, seconds: float, data_seconds: float) -> None:
        """Count a finished step, trained or skipped: ``seconds`` in all, ``data_seconds`` of them waiting for data."""
        self.train_seconds += seconds
        self.counters.data_seconds += data_seconds
        self.counters.data_steps += 1
        self.step += 1
        self.trained_steps += 1

    def _skip_step(self, labeled_pixels: bool = True) -> None:
        """A step whose loss or gradient was not finite: logged as skipped; too many in a row stop the run.
        ``labeled_pixels`` False: its labeled batch held no labeled pixel (the supervised loss is then 0 / 0)."""
        self.skipped_steps += 1
        self.counters.nonfinite_in_a_row += 1
        self.log({"type": "skipped", "step": self.step, "skipped_steps": self.skipped_steps,
                  "reason": "non-finite loss" if labeled_pixels else "no labeled pixel"})
        in_a_row = self.counters.nonfinite_in_a_row
        if in_a_row >= self.cfg.train.max_nonfinite_steps:
            kept = self.run_dir.last_checkpoint
            if not labeled_pixels:
                raise TrainingDiverged(
                    f"training stopped: {in_a_row} steps in a row skipped at step {self.step}, the last because its "
                    f"labeled batch held no labeled pixel (every mask value 255 = ignore); give the labeled images "
                    f"masks with class indices (see data.root and the labeled split), or raise data.batch_size")
            raise TrainingDiverged(
                f"training diverged: {in_a_row} non-finite losses in a row at step {self.step}; "
                f"the last good checkpoint is {kept if kept.is_file() else 'not written yet'}; lower "
                f"optim.uncer_lr or optim.lr, then continue with --resume auto")

    def _log_step(self, record: dict, bar) -> None:
        """A trained step: its line in metrics.jsonl when ``train.log_every`` says so, and the progress bar."""
        self.counters.nonfinite_in_a_row = 0
        speed = self.images_per_step * self.trained_steps / max(self.train_seconds, 1e-9)
        if self._logged(self.step):
            c = self.counters
            self.log({"type": "train", "step": self.step, **record, "images_per_second": speed,
                      "data_seconds": c.data_seconds / c.data_steps, **peak_memory_mb(self.device),
                      "skipped_steps": self.skipped_steps})
            c.data_seconds, c.data_steps = 0.0, 0
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{speed:.1f}")

    def _stop_requested(self, signals: list[int]) -> int:
        """The signal that asks this run to stop (0: none); under torchrun every rank stops at the same step."""
        received = signals[0] if signals else 0
        if distributed.is_distributed():
            value = torch.tensor([received], device=self.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
            received = int(value.item())
        return received

    def _resume_command(self) -> str:
        return f"prcl train -c {self.run_dir.config_file} --resume auto"

    def _stopped_by_data(self, error: DataFileError, first_step: int) -> DataFileError:
        """A data file failed mid-run: the steps trained since the last checkpoint are saved in last.pt (as on a
        signal), and the error's one line says where the run stopped and how to continue once the file is fixed."""
        if self.step > (self.saved_step if self.saved_step is not None else first_step):
            self.save("last.pt")
        if self.step == first_step:
            return DataFileError(f"{error}; no step was trained in this run yet, so nothing is lost",
                                 reason=error.reason)
        return DataFileError(
            f"{error}; stopped at step {self.step}, saved in {self.run_dir.last_checkpoint}; once the file is fixed, "
            f"continue with: {self._resume_command()}", reason=error.reason)

    def _interrupted(self, signal_number: int, during: str = "") -> TrainingInterrupted:
        """The error that ends a run stopped by a signal after saving its step: where its checkpoint is and how to
        continue. ``during``: what the signal abandoned, e.g. "the evaluation"."""
        name, last = signal.Signals(signal_number).name, self.run_dir.last_checkpoint
        during = f" during {during}" if during else ""
        if self.step >= self.cfg.train.iterations:
            what = (f"stopped by {name} after the last step ({self.step}){during}; checkpoint {last}; the "
                    f"final evaluation and summary.json are left (resuming trains no more steps)")
        else:
            what = f"stopped by {name} at step {self.step}{during}; checkpoint {last}"
        return TrainingInterrupted(what, 128 + signal_number, self._resume_command())

    def _stopped_at_once(self, signal_number: int) -> TrainingInterrupted:
        """The error that ends a run stopped by a second signal, wherever it was: what the checkpoint holds."""
        last, saved = self.run_dir.last_checkpoint, self.saved_step
        if saved is not None:
            kept = f"checkpoint {last} holds step {saved}" + ("; the steps after it are lost" if saved < self.step
                                                               else "")
        else:
            kept = f"checkpoint {last} is as before this session" if last.is_file() else "no checkpoint was saved"
        return TrainingInterrupted(f"stopped at once by a second {signal.Signals(signal_number).name} after step "
                                   f"{self.step}; {kept}", 128 + signal_number, self._resume_command())

    def _evaluate_and_keep_best(self, signals: list[int] | None = None) -> dict:
        """Evaluate on the validation split and log it (with TensorBoard's pictures); a new best mIoU saves
        best.pt and best.json. Returns the result. A stop signal abandons it: EvaluationStopped."""
        result = self.evaluate(self.data.valid, signals)
        self.log({"type": "eval", "split": "valid", "step": self.step, **result})
        if self.tensorboard.enabled():  # the main process only
            self.tensorboard.record_images("valid/predictions", self.step, prediction_rows(
                unwrap_model(self.eval_network()), self.data.valid, self.cfg, self.device,
                colors=self.data.class_colors))
            self._record_pseudo_labels()
        if result["miou"] is not None and result["miou"] > self.best_miou:
            self.best_miou = result["miou"]
            self.save("best.pt")
            self.run_dir.write_best_score(self.step, self.best_miou)
        return result

    def _record_pseudo_labels(self) -> None:
        """TensorBoard's picture of the method's pseudo-labels on a fixed few unlabeled images (none for a method
        without them). Its random draws come from its own generators and the global random state is restored,
        so a run trains the same with the pictures as without them."""
        if not self.method.uses_unlabeled:
            return
        if self._pseudo_label_images is None:  # the same fixed images at every evaluation: read them once
            self._pseudo_label_images = pseudo_label_examples(self.data.unlabeled, self.cfg.train.seed).to(self.device)
        images = self._pseudo_label_images
        generator = pseudo_label_generator(self.cfg.train.seed, self.device)
        on_accelerator = self.device.type != "cpu"
        with torch.random.fork_rng(devices=[self.device] if on_accelerator else [],
                                   device_type=self.device.type if on_accelerator else None):
            pictures = self.method.pseudo_label_pictures(self.nets, images, generator)
        if pictures is not None:
            self.tensorboard.record_image(PSEUDO_LABEL_TAG, self.step,
                                          pseudo_label_grid(pictures, self.cfg.data.num_classes,
                                                            colors=self.data.class_colors))

    def fit(self) -> dict:
        """Train to ``train.iterations`` (from the resumed step), then evaluate and write the summary.

        SIGINT and SIGTERM (when ``fit`` runs in the main thread, as in ``prcl train`` or a notebook): the first
        one lets the current step finish and saves it, or abandons an evaluation (last.pt was saved before it),
        and ends with TrainingInterrupted, which says how to continue; a second one stops at once (the steps
        since the last checkpoint are lost) with TrainingInterrupted too. The loaders' worker processes are
        stopped before ``fit`` returns or raises."""
        signals: list[int] = []
        try:
            with stop_after_step(STOPPING if self.main else None) as signals:
                try:
                    return self._fit(signals)
                except EvaluationStopped:  # passed a stop only in one process, where signals then holds one
                    raise self._interrupted(signals[0], during="the evaluation") from None
        except Stopped as stop:
            raise self._stopped_at_once(stop.signal_number) from None
        except Exception:
            if len(signals) > 1:  # a second signal's Stopped, replaced by an error of what it interrupted
                raise self._stopped_at_once(signals[1]) from None
            raise
        finally:
            self.tensorboard.close()  # flushed, after an interruption or an error too
            self.run_dir.unlock()  # the folder is free for the next training
            restore_kernel_settings(self._kernel_settings)

    def _fit(self, signals: list[int]) -> dict:
        last_result = self._train(signals)
        if last_result is None:  # resumed a finished run
            last_result = self.evaluate(self.data.valid, signals)
        summary = self._summary(last_result)
        if self.data.test is not None:
            summary.update(self._test(signals))
        self.run_dir.finish(summary)
        return summary

    def _train(self, signals: list[int]) -> dict | None:
        """The training steps, from opening the loaders to stopping their workers (also on an error or a stop)."""
        cfg = self.cfg
        bar = tqdm(total=cfg.train.iterations, initial=self.step, disable=not (self.main and cfg.train.progress),
                   desc=cfg.method.name, dynamic_ncols=True)
        if self.main and cfg.train.progress:
            bar.write(describe_schedule(cfg, distributed.world_size()))
        first_step = self.step
        labeled = unlabeled = None
        try:
            labeled, unlabeled = self._loaders()
            return self._train_loop(labeled, unlabeled, bar, signals)
        except DataFileError as error:  # a corrupt image met mid-run (the unlabeled split is not pre-checked)
            raise self._stopped_by_data(error, first_step) from None
        finally:
            bar.close()
            close_loaders(labeled, unlabeled)  # also the workers an error's traceback still holds

    def _summary(self, last_result: dict) -> dict:
        """summary.json's validation figures and the run's counts."""
        summary = {
            "method": self.cfg.method.name,
            "miou": last_result["miou"],
            "per_class_iou": last_result["per_class_iou"],
            "class_names": self.data.class_names,
            "protocol": last_result["protocol"],
            "best_miou": self.best_miou,
            "iterations": self.step,
            "skipped_steps": self.skipped_steps,
            "images_per_second": self.images_per_step * self.trained_steps / self.train_seconds
            if self.train_seconds else None,
            "train_seconds": self.train_seconds,
        }
        if "uncertainty" in last_result:
            summary["uncertainty"] = last_result["uncertainty"]
        return summary

    def _test(self, signals: list[int] | None = None) -> dict:
        """Evaluate on the test split and log it; returns summary.json's test figures."""
        test = self.evaluate(self.data.test, signals)
        figures = {"test_miou": test["miou"], "test_per_class_iou": test["per_class_iou"]}
        if "uncertainty" in test:
            figures["test_uncertainty"] = test["uncertainty"]
        self.log({"type": "eval", "split": "test", "step": self.step, **test})  # replaces a line a resume re-evaluates
        return figures
