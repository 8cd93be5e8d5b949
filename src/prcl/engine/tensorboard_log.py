"""TensorBoard for a run (``train.tensorboard``): the logged train values and the evaluations as scalars,
and at each evaluation the predictions on the first few validation images as pictures and, for a method
with pseudo-labels, one picture of them on a fixed few unlabeled images.

Written under ``<out_dir>/tensorboard`` by the main process when the ``tensorboard`` package is installed
(``pip install 'prcl[tensorboard]'``); otherwise every method does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from prcl.infer.protocols import INFERENCE_PROTOCOLS, average_views, class_map, crop_for_protocol, dense_maps

from .sampling import SeededDataset, mixed_seed

if TYPE_CHECKING:
    from prcl.config import Config
    from prcl.methods import PseudoLabelPictures

EXAMPLE_IMAGES = 4  # validation images shown with their predictions at each evaluation
PSEUDO_LABEL_TAG = "pseudo_labels/strong_views"  # the pseudo-label picture's TensorBoard tag
NO_LABEL_COLOUR = (255, 255, 255)  # pixels without a pseudo-label (padding, CutOut), in both tiles
BELOW_THRESHOLDS_COLOUR = (110, 110, 110)  # confidence below every threshold
_PICTURE_SEED = 19  # mixed into train.seed for the pictures' own draws (never the training's)


@torch.no_grad()
def prediction_rows(model: nn.Module, dataset: Dataset, cfg: Config, device: torch.device,
                    count: int = EXAMPLE_IMAGES, colors: list[tuple[int, int, int]] | None = None) -> list[np.ndarray]:
    """For the first ``count`` items of ``dataset``: an (H + title, 3 W, 3) uint8 picture of the image, its
    label and ``model``'s prediction (in ``colors``, one RGB per class, or the VOC colour map when None;
    ignored pixels white), predicted as evaluation does (``cfg.eval``'s protocol, window, stride, flip and
    scales; "random-crop" shows the whole image)."""
    from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
    from prcl.infer.visualize import colorize, denormalize, make_grid

    e, num_classes = cfg.eval, cfg.data.num_classes
    protocol = e.protocol if e.protocol in INFERENCE_PROTOCOLS else "whole"
    map_fn = dense_maps(model.eval(), num_classes)
    rows = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        image, label = item["image"][None].to(device).float(), item["mask"][None].to(device).long()
        if e.protocol == "center":
            image, label = crop_for_protocol(image, label, "center", e.window)
        prediction = class_map(average_views(map_fn, image, protocol, e.window, e.stride, e.flip, tuple(e.scales)))
        tiles = [denormalize(image[0], IMAGENET_MEAN, IMAGENET_STD),
                 colorize(label[0].cpu().numpy(), num_classes, colors=colors),
                 colorize(prediction[0].cpu().numpy(), num_classes, colors=colors)]
        rows.append(np.asarray(make_grid([tiles], ["image", "label", "prediction"], scale=1)))
    return rows


def pseudo_label_examples(dataset: Dataset, seed: int, count: int = EXAMPLE_IMAGES) -> torch.Tensor:
    """(count, 3, H, W): the same ``count`` unlabeled images at every evaluation (fewer if the split is smaller),
    drawn and cropped under their own seeds from ``seed``; the run's random state is left as it was."""
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(mixed_seed(seed, _PICTURE_SEED)))
    seeded = SeededDataset(dataset)  # each item loaded under its own seed, the global RNG restored
    return torch.stack([seeded[(int(index), mixed_seed(seed, _PICTURE_SEED, int(index)))]["image"]
                        for index in chosen[:count]])


def pseudo_label_generator(seed: int, device: torch.device) -> torch.Generator:
    """The strong view's random draws for the pictures: the same at every evaluation, apart from the training's."""
    return torch.Generator(device).manual_seed(mixed_seed(seed, _PICTURE_SEED, -1))


