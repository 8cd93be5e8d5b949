"""The training loop shared by every method, from a laptop CPU to many GPUs under torchrun.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step
and per evaluation), ``checkpoints/last.pt`` and ``best.pt`` and, at the end, ``summary.json``.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from prcl.config import Config, config_to_dict, save_config
from prcl.errors import UserError
from prcl.methods import Networks, StepInput, build_method
from prcl.models import ProbabilityHead, build_segmenter, ema_update, make_teacher, unwrap_model
from prcl.models.deeplab import FEATURE_CHANNELS

from . import distributed
from .checkpoint import atomic_write, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, write_json
from .data_setup import build_run_data
from .evaluate import evaluate
from .sampling import mixed_seed, step_loader
from .schedules import contrast_weight, describe_schedule, poly_lr, schedule_progress

CHECKPOINT_FORMAT = "prcl-checkpoint-1"


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


def evaluate_model(model: nn.Module, dataset: Dataset, cfg: Config, device: torch.device,
                   progress: bool = False) -> dict:
    """mIoU of ``model`` on ``dataset`` under the config's evaluation protocol (model left in eval mode)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=1, num_workers=cfg.data.num_workers)
    batches = ((batch["image"], batch["mask"]) for batch in loader)
    e = cfg.eval
    with torch.no_grad():
        return evaluate(lambda x: model(x).logits, batches, cfg.data.num_classes, device, protocol=e.protocol,
                        window=e.window, stride=e.stride, flip=e.flip, scales=tuple(e.scales), progress=progress)


