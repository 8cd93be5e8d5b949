"""TensorBoard for a run (``train.tensorboard``): the logged train values and the evaluations as scalars,
and at each evaluation the predictions on the first few validation images as pictures.

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

if TYPE_CHECKING:
    from prcl.config import Config

EXAMPLE_IMAGES = 4  # validation images shown with their predictions at each evaluation


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
