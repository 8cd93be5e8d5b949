"""Predictor: a trained segmenter as a function from a picture to a mask, probabilities and uncertainty.

>>> predictor = Predictor.from_checkpoint("runs/prcl/checkpoints/best.pt")
>>> prediction = predictor.predict(PIL.Image.open("street.jpg"))
>>> prediction.mask.shape  # (H, W), the picture's size

The uncertainty is the probability head's variance averaged over the 256 representation
dimensions: in (0, 1), higher where the representation is less certain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from prcl.checkpoint import load_checkpoint
from prcl.config import Config, config_from_dict, is_rgb
from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
from prcl.data.datasets import to_rgb8
from prcl.devices import resolve_device
from prcl.errors import UserError
from prcl.infer.protocols import average_views, dense_maps, mean_variance
from prcl.infer.visualize import class_palette
from prcl.metrics import normalised_entropy
from prcl.models import ProbabilityHead, build_segmenter

ImageInput = Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """One picture's prediction, all maps at the picture's size (H, W)."""

    mask: np.ndarray  # (H, W) int64 class indices
    probabilities: np.ndarray  # (C, H, W) float32 softmax probabilities
    confidence: np.ndarray  # (H, W) float32 probability of the predicted class
    uncertainty: np.ndarray | None  # (H, W) float32 mean variance in (0, 1); None without a probability head

    @property
    def entropy(self) -> np.ndarray:
        """(H, W) float32 softmax entropy divided by log C, in [0, 1]: 1 = every class equally likely."""
        return normalised_entropy(torch.from_numpy(self.probabilities), dim=0).numpy()


def config_from_checkpoint(state: dict[str, Any], path: str | Path) -> Config:
    """The (resolved) Config stored as a plain dict under ``state["config"]``."""
    tree = state.get("config")
    if not isinstance(tree, dict):
        raise UserError(f"{path} is not a prcl checkpoint: it holds no 'config' section")
    try:
        return config_from_dict(tree, f"checkpoint {path}")
    except UserError as error:
        raise UserError(f"the config stored in checkpoint {path} is invalid: {error}") from None


def _load_weights(module: nn.Module, weights: Any, what: str, path: str | Path) -> None:
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"the {what} weights in {path} do not fit the model its config describes: {first}") from None


def _class_names(names: Any, num_classes: int) -> list[str] | None:
    """The checkpoint's class names when it holds one string per class, else None."""
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _class_colors(colors: Any, num_classes: int) -> list[tuple[int, int, int]] | None:
    """The checkpoint's class colours when it holds one RGB (three integers 0..255) per class, else None
    (checkpoints written before colours were stored: the default palette)."""
    if isinstance(colors, (list, tuple)) and len(colors) == num_classes and all(is_rgb(c) for c in colors):
        return [(int(c[0]), int(c[1]), int(c[2])) for c in colors]
    return None


