"""The published semi-supervised split lists that ship with the package.

The lists are U2PL's (Wang et al., "Semi-Supervised Semantic Segmentation Using Unreliable
Pseudo-Labels", CVPR 2022; repository Haochen-Wang409/U2PL, folder ``data/splits``, commit
ab3d2be; Apache-2.0). PRCL's VOC and Cityscapes results use them. The files are gzip-compressed
copies under ``prcl/data/published_splits/`` (see the README there).

Datasets are named ``"voc"`` (PASCAL VOC 2012, ids like ``2007_000033``) and ``"cityscapes"``
(entries are paths like ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png``, which
:class:`prcl.data.CityscapesDataset` accepts as ids).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

from prcl.data.splits import Splits
from prcl.errors import UserError

PUBLISHED_COUNTS: dict[str, tuple[int, ...]] = {
    "voc": (92, 183, 366, 662, 732, 1323, 1464, 2646, 5291),
    "cityscapes": (186, 372, 744, 1488),
}
"""Labeled-image counts with a published split, per dataset."""

VOC_BLENDED = (662, 1323, 2646, 5291)
"""VOC counts whose labeled ids are drawn from all 10,582 train_aug images."""

VOC_CLASSIC = (92, 183, 366, 732, 1464)
"""VOC counts whose labeled ids are drawn from the 1,464 fine train images."""

TRAIN_SIZES: dict[str, int] = {"voc": 10582, "cityscapes": 2975}
"""Train images per dataset; every published split has labeled + unlabeled = this many."""

VALID_SIZES: dict[str, int] = {"voc": 1449, "cityscapes": 500}
"""Images in each dataset's published val list."""

_FOLDERS = {"voc": "pascal", "cityscapes": "cityscapes"}  # dataset name -> folder in the package


def published_splits(dataset: str, num_labels: int) -> Splits:
    """The published split of ``dataset`` with ``num_labels`` labeled images.

    Returns fresh lists: labeled (``num_labels`` ids), unlabeled (the other train ids), valid (the
    dataset's val list) and an empty test list. Raises :class:`UserError` for an unknown dataset or
    a count without a published split.
    """
    folder = _folder(dataset)
    if num_labels not in PUBLISHED_COUNTS[dataset]:
        counts = ", ".join(str(n) for n in PUBLISHED_COUNTS[dataset])
        raise UserError(
            f"data.num_labels={num_labels} has no published {dataset} split (published counts: "
            f"{counts}); pick one of those, or set data.splits to a folder of your own split "
            "files, written with `prcl splits make`"
        )
    return Splits(
        labeled=list(_read_list(f"{folder}/{num_labels}/labeled.txt.gz")),
        unlabeled=list(_read_list(f"{folder}/{num_labels}/unlabeled.txt.gz")),
        valid=published_valid(dataset),
    )


def published_valid(dataset: str) -> list[str]:
    """The published val list of ``dataset`` (1,449 VOC ids or 500 Cityscapes paths), fresh."""
    return list(_read_list(f"{_folder(dataset)}/val.txt.gz"))


def _folder(dataset: str) -> str:
    """The package folder of ``dataset``; UserError naming the known datasets otherwise."""
    if dataset not in _FOLDERS:
        known = ", ".join(_FOLDERS)
        raise UserError(f"no published splits for dataset {dataset!r}; known: {known}")
    return _FOLDERS[dataset]


@functools.lru_cache(maxsize=None)
def _read_list(relative_path: str) -> tuple[str, ...]:
    """Entries of one shipped ``.txt.gz`` list (one per line, blank lines skipped), cached."""
    resource = resources.files("prcl.data").joinpath("published_splits")
    for part in relative_path.split("/"):
        resource = resource.joinpath(part)
    text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
