"""`prcl demo`: supervised, mean teacher and PRCL on the embedded demo data, same labels and schedule.

One run per registered method (``prcl.methods.METHODS``), each from ``configs/demo.yaml``
(EfficientNet-Lite0 ImageNet weights from an installed package, generated texture mosaics), differing
only in ``method.name``: ``supervised`` (the labeled images), ``mean_teacher`` (+ the unlabeled images
through the teacher's pseudo-labels on a strong view) and ``prcl`` (+ the probabilistic contrast).
Settings were chosen on the valid split; the runs are compared on the held-out test split, PRCL against
the two baselines. Writes ``<out>/report.json`` and ``<out>/figure.png`` beside the run directories.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from prcl.config import Config, load_config
from prcl.data import IMAGENET_MEAN, IMAGENET_STD
from prcl.engine.trainer import Trainer
from prcl.io import write_json
from prcl.methods import METHODS as REGISTRY
from prcl.metrics import format_uncertainty

METHODS = tuple(REGISTRY)  # every registered method, in the registry's order
TITLES = {"supervised": "supervised", "mean_teacher": "mean teacher", "prcl": "PRCL"}  # others: their name
FIGURE_ROWS = 4
# A step's cost relative to the mean teacher's at the demo's size (2-core Intel Xeon, docs/benchmarks.md): the
# weights of the remaining-time estimate, which takes its speed from the steps done; other methods count 1.
STEP_COST = {"supervised": 0.45, "mean_teacher": 1.0, "prcl": 1.45}
ESTIMATE_EVERY = 40  # steps between two remaining-time lines, in each run


class RemainingTime:
    """The demo's remaining time: the steps left in every run, each weighted by its method's :data:`STEP_COST`, at
    the seconds per weighted step this invocation has taken so far (its evaluations and set-up included).

    ``runs``: (method, iterations) in training order. :meth:`start` a run with the step it resumes from, call the
    object with its trainer after each step (a ``Trainer.step_hooks`` entry); :meth:`line` says where the demo is.
    A run not started yet counts from step 0 (one that resumes is then shorter than estimated).
    """

    def __init__(self, runs: list[tuple[str, int]], clock: Callable[[], float] = time.perf_counter) -> None:
        self.runs, self.clock = runs, clock
        self.totals = dict(runs)
        self.started = clock()
        self.position = {method: 0 for method, _ in runs}  # the step each run is at
        self.first = dict(self.position)  # the step each run started from in this invocation
        self.current: str | None = None

    def start(self, method: str, step: int) -> None:
        self.current = method
        self.first[method] = self.position[method] = step

    def __call__(self, trainer: Any) -> None:
        self.position[self.current] = trainer.step
        if trainer.step % ESTIMATE_EVERY == 0 and trainer.step < self.totals[self.current]:
            tqdm.write(self.line())

    def _weighted(self, steps: dict[str, int]) -> float:
        return sum(STEP_COST.get(method, 1.0) * steps[method] for method, _ in self.runs)

    def seconds_left(self) -> float | None:
        """None until a step was taken."""
        done = self._weighted({m: self.position[m] - self.first[m] for m, _ in self.runs})
        if done <= 0:
            return None
        left = self._weighted({m: total - self.position[m] for m, total in self.totals.items()})
        return left * (self.clock() - self.started) / done

    def line(self) -> str:
        index = [method for method, _ in self.runs].index(self.current) + 1 if self.current else 0
        seconds = self.seconds_left()
        where = f"demo: run {index} of {len(self.runs)} ({self.current}, step {self.position[self.current]})"
        if seconds is None:
            return f"{where}, remaining time: known after the first steps"
        return f"{where}, about {seconds / 60:.1f} min left (from the speed so far)"


def demo_config_path() -> Path:
    return Path(str(resources.files("prcl") / "configs" / "demo.yaml"))


def demo_configs(out_dir: Path, overrides: list[str], seed: int) -> dict[str, Config]:
    """The runs' configs: identical except for ``method.name`` and ``train.out_dir``."""
    return {method: load_config(demo_config_path(), [*overrides, f"train.seed={seed}", f"method.name={method}",
                                                     f"train.out_dir={out_dir / method}"])
            for method in METHODS}


