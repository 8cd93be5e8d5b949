"""Full training steps (teacher, strong view, student, losses, backward, optimisers, EMA) per setting.

Each setting is a method with its switches (``method:passes[:amp][:compile][:logged|:probe]``, e.g.
``prcl:separate``, ``mean_teacher:joint``, ``prcl:separate:amp:compile``; amp is bf16 where the device
has it, else fp16; compile is ``train.compile``; ``logged`` makes every step a logged one, with the
method's probes; ``probe`` also gives the unlabeled images masks, so the pseudo-label probe runs
too); every setting builds a fresh ``Trainer`` (the
trainer the ``prcl train`` command runs) on a tiny demo run directory and feeds it random batches of
the real size on the device: ResNet-101, ``--crop`` (321), ``--batch`` labeled + ``--batch``
unlabeled images, 21 classes, labels of 3 blocky classes per image. Reported per setting: the
first step (it compiles the PRCL score kernel where torch.compile is used), the median of the
timed steps, images per second (labeled + unlabeled), and peak GPU memory on CUDA. The share of
the contrast is 1 - t(mean_teacher) / t(prcl) for the same passes and precision. ``--interleave``
takes the settings' steps in turn in one process and reports, per prcl setting, the median of the
per-step ratios t(prcl) / t(mean_teacher): the figure least moved by a machine whose speed drifts;
a ``probe`` setting gets the ratio to its ``:logged`` twin (the pseudo-label probe's cost).

    python benchmarks/bench_train_step.py --device cpu --batch 2 --steps 5
    python benchmarks/bench_train_step.py --device cpu --interleave --steps 15 --settings mean_teacher:separate prcl:separate
    python benchmarks/bench_train_step.py --device cuda --batch 8 --steps 20 --amp both
    python benchmarks/bench_train_step.py --device cpu --interleave --steps 15 --settings prcl:separate:logged prcl:separate:probe
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def blocky_masks(size: int, crop: int, generator: torch.Generator, num_classes: int = 21) -> torch.Tensor:
    """(size, crop, crop) int64 masks: 3 of ``num_classes`` classes per image in 4x4 blocks."""
    classes = torch.stack([torch.randperm(num_classes, generator=generator)[:3] for _ in range(size)])
    blocks = torch.randint(0, 3, (size, 4, 4), generator=generator)
    coarse = torch.gather(classes, 1, blocks.reshape(size, -1)).reshape(size, 1, 4, 4).float()
    return F.interpolate(coarse, size=(crop, crop), mode="nearest")[:, 0].long()


def batch(size: int, crop: int, generator: torch.Generator, num_classes: int = 21) -> tuple[dict, dict]:
    """Labeled (image, mask) and unlabeled (image, mask: read by the pseudo-label probe only) batches."""
    images = torch.randn(size, 3, crop, crop, generator=generator)
    masks = blocky_masks(size, crop, generator, num_classes)
    unlabeled = {"image": torch.randn(size, 3, crop, crop, generator=generator),
                 "mask": blocky_masks(size, crop, generator, num_classes)}
    return {"image": images, "mask": masks}, unlabeled


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, core count and the flags its kernels depend on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from prcl.devices import cpu_description

    return cpu_description()


def emit(result: dict, path: str | None) -> None:
    """Print one result as a JSON line, and append it to ``path`` when given."""
    print(json.dumps(result), flush=True)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


def autocast_name(device: torch.device) -> str:
    from prcl.engine.trainer import autocast_dtype

    return str(autocast_dtype(device)).replace("torch.", "")


class Setting:
    """One setting's fresh Trainer and its two alternating random batches; ``step()`` times one step."""

    def __init__(self, setting: str, args: argparse.Namespace, root: Path) -> None:
        from prcl.config import load_config
        from prcl.engine.trainer import Trainer

        method, passes, *rest = setting.split(":")
        unknown = set(rest) - {"amp", "compile", "logged", "probe"}
        if unknown:
            raise SystemExit(f"unknown switch {sorted(unknown)} in setting {setting!r}: "
                             "use amp, compile, logged or probe")
        amp, compiled = "amp" in rest, "compile" in rest
        self.probe = "probe" in rest
        logged = self.probe or "logged" in rest
        out_dir = root / setting.replace(":", "_")
        self.cfg = load_config(args.config, [
            "data.dataset=demo", f"data.root={root / 'data'}", f"data.demo.num_train={4 * args.batch}",
            "data.demo.num_valid=2", "data.demo.num_test=0", f"data.num_labels={args.batch}", "data.split_seed=0",
            f"data.num_classes={args.classes}",
            f"data.crop_size={args.crop}", f"data.batch_size={args.batch}", "data.num_workers=0",
            f"model.encoder={args.encoder}", "model.weights=null", f"method.name={method}",
            f"method.student_passes={passes}", f"prcl.kernel={args.kernel}", f"train.amp={str(amp).lower()}",
            f"train.compile={str(compiled).lower()}",
            f"train.device={args.device}", f"train.out_dir={out_dir}", "train.progress=false",
            # every step logged (with the method's probes), or none among the timed ones
            "train.iterations=1000", f"train.log_every={1 if logged else 100000}",
            *args.set,
        ])
        torch.manual_seed(0)
        self.name, self.method, self.args = setting, method, args
        self.trainer = Trainer(self.cfg)
        self.device = self.trainer.device
        generator = torch.Generator().manual_seed(0)
        self.batches = [batch(args.batch, args.crop, generator, args.classes) for _ in range(2)]
        self.times: list[float] = []

    def step(self) -> float:
        """One training step; its seconds (appended to ``times``)."""
        if len(self.times) == self.args.warmup and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        labeled, unlabeled = self.batches[len(self.times) % 2]
        if not self.probe:  # without masks the unlabeled images have no pseudo-label probe
            unlabeled = {"image": unlabeled["image"]}
        sync()
        started = time.perf_counter()
        record = self.trainer.train_step([(labeled, unlabeled if self.method != "supervised" else None)])
        sync()
        self.times.append(time.perf_counter() - started)
        self.trainer.step += 1
        if record is None:
            raise RuntimeError(f"{self.name}: non-finite step {len(self.times)}")
        return self.times[-1]

    def result(self) -> dict:
        device, args = self.device, self.args
        seconds = statistics.median(self.times[args.warmup:])
        images = args.batch * (1 if self.method == "supervised" else 2)
        return {
            "setting": self.name, "amp_dtype": autocast_name(device) if self.cfg.train.amp else "float32",
            "device": device_name(device),
            "batch": f"{args.batch}+{args.batch}", "crop": args.crop, "first_step_s": round(self.times[0], 3),
            "step_s": round(seconds, 4), "images_per_s": round(images / seconds, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        }


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """--config, --batch, --crop, --encoder, --classes (see :func:`fill_sizes`)."""
    parser.add_argument("--config", help="a config file whose settings the steps take (method and sizes aside), "
                                         "e.g. configs/demo.yaml; its encoder, crop, batch and classes are the "
                                         "defaults of the options below")
    parser.add_argument("--batch", type=int, help="labeled images per step (and as many unlabeled); default 2")
    parser.add_argument("--crop", type=int, help="default 321")
    parser.add_argument("--encoder", help="default resnet101")
    parser.add_argument("--classes", type=int, help="default 21")


def fill_sizes(args: argparse.Namespace) -> None:
    """The sizes left out: from ``--config`` when given, else ResNet-101, crop 321, 2 + 2 images, 21 classes."""
    base = None
    if args.config:
        from prcl.config import load_config

        base = load_config(args.config, [])
    defaults = {"batch": (2, "data.batch_size"), "crop": (321, "data.crop_size"),
                "encoder": ("resnet101", "model.encoder"), "classes": (21, "data.num_classes")}
    for name, (default, key) in defaults.items():
        if getattr(args, name) is None:
            section, field = key.split(".")
            value = getattr(getattr(base, section), field) if base is not None else None
            if name == "classes" and base is not None and value is None:
                value = base.data.demo.num_classes if base.data.dataset == "demo" else None
            setattr(args, name, default if value is None else value)


def run_setting(setting: str, args: argparse.Namespace, root: Path) -> dict:
    """Warm-up and timed steps of one setting on its own."""
    measured = Setting(setting, args, root)
    for _ in range(args.warmup + args.steps):
        measured.step()
    return measured.result()


def run_interleaved(settings: list[str], args: argparse.Namespace, root: Path) -> list[dict]:
    """Every setting's trainer built first, then their steps taken in turn (the order reversed at every
    step), so a change of the machine's speed falls on all settings alike. Each prcl setting also gets
    ``ratio``: the median over timed steps of t(prcl step) / t(mean-teacher step taken beside it)."""
    built = [Setting(setting, args, root) for setting in settings]
    for index in range(args.warmup + args.steps):
        for measured in (built if index % 2 == 0 else built[::-1]):
            measured.step()
    results = [m.result() for m in built]
    by_name = {m.name: m for m in built}
    for measured, result in zip(built, results):
        if ":probe" in measured.name:
            twin = by_name.get(measured.name.replace(":probe", ":logged"))
        elif measured.name.startswith("prcl:"):
            twin = by_name.get(measured.name.replace("prcl:", "mean_teacher:", 1))
        else:
            twin = None
        if twin is not None:
            ratios = [p / t for p, t in zip(measured.times[args.warmup:], twin.times[args.warmup:])]
            result["ratio"] = round(statistics.median(ratios), 3)
            result["ratios"] = [round(r, 3) for r in ratios]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    add_size_options(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kernel", default="auto", choices=["auto", "compiled", "chunked"])
    parser.add_argument("--amp", choices=["off", "on", "both"], default="off")
    parser.add_argument("--settings", nargs="+",
                        default=["mean_teacher:separate", "prcl:separate", "mean_teacher:joint", "prcl:joint"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every setting this many times, in alternating order; report the median")
    parser.add_argument("--interleave", action="store_true",
                        help="build every setting first, then take their steps in turn (one round; the prcl "
                             "settings get the median per-step ratio to mean_teacher)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every setting, e.g. train.channels_last=false")
    parser.add_argument("--json", help="append one JSON line per measurement to this file")
    args = parser.parse_args()
    fill_sizes(args)
    settings = []
    for setting in args.settings:
        if args.amp in ("off", "both"):
            settings.append(setting)
        if args.amp in ("on", "both"):
            settings.append(setting + ":amp")
    measured: dict[str, list[dict]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as root:
        if args.interleave:
            results = run_interleaved(settings, args, Path(root))
        else:
            results = []
            for round_index in range(args.rounds):
                order = settings if round_index % 2 == 0 else settings[::-1]  # no setting always goes first
                results += [run_setting(setting, args, Path(root)) for setting in order]
        for result in results:
            measured[result["setting"]].append(result)
            emit(result, args.json)
    results = []
    for setting, runs in measured.items():
        best = dict(runs[0], step_s=statistics.median(r["step_s"] for r in runs))
        best["images_per_s"] = round(runs[0]["images_per_s"] * runs[0]["step_s"] / best["step_s"], 2)
        best["rounds"] = [r["step_s"] for r in runs]
        results.append(best)
    by_name = {r["setting"]: r for r in results}
    print(f"\n{results[0]['device']}, batch {results[0]['batch']}, crop {args.crop}, "
          f"{'interleaved steps' if args.interleave else f'median of {args.rounds} rounds'}")
    print("| setting | step s | images/s | first step s | peak GPU GiB | contrast share | step s per round |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        twin = by_name.get(r["setting"].replace("prcl:", "mean_teacher:", 1))
        share = f"{1 - twin['step_s'] / r['step_s']:.2f}" if r["setting"].startswith("prcl:") and twin else "-"
        print(f"| {r['setting']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['first_step_s']:.1f} | "
              f"{r['peak_gpu_gib'] if r['peak_gpu_gib'] is not None else '-'} | {share} | "
              f"{', '.join(f'{t:.3f}' for t in r['rounds'])} |")
    for r in results:
        if "ratio" in r:
            twin = "its :logged twin" if ":probe" in r["setting"] else "its mean_teacher twin"
            print(f"{r['setting']} / {twin}, median of {len(r['ratios'])} interleaved steps: "
                  f"{r['ratio']:.3f} (per step: {', '.join(f'{x:.2f}' for x in r['ratios'])})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
