"""Where a PRCL step spends the time a mean-teacher step does not: torch.profiler over whole steps.

Builds a mean-teacher and a PRCL trainer as ``bench_train_step.py`` does (ResNet-101, crop 321,
2 + 2 images, random batches), warms both up, then profiles ``--steps`` steps of each, alternating.
Each part is the profiler's inclusive CPU time of a labelled region, the median over the profiled
steps: the teacher + strong view + student passes, the label losses, PRCL's probability head
(forward) and contrast (sampling, score-kernel forward, InfoNCE), the backward of the whole loss,
the optimiser step and the EMA; ``aten::convolution_backward`` and the score kernel's backward are
shown on their own. Two backward parts are timed by module hooks instead (from the backward pre-hook
to the backward hook, both passes summed): the representation head's (PRCL back-propagates it, the
mean teacher never does) and the probability head's. The profiler slows every step down and this
machine's speed drifts by more than PRCL's whole extra: compare the PRCL-only rows, not the totals.

    python benchmarks/profile_train_step.py --device cpu --steps 3
    python benchmarks/profile_train_step.py --device cpu --steps 5 --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from prcl.models.teacher import unwrap_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import Setting, add_size_options, device_name, fill_sizes  # noqa: E402

PARTS = ("STUDENT_PASS", "LABEL_LOSSES", "PROBABILITY_HEAD", "CONTRAST", "BACKWARD", "OPTIMIZER_STEP",
         "AFTER_STEP", "aten::convolution_backward", "autograd::engine::evaluate_function: _GatheredMLSBackward")
HOOKED = ("representation head backward", "probability head backward")


def _time_backward(module: torch.nn.Module, name: str, spent: dict[str, float]) -> None:
    """Add the seconds of every backward through ``module`` to ``spent[name]``."""
    started: list[float] = []

    def before(_module, _grad_output):
        started.append(time.perf_counter())

    def after(_module, _grad_input, _grad_output):
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started.pop()

    module.register_full_backward_pre_hook(before)
    module.register_full_backward_hook(after)


def _label(owner, attribute: str, label: str) -> None:
    """Wrap ``owner.attribute`` so every call is a profiler region named ``label``."""
    function = getattr(owner, attribute)

    @functools.wraps(function)
    def labelled(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    setattr(owner, attribute, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    add_size_options(parser)
    args = parser.parse_args()
    fill_sizes(args)
    settings_args = argparse.Namespace(crop=args.crop, batch=args.batch, encoder=args.encoder, classes=args.classes,
                                       config=args.config, kernel="auto", device=args.device,
                                       set=[], warmup=args.warmup, steps=args.steps)
    backward = torch.autograd.backward

    def labelled_backward(*a, **k):
        with record_function("BACKWARD"):
            return backward(*a, **k)

    torch.autograd.backward = labelled_backward  # what Tensor.backward calls
    with tempfile.TemporaryDirectory() as root:
        built = {name: Setting(name, settings_args, Path(root)) for name in ("mean_teacher:separate", "prcl:separate")}
        for measured in built.values():
            method = measured.trainer.method
            for attribute, label in (("student_pass", "STUDENT_PASS"), ("label_losses", "LABEL_LOSSES"),
                                     ("after_step", "AFTER_STEP")):
                _label(method, attribute, label)
            if hasattr(method, "contrast"):
                _label(method, "contrast", "CONTRAST")
            if "probability_head" in measured.trainer.nets:
                _label(measured.trainer.nets["probability_head"], "forward", "PROBABILITY_HEAD")
            _label(measured.trainer.optimizer, "step", "OPTIMIZER_STEP")
            measured.hooked = {}
            _time_backward(unwrap_model(measured.trainer.nets["student"]).representation,
                           HOOKED[0], measured.hooked)
            if "probability_head" in measured.trainer.nets:
                _time_backward(unwrap_model(measured.trainer.nets["probability_head"]), HOOKED[1], measured.hooked)
        for _ in range(args.warmup):
            for measured in built.values():
                measured.step()
        parts: dict[str, dict[str, list[float]]] = {name: {} for name in built}
        for _ in range(args.steps):
            for name, measured in built.items():
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if measured.device.type == "cuda" else [])
                measured.hooked.clear()
                with profile(activities=activities) as profiler:
                    seconds = measured.step()
                for part, spent in measured.hooked.items():
                    parts[name].setdefault(part, []).append(spent)
                parts[name].setdefault("whole step", []).append(seconds)
                for event in profiler.key_averages():
                    if event.key in PARTS:
                        parts[name].setdefault(event.key, []).append(event.cpu_time_total / 1e6)
    print(f"{device_name(torch.device(args.device))}, {args.encoder}, crop {args.crop}, {args.batch} + {args.batch} "
          f"images{', ' + args.config if args.config else ''}; median of {args.steps} profiled steps, seconds")
    print("| part | mean teacher | PRCL | PRCL - mean teacher |")
    print("|---|---:|---:|---:|")
    mean_teacher, prcl = parts["mean_teacher:separate"], parts["prcl:separate"]
    for part in ("whole step", *PARTS, *HOOKED):
        a = statistics.median(mean_teacher[part]) if part in mean_teacher else 0.0
        b = statistics.median(prcl[part]) if part in prcl else 0.0
        print(f"| {part} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


if __name__ == "__main__":
    main()