def confidence_bands(confidence: np.ndarray, labelled: np.ndarray,
                     thresholds: dict[str, float]) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int]]]]:
    """The confidence q (H, W) in bands cut at the thresholds: (H, W, 3) uint8 and its legend.

    Below every threshold grey; each band above a threshold a colour of the heat-map ramp, the highest band
    yellow (with two thresholds the middle band is teal); pixels where ``labelled`` (H, W) bool is False white.
    """
    from prcl.infer.visualize import heatmap

    cuts = sorted(thresholds.items(), key=lambda item: item[1])
    ramp = heatmap(np.arange(1, len(cuts) + 1, dtype=np.float64)[None], vmin=0.0, vmax=float(len(cuts)))[0]
    colours = np.array([BELOW_THRESHOLDS_COLOUR, *ramp.tolist()], dtype=np.uint8)
    band = sum((confidence >= value).astype(np.int64) for _, value in cuts)
    picture = colours[band]
    picture[~labelled] = NO_LABEL_COLOUR
    legend = [("no pseudo-label", NO_LABEL_COLOUR), (f"q < {cuts[0][1]:g}", BELOW_THRESHOLDS_COLOUR)]
    for index, (name, value) in enumerate(cuts):
        upper = f" < {cuts[index + 1][1]:g}" if index + 1 < len(cuts) else ""
        legend.append((f"{value:g} <= q{upper} ({name})", tuple(int(c) for c in colours[index + 1])))
    return picture, legend


def pseudo_label_grid(pictures: PseudoLabelPictures, num_classes: int,
                      colors: list[tuple[int, int, int]] | None = None) -> np.ndarray:
    """One (title + band + N H + legend, 3 W or 4 W, 3) uint8 grid, a row per image: the strong view, its
    pseudo-label (in ``colors``, one RGB per class, or the VOC colour map when None; white where there is none), the confidence in bands (see
    :func:`confidence_bands`) and, with a probability head, the variance as a heat map from the smallest
    (dark violet) to the largest (yellow) value among these images, both named in the title."""
    from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
    from prcl.infer.visualize import colorize, denormalize, heatmap, make_grid

    labels = pictures.pseudo_labels.cpu().numpy()
    confidence = pictures.confidence.float().cpu().numpy()
    variance = pictures.variance.float().cpu().numpy() if pictures.variance is not None else None
    titles, title = ["strong view", "pseudo-label", "confidence"], None
    if variance is not None:
        low, high = float(variance.min()), float(variance.max())
        titles.append("variance")
        title = f"variance {low:.4g} to {high:.4g}"
    rows, legend = [], []
    for index in range(labels.shape[0]):
        bands, legend = confidence_bands(confidence[index], labels[index] >= 0, pictures.thresholds)
        row = [denormalize(pictures.strong_images[index], IMAGENET_MEAN, IMAGENET_STD),
               colorize(labels[index], num_classes, ignore_colour=NO_LABEL_COLOUR, colors=colors), bands]
        if variance is not None:
            row.append(heatmap(variance[index], vmin=low, vmax=high))
        rows.append(row)
    return np.asarray(make_grid(rows, titles, scale=1, title=title, legend=legend))


class TensorBoardLog:
    """``record(line)`` writes the numeric values of one metrics.jsonl line as scalars: ``train/<key>`` for
    train lines, ``<split>/<key>`` (e.g. ``valid/miou``) for evaluations. The writer opens on the first line."""

    def __init__(self, folder: Path | None, purge_step: int | None = None) -> None:
        self.folder, self.purge_step, self.writer = folder, purge_step, None

    def _open(self):
        if self.writer is None and self.folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                self.folder = None
                return None
            # purge_step (on resume): TensorBoard hides what an interrupted session wrote past the checkpoint
            self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step, flush_secs=30)
        return self.writer

    def enabled(self) -> bool:
        """Whether anything is written (a folder was given and tensorboard is installed)."""
        return self._open() is not None

    def record_images(self, tag: str, step: int, pictures: list[np.ndarray]) -> None:
        """(H, W, 3) uint8 pictures as ``<tag>/0``, ``<tag>/1``, ... at ``step``."""
        if self._open() is None:
            return
        for index, picture in enumerate(pictures):
            self.writer.add_image(f"{tag}/{index}", picture, step, dataformats="HWC")

    def record_image(self, tag: str, step: int, picture: np.ndarray) -> None:
        """One (H, W, 3) uint8 picture as ``tag`` at ``step``."""
        if self._open() is not None:
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def record(self, line: dict) -> None:
        kind = line.get("type")
        prefix = line.get("split", "eval") if kind == "eval" else kind
        if prefix not in ("train", "valid", "test", "eval") or "step" not in line or self._open() is None:
            return
        scalars = {key: value for key, value in line.items() if key != "step"}
        for key, value in line.items():  # one level of nesting: valid/uncertainty/auroc_variance
            if isinstance(value, dict):
                scalars.update({f"{key}/{inner}": number for inner, number in value.items()})
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, line["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
