"""Segmentation datasets on disk: a plain folder layout, PASCAL VOC 2012 and Cityscapes.

Every dataset returns a dict per sample::

    {"image": tv_tensors.Image uint8 (3, H, W),
     "mask":  tv_tensors.Mask int64 (H, W), class index per pixel, -1 = ignore  (labelled only),
     "id":    str}

before ``transform``; with a transform from :mod:`prcl.data.transforms` the image becomes float
(3, h, w) and both become plain tensors. Ignore pixels (255 in the files) become -1. A label value
outside ``[0, num_classes)`` other than 255, an unreadable image or a missing data folder raises
:class:`DataFileError` (a :class:`prcl.errors.UserError`) naming the file, on one line also when
raised in a DataLoader worker. Every picture is decoded by :func:`to_rgb8` (turned upright by its
EXIF orientation, as image viewers show it; 16-bit and float images scaled, not clipped); masks must
be 8-bit grey or palette PNGs, read as stored: they must match their image as displayed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
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


class DataFileError(UserError):
    """A data file (image or mask) a dataset cannot use; its message is one line naming the file.

    Raised by dataset reads, also inside DataLoader worker processes (``UserError`` keeps it one
    line when torch re-raises it in the main process). ``reason`` says what is wrong without the
    file name and the fix (for summaries).
    """

    def __init__(self, message: str = "", *args: Any, reason: str | None = None) -> None:
        super().__init__(message, *args)
        self.reason = reason or str(self)


# Modes with 8 bits per channel that PIL converts to RGB itself: alpha is dropped, a palette is
# looked up, "1" becomes 0/255, CMYK/YCbCr/LAB/HSV are converted by PIL's formulas.
_PIL_TO_RGB_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)
IMAGE_MODES_HELP = (
    "8-bit modes (1, L, LA, P, PA, RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV), 16-bit grey (I;16*), "
    "and 32-bit I or F whose values lie in 0..255, 0..65535 or (F) 0..1"
)


def to_rgb8(image: Image.Image, path: str | os.PathLike | None = None) -> np.ndarray:
    """Any image PIL opens -> uint8 RGB array (H, W, 3); UserError naming the file and mode otherwise.

    The one conversion used wherever prcl decodes a picture (datasets, ``prcl predict``,
    :class:`prcl.infer.Predictor`). Rules:

    * 8-bit modes (1, L, LA, P, PA, RGB, RGBA, RGBX, RGBa, CMYK, YCbCr, LAB, HSV): PIL's own
      conversion; alpha is dropped (not blended), a palette is looked up, ``1`` gives 0/255.
    * 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled by the full 16-bit range,
      ``round(v * 255 / 65535)`` (``v / 257``), so 65535 -> 255 and 32768 -> 128 (PIL would clip
      everything above 255 to white).
    * 32-bit integer ``I`` and float ``F`` grey, decided by the values actually present: all in
      0..255 -> kept (floats rounded); else all in 0..65535 -> scaled like 16-bit. ``F`` whose values
      all lie in 0..1 is scaled by 255 first (that rule wins over 0..255, so a float picture in 0..1
      is not read as black). Anything else (negative values, above 65535, NaN or infinity) is
      refused: there is no one right way to map it to 8 bits.
    * Other modes are refused with the mode named.

    Grey results are repeated into the three channels. A picture whose EXIF orientation tag says it
    is stored turned or mirrored (phone photos) is first turned upright, as image viewers show it, so
    a JPEG stored 80x48 with orientation 6 gives (H, W) = (80, 48).
    """
    name = str(path) if path is not None else "the image"
    image = upright(image)
    mode = image.mode
    if mode in _PIL_TO_RGB_MODES:
        try:
            rgb = image.convert("RGB")
        except ValueError:
            raise _mode_error(name, mode, "PIL cannot convert it to RGB") from None
        return np.asarray(rgb, dtype=np.uint8).copy()
    if mode.startswith("I;16"):
        values = np.asarray(image)
        if values.dtype.kind != "u":
            raise _mode_error(name, mode, "signed 16-bit values are not supported")
        return _grey_to_rgb(_scale_16bit(values.astype(np.float64)))
    if mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if values.size == 0:
            return _grey_to_rgb(values)
        if not np.isfinite(values).all():
            raise _mode_error(name, mode, "it holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if mode == "F" and low >= 0.0 and high <= 1.0:
            return _grey_to_rgb(values * 255.0)
        if low >= 0.0 and high <= 255.0:
            return _grey_to_rgb(values)
        if low >= 0.0 and high <= 65535.0:
            return _grey_to_rgb(_scale_16bit(values))
        raise _mode_error(name, mode, f"its values span {low:g}..{high:g}, outside 0..65535")
    raise _mode_error(name, mode, "prcl does not convert this mode")


EXIF_ORIENTATION = 0x0112
"""The EXIF tag saying how a stored picture is to be turned or mirrored for display (1 = as stored)."""


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned and mirrored as its EXIF orientation (2..8) says; itself when it has none."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    return values * (255.0 / 65535.0)


def _grey_to_rgb(values: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _mode_error(name: str, mode: str, why: str) -> DataFileError:
    return DataFileError(
        f"cannot convert {name} (mode {mode}) to 8-bit RGB: {why}; save it as an 8-bit RGB or grey "
        f"PNG/JPEG (prcl reads {IMAGE_MODES_HELP})",
        reason=f"mode {mode}: {why}",
    )


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3) with :func:`to_rgb8`; DataFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"image file not found: {path}; check data.root and the split files", reason="missing")
    try:
        with Image.open(path) as pil:
            return to_rgb8(pil, path)
    except UserError:
        raise
    except Image.DecompressionBombError as error:
        raise DataFileError(f"image {path} is larger than PIL's safety limit ({_one_line(error)}); downscale it, "
                            "or raise PIL.Image.MAX_IMAGE_PIXELS from Python if you trust the file",
                            reason=f"larger than PIL's safety limit: {_one_line(error)}") from None
    except MemoryError:
        raise DataFileError(f"not enough memory to decode image {path}; downscale it or free memory",
                            reason="not enough memory to decode it") from None
    except Exception as error:  # PIL raises many types for truncated or non-image files
        raise DataFileError(f"cannot read image {path} ({_one_line(error)}); replace or remove the file",
                            reason=f"cannot decode: {_one_line(error)}") from None


def read_image(path: str | os.PathLike) -> tv_tensors.Image:
    """Decode an image file to a uint8 RGB tensor (3, H, W); DataFileError (a UserError) if unusable."""
    array = decode_image(path)
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))


MASK_MODES = ("L", "P")
"""Mask files are single-channel 8-bit PNGs: grey (L) or palette (P), values = class indices."""


def read_label_file(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit (grey or palette) PNG mask as an int64 array (H, W) of raw values.

    Other modes (RGB colour masks, 16-bit, 1-bit) and other formats (a JPEG's values are not exact)
    raise DataFileError naming the file, its mode and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"mask file not found: {path}; check data.root and the split files", reason="missing")
    try:
        with Image.open(path) as pil:
            if pil.format != "PNG":
                raise DataFileError(
                    f"mask {path} is a {pil.format or 'non-PNG'} file; masks must be PNGs (lossless) "
                    "whose values are class indices, 255 = ignore; save it as an 8-bit grey or palette PNG",
                    reason=f"a {pil.format or 'non-PNG'} file, not a PNG",
                )
            if pil.mode not in MASK_MODES:
                raise DataFileError(
                    f"mask {path} has mode {pil.mode}; masks must be single-channel 8-bit PNGs, grey (L) "
                    "or palette (P), whose values are class indices, 255 = ignore (an RGB colour mask must "
                    "be mapped to class indices first); save it as mode L or P",
                    reason=f"mode {pil.mode}, not an 8-bit grey (L) or palette (P) PNG",
                )
            array = np.asarray(pil)
    except UserError:
        raise
    except Exception as error:
        raise DataFileError(f"cannot read mask {path} ({_one_line(error)}); replace or remove the file",
                            reason=f"cannot decode: {_one_line(error)}") from None
    return array.astype(np.int64)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def bad_label_values(values: np.ndarray, num_classes: int | None) -> np.ndarray:
    """The values among ``values`` that are neither a class index ``0..num_classes-1`` nor 255 (ignore)."""
    values = np.asarray(values)
    if num_classes is None:
        return values[:0]
    return values[(values != FILE_IGNORE_VALUE) & ((values < 0) | (values >= num_classes))]


def labels_from_file_values(values: np.ndarray, num_classes: int | None, path: Path) -> np.ndarray:
    """Map file values to labels: 255 -> -1 (ignore); other values must be < ``num_classes``."""
    bad = bad_label_values(values, num_classes)
    if bad.size:
        raise DataFileError(
            f"mask {path} has label value {int(bad.flat[0])}, outside 0..{num_classes - 1} "
            f"(255 = ignore); fix the mask or set the right number of classes"
        )
    ignore = values == FILE_IGNORE_VALUE
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

    def invalid_mask_values(self, values: np.ndarray, num_classes: int | None = None) -> list[int]:
        """The raw mask file values among ``values`` that :meth:`decode_labels` would refuse.

        ``num_classes`` (e.g. the config's ``data.num_classes``) overrides the dataset's own.
        """
        classes = self.num_classes if num_classes is None else num_classes
        return sorted(int(v) for v in np.unique(bad_label_values(values, classes)))

    def describe_mask_values(self, num_classes: int | None = None) -> tuple[str, str]:
        """(what :meth:`invalid_mask_values` finds, the fix), for one-line summaries."""
        classes = self.num_classes if num_classes is None else num_classes
        return f"values >= {classes} (not 255)", "fix the masks or set data.num_classes"

    def files(self) -> list[tuple[str, Path, Path | None]]:
        """``(id, image path, mask path)`` of every id, in order; the mask is None without labels."""
        return [
            (image_id, self.image_path(image_id), self.mask_path(image_id) if self.with_labels else None)
            for image_id in self.ids
        ]

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
                raise DataFileError(
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
    accepted: the release's form with the ``_leftImg8bit`` suffix
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
            raise DataFileError(f"mask {path} has value {bad}; expected Cityscapes labelIds 0..33")
        labels = self._label_to_train_id[values]
        if (labels == -2).any():
            raise DataFileError(
                f"mask {path} has value {int(values[labels == -2][0])}; expected Cityscapes "
                "labelIds 0..33 (use the *_gtFine_labelIds.png files)"
            )
        return labels

    def invalid_mask_values(self, values: np.ndarray, num_classes: int | None = None) -> list[int]:
        """Raw values that are not Cityscapes labelIds (0..33) or 255; ``num_classes`` is not used:
        the files hold labelIds, mapped to the 19 train ids on reading."""
        values = np.unique(np.asarray(values))
        inside = (values >= 0) & (values <= 255)
        bad = values[~inside].tolist()
        bad += values[inside][self._label_to_train_id[values[inside]] == -2].tolist()
        return sorted(int(v) for v in bad)

    def describe_mask_values(self, num_classes: int | None = None) -> tuple[str, str]:
        return ("values that are not Cityscapes labelIds 0..33 or 255",
                "use the *_gtFine_labelIds.png files from gtFine_trainvaltest.zip")

    @staticmethod
    def list_ids(root: str | os.PathLike, split: str = "train") -> list[str]:
        """Sorted canonical ids of all images in ``leftImg8bit/<split>``."""
        folder = Path(root).expanduser() / "leftImg8bit" / split
        _require_folder(folder, "Cityscapes image", "download leftImg8bit_trainvaltest")
        suffix = "_leftImg8bit.png"
        return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*/*{suffix}"))