class Trainer:
    """Builds everything a run needs from a ``Config`` and trains it: ``Trainer(cfg).fit()``."""

    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        self.device = distributed.setup(cfg.train.device)
        self.main = distributed.is_main()
        self.out_dir = Path(cfg.train.out_dir).expanduser()
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.method = build_method(cfg)
        self.data = build_run_data(cfg)
        torch.manual_seed(cfg.train.seed)

        student = build_segmenter(cfg.model.encoder, cfg.data.num_classes, cfg.model.output_stride,
                                  weights=cfg.model.weights).to(self.device)
        head = ProbabilityHead(FEATURE_CHANNELS).to(self.device) if self.method.uses_probability_head else None
        if distributed.is_distributed() and self.device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            head = nn.SyncBatchNorm.convert_sync_batchnorm(head) if head is not None else None
        # channels_last: convolutions read NHWC, faster on CPUs (oneDNN) and tensor cores alike.
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        student = student.to(memory_format=self.memory_format)
        teacher = make_teacher(student) if self.method.uses_teacher else None
        if distributed.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            student = DistributedDataParallel(student, device_ids=ids,
                                              find_unused_parameters=not self.method.uses_probability_head)
            head = DistributedDataParallel(head, device_ids=ids) if head is not None else None
        self.nets = Networks(student, teacher, head)

        o = cfg.optim
        sgd = dict(momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
        self.optimizers = {"student": torch.optim.SGD(student.parameters(), lr=o.lr, **sgd)}
        self.base_lr = {"student": o.lr}
        if head is not None:
            self.optimizers["probability_head"] = torch.optim.SGD(head.parameters(), lr=o.uncer_lr, **sgd)
            self.base_lr["probability_head"] = o.uncer_lr
        amp = cfg.train.amp
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.device.type == "cuda")

        self.step = 0
        self.best_miou = -1.0
        self.skipped_steps = 0
        self.train_seconds = 0.0  # time in training steps, summed over resumed sessions
        self.trained_steps = 0
        self._prepare_run_dir(resume)

    # ----------------------------------------------------------------------------------------- state
    def _prepare_run_dir(self, resume: str | None) -> None:
        last = self.checkpoint_dir / "last.pt"
        if resume is not None:
            path = last if resume == "auto" else Path(resume).expanduser()
            if path.is_file():
                self.load_state(load_checkpoint(path, map_location=self.device))
            elif resume != "auto":
                raise UserError(f"checkpoint to resume not found: {path}")
        elif last.is_file():
            raise UserError(f"{self.out_dir} already holds a run; continue it with --resume auto "
                            f"or set train.out_dir to a new folder")
        if self.main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
            self._trim_metrics()
        distributed.barrier()

    def _trim_metrics(self) -> None:
        """Drop metric lines past the resumed step (written by an interrupted run after its checkpoint)."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= self.step]
        with atomic_write(path, "w") as f:
            f.write("".join(line + "\n" for line in kept))

    def state_dict(self) -> dict:
        head = self.nets.probability_head
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_dict(self.cfg),
            "class_names": self.data.class_names,
            "step": self.step,
            "student": unwrap_model(self.nets.student).state_dict(),
            "teacher": self.nets.teacher.state_dict() if self.nets.teacher is not None else None,
            "probability_head": unwrap_model(head).state_dict() if head is not None else None,
            "method": self.method.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "best_miou": self.best_miou,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "trained_steps": self.trained_steps,
            "rng": capture_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError("the checkpoint to resume is not a prcl training checkpoint")
        try:
            unwrap_model(self.nets.student).load_state_dict(state["student"])
            if self.nets.teacher is not None:
                self.nets.teacher.load_state_dict(state["teacher"])
            if self.nets.probability_head is not None:
                unwrap_model(self.nets.probability_head).load_state_dict(state["probability_head"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            self.method.load_state_dict(state.get("method") or {})
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"the checkpoint does not match this config (model.encoder, data.num_classes or "
                            f"method.name differ?): {str(error).splitlines()[0]}") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        self.skipped_steps = int(state["skipped_steps"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.trained_steps = int(state.get("trained_steps", 0))
        restore_rng_state(state["rng"])

    def save(self, name: str) -> None:
        if self.main:
            save_checkpoint(self.checkpoint_dir / name, self.state_dict())

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------------------------------- training
    def _loaders(self):
        cfg, rank, world = self.cfg, distributed.rank(), distributed.world_size()
        pin = self.device.type == "cuda"
        labeled = step_loader(self.data.labeled, cfg.data.batch_size, cfg.train.seed, self.step,
                              cfg.data.num_workers, rank, world, pin)
        unlabeled = None
        if self.method.uses_unlabeled:
            unlabeled = step_loader(self.data.unlabeled, cfg.data.unlabeled_batch_size, cfg.train.seed + 1,
                                    self.step, cfg.data.num_workers, rank, world, pin)
        return labeled, unlabeled

    def _set_lr(self, progress: float) -> float:
        """Poly-decay every optimiser's lr; returns the student's."""
        o = self.cfg.optim
        lrs = {name: poly_lr(self.base_lr[name], progress, o.poly_power, o.min_lr) for name in self.optimizers}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = lrs[name]
        return lrs["student"]

    def _logged(self, step: int) -> bool:
        """Whether the step that ends at count ``step`` (1-based) is written to metrics.jsonl."""
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.iterations

    def train_step(self, labeled: dict, unlabeled: dict | None) -> dict[str, float] | None:
        """One optimisation step; None when the loss or a gradient was not finite (step skipped)."""
        cfg, device = self.cfg, self.device
        progress = schedule_progress(self.step, cfg)
        lr = self._set_lr(progress)
        weight = contrast_weight(self.step, cfg)
        generator = torch.Generator(device).manual_seed(
            mixed_seed(cfg.train.seed, self.step, distributed.rank()))
        batch = StepInput(
            labeled_images=labeled["image"].to(device, non_blocking=True, memory_format=self.memory_format),
            labels=labeled["mask"].to(device, non_blocking=True),
            unlabeled_images=unlabeled["image"].to(device, non_blocking=True, memory_format=self.memory_format)
            if unlabeled is not None else None,
            progress=progress, contrast_weight=weight, generator=generator,
            probe=self._logged(self.step + 1))
        self.nets.student.train()
        if self.nets.probability_head is not None:
            self.nets.probability_head.train()
        amp = torch.autocast(device.type, dtype=self.autocast_dtype) if cfg.train.amp else nullcontext()
        with amp:
            losses = self.method.train_step(self.nets, batch)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        finite = distributed.all_true(bool(torch.isfinite(losses["loss"])), device)
        if finite:
            self.scaler.scale(losses["loss"]).backward()
            for opt in self.optimizers.values():
                self.scaler.unscale_(opt)
            params = [p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]
                      if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            finite = distributed.all_true(bool(torch.isfinite(grad_norm)), device)
        if not finite:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            return None
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        if self.nets.teacher is not None:
            ema_update(self.nets.teacher, self.nets.student, self.step, cfg.method.ema_alpha)
        values = torch.stack([value.detach().float() for value in losses.values()]).tolist()  # one sync
        record = dict(zip(losses, values))
        record.update(lr=lr, contrast_weight=weight, grad_norm=float(grad_norm))
        return record

    def eval_network(self) -> nn.Module:
        """The network that is evaluated and exported: the teacher when the method has one."""
        return self.nets.teacher if self.nets.teacher is not None else unwrap_model(self.nets.student)

    def probability_head_network(self) -> nn.Module | None:
        head = self.nets.probability_head
        return unwrap_model(head) if head is not None else None

    def evaluate(self, dataset: Dataset) -> dict:
        return evaluate_model(self.eval_network(), dataset, self.cfg, self.device)

    def fit(self) -> dict:
        cfg = self.cfg
        total = cfg.train.iterations
        labeled, unlabeled = self._loaders()
        images_per_step = (cfg.data.batch_size + (cfg.data.unlabeled_batch_size if unlabeled is not None else 0)) \
            * distributed.world_size()
        bar = tqdm(total=total, initial=self.step, disable=not (self.main and cfg.train.progress),
                   desc=cfg.method.name, dynamic_ncols=True)
        if self.main and cfg.train.progress:
            bar.write(describe_schedule(cfg, distributed.world_size()))
        consecutive_bad = 0
        last_result: dict | None = None
        while self.step < total:
            started = time.perf_counter()
            record = self.train_step(next(labeled), next(unlabeled) if unlabeled is not None else None)
            self.train_seconds += time.perf_counter() - started
            self.step += 1
            self.trained_steps += 1
            bar.update(1)
            if record is None:
                self.skipped_steps += 1
                consecutive_bad += 1
                self.log({"type": "skipped", "step": self.step, "skipped_steps": self.skipped_steps})
                if consecutive_bad >= cfg.train.max_nonfinite_steps:
                    bar.close()
                    kept = self.checkpoint_dir / "last.pt"
                    raise TrainingDiverged(
                        f"training diverged: {consecutive_bad} non-finite losses in a row at step {self.step}; "
                        f"the last good checkpoint is {kept if kept.is_file() else 'not written yet'}; lower "
                        f"optim.uncer_lr or optim.lr, then continue with --resume auto")
            else:
                consecutive_bad = 0
                speed = images_per_step * self.trained_steps / max(self.train_seconds, 1e-9)
                if self._logged(self.step):
                    self.log({"type": "train", "step": self.step, **record, "images_per_second": speed,
                              "skipped_steps": self.skipped_steps})
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{speed:.1f}")
            evaluate_now = self.step == total or (cfg.train.eval_every and self.step % cfg.train.eval_every == 0)
            if evaluate_now:
                last_result = self.evaluate(self.data.valid)
                self.log({"type": "eval", "split": "valid", "step": self.step, **last_result})
                if last_result["miou"] > self.best_miou:
                    self.best_miou = last_result["miou"]
                    self.save("best.pt")
            if evaluate_now or (cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0):
                self.save("last.pt")
        bar.close()
        if last_result is None:  # resumed a finished run
            last_result = self.evaluate(self.data.valid)
        summary = {
            "method": cfg.method.name,
            "miou": last_result["miou"],
            "per_class_iou": last_result["per_class_iou"],
            "class_names": self.data.class_names,
            "protocol": last_result["protocol"],
            "best_miou": self.best_miou,
            "iterations": self.step,
            "skipped_steps": self.skipped_steps,
            "images_per_second": images_per_step * self.trained_steps / self.train_seconds
            if self.train_seconds else None,
            "train_seconds": self.train_seconds,
        }
        if self.data.test is not None:
            test = self.evaluate(self.data.test)
            summary["test_miou"] = test["miou"]
            summary["test_per_class_iou"] = test["per_class_iou"]
            self.log({"type": "eval", "split": "test", "step": self.step, **test})
        if self.main:
            write_json(self.out_dir / "summary.json", summary)
        return summary