class Predictor:
    """Runs a segmenter (and optionally its probability head) on pictures, without gradients.

    ``model(x)`` returns an object with ``.logits`` (N, C, h, w) and ``.features`` (N, F, h, w), and optionally
    ``.context``, the coarse map F's last channels upsample (a :class:`prcl.models.Segmenter`; see
    :func:`prcl.infer.protocols.mean_variance`); ``probability_head(features)`` returns variance
    (N, 256, h, w). Both are moved to ``device`` and put in eval mode. Input pictures are scaled
    to [0, 1] and normalised with ``mean``/``std`` (tensors are taken as already normalised).
    ``protocol`` ("whole" or "sliding"), ``window``, ``stride``, ``flip`` and ``scales`` are as
    in :func:`prcl.infer.protocols.average_views`: the maps of :func:`prcl.infer.protocols.dense_maps`
    (probabilities, then the mean variance) averaged over the views, as in evaluation.
    ``class_names`` (optional) names the C classes and ``class_colors`` (optional) gives each an
    (R, G, B) colour; :attr:`palette` is what pictures of the predictions use.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        probability_head: nn.Module | None = None,
        device: str | torch.device = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        protocol: str = "whole",
        window: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        class_names: Sequence[str] | None = None,
        class_colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if protocol not in ("whole", "sliding"):
            raise ValueError(f"Predictor protocol must be 'whole' or 'sliding', got {protocol!r}")
        if protocol == "sliding" and window is None:
            raise ValueError("the sliding protocol needs a window size")
        self.device = resolve_device(device, "--device")
        self.model = model.to(self.device).eval()
        self.probability_head = probability_head.to(self.device).eval() if probability_head is not None else None
        self.num_classes = num_classes
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.protocol = protocol
        self.window = window
        self.stride = stride
        self.flip = flip
        self.scales = tuple(scales)
        self.class_names = list(class_names) if class_names is not None else None
        self.class_colors = [tuple(int(v) for v in c) for c in class_colors] if class_colors is not None else None
        if self.class_colors is not None:
            class_palette(num_classes, self.class_colors)  # ValueError unless one colour per class
        self.config: Config | None = None  # set by from_checkpoint

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", use: str = "teacher"
    ) -> Predictor:
        """Rebuild the model a ``prcl train`` checkpoint describes (its "config") and load its weights.

        ``use`` picks the "teacher" (evaluated in training; the default) or the "student" weights;
        a checkpoint without teacher weights (supervised runs) falls back to the student. The
        probability head is loaded when the checkpoint has one. The inference protocol, flip and
        scales follow the config's ``eval`` section ("center"/"random-crop" become "whole"). The class
        names and colours are the checkpoint's "class_names" and "class_colors" (None where it has none).
        """
        if use not in ("teacher", "student"):
            raise UserError(f"use must be 'teacher' or 'student', got {use!r}")
        state = load_checkpoint(path, map_location="cpu")
        cfg = config_from_checkpoint(state, path)
        weights = state.get(use)
        if weights is None and use == "teacher":
            weights = state.get("student")
        if not isinstance(weights, dict):
            raise UserError(f"{path} is not a prcl checkpoint: it holds no '{use}' weights")
        num_classes = cfg.data.num_classes
        assert num_classes is not None  # filled in by config_from_dict's resolve step
        model = build_segmenter(cfg.model.encoder, num_classes, cfg.model.output_stride, weights=None)
        _load_weights(model, weights, use, path)

        head = None
        head_weights = state.get("probability_head")
        if head_weights is not None:
            if not isinstance(head_weights, dict) or "fc1" not in head_weights:
                raise UserError(f"the probability_head entry of {path} is not a probability head's weights")
            dim, in_channels = head_weights["fc1"].shape
            head = ProbabilityHead(in_channels=in_channels, dim=dim)
            _load_weights(head, head_weights, "probability head", path)

        evaluation = cfg.eval
        sliding = evaluation.protocol == "sliding"
        predictor = cls(
            model,
            num_classes,
            probability_head=head,
            device=device,
            protocol="sliding" if sliding else "whole",
            window=evaluation.window if sliding else None,
            stride=evaluation.stride if sliding else None,
            flip=evaluation.flip,
            scales=evaluation.scales,
            class_names=_class_names(state.get("class_names"), num_classes),
            class_colors=_class_colors(state.get("class_colors"), num_classes),
        )
        predictor.config = cfg
        return predictor

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8: the class colours, or the VOC colour map where the checkpoint gave none."""
        return class_palette(self.num_classes, self.class_colors)

    def _to_tensor(self, image: ImageInput) -> torch.Tensor:
        """Picture -> normalised float (1, 3, H, W) on the device."""
        if isinstance(image, Image.Image):
            image = to_rgb8(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"a numpy picture must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
            image = torch.from_numpy(image.copy()).permute(2, 0, 1)  # copy: the array may be read-only
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"predict takes a PIL image, a numpy array or a tensor, got {type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor picture must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            mean = torch.tensor(self.mean).view(3, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1)
            image = (image.float() / 255.0 - mean) / std
        return image.float()[None].to(self.device)

    def predict(self, image: ImageInput) -> Prediction:
        """Predict one picture: a PIL image, a uint8 (H, W, 3) array, or a normalised float (3, H, W) tensor."""
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predict several pictures (as in :meth:`predict`); one Prediction per picture, in order.

        Pictures of the same size go through the network as one batch: (n, 3, H, W) per size.
        The networks are in eval mode, so a picture's prediction does not depend on its batch
        (up to float rounding). Pictures of other sizes are not padded to one size: the decoder's
        image pooling would then average over the padding.
        """
        self.model.eval()
        head = self.probability_head
        if head is not None:
            head.eval()
        map_fn = dense_maps(self.model, self.num_classes, extra=mean_variance(head) if head is not None else None)
        tensors = [self._to_tensor(image) for image in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
        predictions: list[Prediction | None] = [None] * len(tensors)
        for indices in by_size.values():
            batch = torch.cat([tensors[i] for i in indices])
            maps = average_views(map_fn, batch, self.protocol, self.window, self.stride, self.flip, self.scales)
            for index, picture_maps in zip(indices, maps):
                predictions[index] = self._prediction(picture_maps)
        return predictions  # type: ignore[return-value]  # every index was filled

    def _prediction(self, maps: torch.Tensor) -> Prediction:
        """(C [+ 1], H, W) averaged maps of one picture (the mean variance last, with a head) -> its Prediction."""
        probabilities = maps[: self.num_classes]
        confidence, mask = probabilities.max(dim=0)
        return Prediction(
            mask=mask.cpu().numpy().astype(np.int64),
            probabilities=probabilities.cpu().numpy(),
            confidence=confidence.cpu().numpy(),
            uncertainty=maps[self.num_classes].cpu().numpy() if maps.shape[0] > self.num_classes else None,
        )