def _figure(out_dir: Path, cfgs: dict[str, Config], trainers: dict[str, Trainer], report: dict) -> Path:
    from prcl.infer import Predictor
    from prcl.infer.visualize import colorize, denormalize, heatmap, make_grid

    data = trainers["prcl"].data
    dataset = data.test if data.test is not None else data.valid
    num_classes, colors = cfgs["prcl"].data.num_classes, data.class_colors
    predictors = {m: Predictor(t.eval_network(), num_classes, t.probability_head_network(), device=t.device)
                  for m, t in trainers.items()}
    rows = []
    for index in np.linspace(0, len(dataset) - 1, FIGURE_ROWS).round().astype(int):
        sample = dataset[int(index)]
        image, label = sample["image"], sample["mask"].numpy()
        predictions = {m: p.predict(image) for m, p in predictors.items()}
        uncertainty = predictions["prcl"].uncertainty
        if uncertainty is None:  # prcl.deterministic: no probability head, no uncertainty to show
            uncertainty = np.zeros(label.shape, dtype=np.float32)
        rows.append([denormalize(image, IMAGENET_MEAN, IMAGENET_STD), colorize(label, num_classes, colors=colors),
                     *(colorize(predictions[m].mask, num_classes, colors=colors) for m in METHODS),
                     heatmap(uncertainty)])
    path = out_dir / "figure.png"
    title = f"{report['split']} mIoU: " + ", ".join(f"{TITLES.get(m, m)} {report[m + '_miou']:.1f}"
                                                    for m in METHODS)
    legend = list(zip(data.class_names, colors))
    make_grid(rows, ["image", "label", *(TITLES.get(m, m) for m in METHODS), "PRCL uncertainty"], scale=2, path=path,
              title=title, legend=legend)
    return path


def run_demo(out_dir: Path = Path("runs/demo"), overrides: list[str] | None = None, seed: int = 0) -> dict:
    """Train every registered method (continuing any finished or interrupted run in ``out_dir``) and compare."""
    out_dir = Path(out_dir)
    cfgs = demo_configs(out_dir, list(overrides or []), seed)
    started = time.perf_counter()
    trainers, summaries = {}, {}
    remaining = RemainingTime([(method, cfg.train.iterations) for method, cfg in cfgs.items()])
    for method, cfg in cfgs.items():
        print(f"== training {method} ({cfg.train.iterations} iterations, encoder {cfg.model.encoder})", flush=True)
        torch.manual_seed(cfg.train.seed)
        trainers[method] = Trainer(cfg, resume="auto")
        remaining.start(method, trainers[method].step)
        print(remaining.line(), flush=True)
        trainers[method].step_hooks.append(remaining)
        summaries[method] = trainers[method].fit()
    data = trainers["prcl"].data
    split = "test" if data.test is not None else "valid"
    key = "test_miou" if split == "test" else "miou"
    report = {
        **{f"{m}_miou": 100 * summaries[m][key] for m in METHODS},
        "gain": 100 * (summaries["prcl"][key] - summaries["supervised"][key]),
        "gain_over_mean_teacher": 100 * (summaries["prcl"][key] - summaries["mean_teacher"][key]),
        "split": split,
        "valid_miou": {m: 100 * s["miou"] for m, s in summaries.items()},
        "labeled": len(data.labeled),
        "unlabeled": len(data.unlabeled),
        "valid_images": len(data.valid),
        "test_images": len(data.test) if data.test is not None else 0,
        "iterations": cfgs["prcl"].train.iterations,
        "encoder": cfgs["prcl"].model.encoder,
        "seed": seed,
        "seconds": time.perf_counter() - started,  # this invocation (finished runs are reused)
        "train_seconds": {m: s["train_seconds"] for m, s in summaries.items()},
        # how well the PRCL run's variance and its softmax find its errors on the reported split
        "prcl_uncertainty": summaries["prcl"].get("test_uncertainty" if split == "test" else "uncertainty"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figure"] = str(_figure(out_dir, cfgs, trainers, report))
    write_json(out_dir / "report.json", report)
    print()
    print(f"{'method':<14}{split + ' mIoU':>12}{'valid mIoU':>12}")
    for method in METHODS:
        print(f"{method:<14}{report[method + '_miou']:>12.1f}{report['valid_miou'][method]:>12.1f}")
    print(f"PRCL: {report['gain']:+.1f} mIoU points over supervised, {report['gain_over_mean_teacher']:+.1f} over "
          f"the mean teacher, with {report['labeled']} labeled and {report['unlabeled']} unlabeled images "
          f"({report['seconds'] / 60:.1f} min)")
    if report["prcl_uncertainty"]:
        print(f"PRCL {format_uncertainty(report['prcl_uncertainty'])}")
    print(f"report: {out_dir / 'report.json'}  figure: {report['figure']}")
    return report
