"""Segmentation datasets on disk: a plain folder layout, PASCAL VOC 2012 and Cityscapes.

Every dataset returns a dict per sample::

    {"image": tv_tensors.Image uint8 (3, H, W),
     "mask":  tv_tensors.Mask int64 (H, W), class index per pixel, -1 = ignore  (labelled only),
     "id":    str}

before ``transform``; with a transform from :mod:`prcl.data.transforms` the image becomes float
(3, h, w) and both become plain tensors. Ignore pixels (255 in the files) become -1. A label value
outside ``[0, num_classes)`` other than 255, an unreadable image or a missing data folder raises
:class:`prcl.errors.UserError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from prcl.constants import IGNORE_INDEX
from prcl.data.splits import read_id_list
from prcl.errors import UserError

FILE_IGNORE_VALUE = 255
"""Label value of ignored pixels in mask files (VOC boundaries, Cityscapes void)."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Cityscapes labelIds -> the 19 train ids (cityscapesScripts' labels.py); other ids are ignored.
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def read_image(path: str | os.PathLike) -> tv_tensors.Image:
    """Decode an image file to a uint8 RGB tensor (3, H, W); UserError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert("RGB"))
    except Exception as error:  # PIL raises many types for truncated or non-image files
        raise UserError(f"cannot read image {path} ({error}); replace or remove the file") from None
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


def read_label_file(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel (palette or grey) mask PNG as an int64 array (H, W) of raw values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask file not found: {path}")
    try:
        with Image.open(path) as pil:
            if pil.mode not in ("P", "L", "I", "I;16", "1"):
                raise UserError(
                    f"mask {path} has mode {pil.mode}; masks must be single-channel "
                    "(palette or grey) PNGs whose values are class indices, 255 = ignore"
                )
            array = np.asarray(pil)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"cannot read mask {path} ({error}); replace or remove the file") from None
    return array.astype(np.int64)


def labels_from_file_values(values: np.ndarray, num_classes: int | None, path: Path) -> np.ndarray:
    """Map file values to labels: 255 -> -1 (ignore); other values must be < ``num_classes``."""
    ignore = values == FILE_IGNORE_VALUE
    if num_classes is not None:
        bad = ~ignore & ((values < 0) | (values >= num_classes))
        if bad.any():
            raise UserError(
                f"mask {path} has label value {int(values[bad][0])}, outside 0..{num_classes - 1} "
                f"(255 = ignore); fix the mask or set the right number of classes"
            )
    labels = values.copy()
    labels[ignore] = IGNORE_INDEX
    return labels


def _require_folder(folder: Path, what: str, how: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}; {how}, or use data.dataset=demo")


class SegmentationDataset(Dataset):
    """Shared logic: subclasses say where an id's image and mask live and how to decode labels."""

    num_classes: int | None = None

    def __init__(
        self, ids: Sequence[str], with_labels: bool = True, transform: Transform | None = None
    ) -> None:
        self.ids = [str(i) for i in ids]
        self.with_labels = with_labels
        self.transform = transform

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def decode_labels(self, values: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask file values (H, W) -> labels (H, W) with -1 = ignore."""
        return labels_from_file_values(values, self.num_classes, path)

    def load_mask(self, image_id: str) -> tv_tensors.Mask:
        """The mask of ``image_id`` as int64 (H, W), -1 = ignore."""
        path = self.mask_path(image_id)
        labels = self.decode_labels(read_label_file(path), path)
        return tv_tensors.Mask(torch.from_numpy(labels))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = read_image(self.image_path(image_id))
        sample: dict[str, Any] = {"image": image, "id": image_id}
        if self.with_labels:
            mask = self.load_mask(image_id)
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise UserError(
                    f"mask {self.mask_path(image_id)} is {tuple(mask.shape)} but its image is "
                    f"{tuple(image.shape[-2:])} (H, W); image and mask must have the same size"
                )
            sample["mask"] = mask
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


class FolderDataset(SegmentationDataset):
    """Your own data: ``root/images/<id>.png|.jpg|.jpeg`` and ``root/masks/<id>.png``.

    Masks are palette or grey PNGs whose values are class indices (255 = ignore). With
    ``num_classes=None`` label values are not range-checked.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ids: Sequence[str],
        with_labels: bool = True,
        num_classes: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(ids, with_labels, transform)
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        how = "put images in <root>/images and masks in <root>/masks (see docs/datasets.md)"
        _require_folder(self.root, "data", how)
        _require_folder(self.root / "images", "image", how)
        if with_labels:
            _require_folder(self.root / "masks", "mask", how)

    def image_path(self, image_id: str) -> Path:
        """The existing image file of ``image_id``, else the first expected path."""
        candidates = [self.root / "images" / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
        for path in candidates:
            if path.is_file():
                return path
        return candidates[0]

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / f"{image_id}.png"

    @staticmethod
    def list_ids(root: str | os.PathLike) -> list[str]:
        """Sorted ids of all images in ``root/images``."""
        folder = Path(root).expanduser() / "images"
        _require_folder(folder, "image", "put images in <root>/images")
        return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


class VOCDataset(SegmentationDataset):
    """PASCAL VOC 2012: ``root/JPEGImages/<id>.jpg`` and ``root/<label_dir>/<id>.png``.

    ``root`` is ``VOCdevkit/VOC2012`` (a folder containing ``VOCdevkit`` or ``VOC2012`` is
    accepted too). ``label_dir`` is ``SegmentationClassAug`` (blended setting, 10,582 train
    images) or ``SegmentationClass`` (classic setting). Ids are as in the split files,
    e.g. ``2007_000033``. 21 classes, 255 = ignore.
    """

    num_classes = 21
    class_names = VOC_CLASS_NAMES

    def __init__(
        self,
        root: str | os.PathLike,
        ids: Sequence[str],
        with_labels: bool = True,
        label_dir: str = "SegmentationClassAug",
        transform: Transform | None = None,
    ) -> None:
        super().__init__(ids, with_labels, transform)
        self.root = self.find_root(root)
        self.label_dir = label_dir
        if with_labels:
            _require_folder(
                self.root / label_dir,
                "VOC label",
                f"download {label_dir} and unpack it into {self.root} (see docs/datasets.md)",
            )

    @staticmethod
    def find_root(root: str | os.PathLike) -> Path:
        """Resolve ``root`` to the folder holding ``JPEGImages``; UserError if there is none."""
        root = Path(root).expanduser()
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir():
                return candidate
        raise UserError(
            f"VOC data folder not found: {root / 'JPEGImages'}; download PASCAL VOC 2012 and set "
            "data.root to VOCdevkit/VOC2012 (see docs/datasets.md), or use data.dataset=demo"
        )

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.label_dir / f"{image_id}.png"

    @staticmethod
    def list_ids(root: str | os.PathLike, image_set: str = "train") -> list[str]:
        """Ids in ``ImageSets/Segmentation/<image_set>.txt`` (e.g. ``train``, ``val``)."""
        folder = VOCDataset.find_root(root) / "ImageSets" / "Segmentation"
        return read_id_list(folder / f"{image_set}.txt")


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations, mapped from labelIds to the 19 train ids (others ignored).

    Files: ``root/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/<id>_gtFine_labelIds.png``.

    Ids: the canonical form is ``<city>_<seq>_<frame>`` (e.g. ``aachen_000013_000019``). Also
    accepted: the reference's form with the ``_leftImg8bit`` suffix
    (``aachen_000013_000019_leftImg8bit``), an optional ``.png``, and a ``<city>/`` prefix. The
    city is the part before the first ``_`` (Cityscapes city names have none).
    """

    num_classes = 19
    class_names = CITYSCAPES_CLASS_NAMES

    def __init__(
        self,
        root: str | os.PathLike,
        ids: Sequence[str],
        with_labels: bool = True,
        split: str = "train",
        transform: Transform | None = None,
    ) -> None:
        super().__init__(ids, with_labels, transform)
        self.root = self.find_root(root, split, with_labels)
        self.split = split
        lut = np.full(256, -2, dtype=np.int64)  # -2 marks values that are not labelIds
        lut[:34] = IGNORE_INDEX
        lut[FILE_IGNORE_VALUE] = IGNORE_INDEX
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
            lut[label_id] = train_id
        self._label_to_train_id = lut

    @staticmethod
    def find_root(root: str | os.PathLike, split: str = "train", with_labels: bool = True) -> Path:
        """The folder holding ``leftImg8bit/<split>`` (and ``gtFine/<split>``); UserError naming what is there.

        ``root`` may also be a folder containing ``cityscapes/``.
        """
        given = Path(root).expanduser()
        needed = ["leftImg8bit"] + (["gtFine"] if with_labels else [])
        for candidate in (given, given / "cityscapes"):
            if all((candidate / name / split).is_dir() for name in needed):
                return candidate
        if not given.is_dir():
            raise UserError(f"Cityscapes folder not found: {given}; set data.root to the folder holding "
                            "leftImg8bit/ and gtFine/ (see docs/datasets.md), or use data.dataset=demo")
        found = sorted(p.name for p in given.iterdir() if p.is_dir())[:6]
        missing = [f"{name}/{split}" for name in needed if not (given / name / split).is_dir()]
        raise UserError(
            f"{given} is not a Cityscapes folder: {' and '.join(missing)} not found (it holds "
            f"{', '.join(found) or 'no folders'}); data.root must hold leftImg8bit/{{train,val}}/<city>/ and "
            "gtFine/{train,val}/<city>/ from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "(see docs/datasets.md)"
        )

    @staticmethod
    def parse_id(image_id: str) -> tuple[str, str]:
        """``image_id`` in any accepted form -> (city, canonical id)."""
        name = image_id.strip().replace("\\", "/").split("/")[-1]
        for suffix in (".png", "_leftImg8bit"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        return name.split("_")[0], name

    def image_path(self, image_id: str) -> Path:
        city, name = self.parse_id(image_id)
        return self.root / "leftImg8bit" / self.split / city / f"{name}_leftImg8bit.png"

    def mask_path(self, image_id: str) -> Path:
        city, name = self.parse_id(image_id)
        return self.root / "gtFine" / self.split / city / f"{name}_gtFine_labelIds.png"

    def decode_labels(self, values: np.ndarray, path: Path) -> np.ndarray:
        if values.min() < 0 or values.max() > 255:
            bad = int(values.max() if values.max() > 255 else values.min())
            raise UserError(f"mask {path} has value {bad}; expected Cityscapes labelIds 0..33")
        labels = self._label_to_train_id[values]
        if (labels == -2).any():
            raise UserError(
                f"mask {path} has value {int(values[labels == -2][0])}; expected Cityscapes "
                "labelIds 0..33 (use the *_gtFine_labelIds.png files)"
            )
        return labels

    @staticmethod
    def list_ids(root: str | os.PathLike, split: str = "train") -> list[str]:
        """Sorted canonical ids of all images in ``leftImg8bit/<split>``."""
        folder = Path(root).expanduser() / "leftImg8bit" / split
        _require_folder(folder, "Cityscapes image", "download leftImg8bit_trainvaltest")
        suffix = "_leftImg8bit.png"
        return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*/*{suffix}"))
