"""Split files: which image ids are labeled, unlabeled and used for validation.

Layout (the release's): ``<root>/<num_labels>/<seed>/{labeled,unlabeled,valid}_filename.txt``,
one image id per line. Files may end without a final newline (the release's do); blank lines
and surrounding whitespace are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from prcl.errors import UserError
from prcl.io import atomic_write

SPLIT_NAMES = ("labeled", "unlabeled", "valid")


@dataclass
class Splits:
    """Image ids of one semi-supervised split (order is kept as written)."""

    labeled: list[str]
    unlabeled: list[str]
    valid: list[str]
    test: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labeled = list(self.labeled)
        self.unlabeled = list(self.unlabeled)
        self.valid = list(self.valid)
        self.test = list(self.test)


def split_dir(root: str | os.PathLike, num_labels: int, seed: int) -> Path:
    """The folder ``<root>/<num_labels>/<seed>`` that holds one split's files."""
    return Path(root) / str(int(num_labels)) / str(int(seed))


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read one id per line; blank lines are skipped, a missing final newline is fine."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path} (write splits with `prcl splits`)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file of image ids (not UTF-8); give one id per line") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}); check its permissions") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_id_list(path: str | os.PathLike, ids: Iterable[str]) -> Path:
    """Write one id per line (with a final newline), atomically (``prcl.io.atomic_write``)."""
    path = Path(path)
    text = "".join(f"{i}\n" for i in ids)
    with atomic_write(path, "w") as stream:
        stream.write(text)
    return path


def read_splits(root: str | os.PathLike, num_labels: int, seed: int) -> Splits:
    """Read ``<root>/<num_labels>/<seed>/{labeled,unlabeled,valid}_filename.txt``."""
    folder = split_dir(root, num_labels, seed)
    if not folder.is_dir():
        raise UserError(
            f"split folder not found: {folder} (check data.splits, data.num_labels and "
            "data.split_seed, or write splits with `prcl splits`)"
        )
    lists = {name: read_id_list(folder / f"{name}_filename.txt") for name in SPLIT_NAMES}
    return Splits(**lists)


def existing_split_files(root: str | os.PathLike, num_labels: int, seed: int) -> list[Path]:
    """The split files already under ``<root>/<num_labels>/<seed>/`` (empty when there are none)."""
    folder = split_dir(root, num_labels, seed)
    return [folder / f"{name}_filename.txt" for name in SPLIT_NAMES if (folder / f"{name}_filename.txt").exists()]


def write_splits(
    root: str | os.PathLike, num_labels: int, seed: int, splits: Splits, overwrite: bool = True
) -> Path:
    """Write the three split files under ``<root>/<num_labels>/<seed>/``; returns that folder.

    Each file is written atomically, and all three are complete on disk before the first replaces
    its old version, so an error while writing leaves the old files as they were. With
    ``overwrite=False`` existing split files there raise UserError instead of being replaced.
    """
    folder = split_dir(root, num_labels, seed)
    if not overwrite:
        existing = existing_split_files(root, num_labels, seed)
        if existing:
            raise UserError(
                f"split folder {folder} already holds {', '.join(p.name for p in existing)}; "
                "pass --force to replace them, or choose another --out, --num-labels or --seed"
            )
    texts = {name: "".join(f"{i}\n" for i in getattr(splits, name)) for name in SPLIT_NAMES}
    with ExitStack() as stack:  # all three on disk before any rename: a failed write replaces none
        for name in SPLIT_NAMES:
            stream = stack.enter_context(atomic_write(folder / f"{name}_filename.txt", "w"))
            stream.write(texts[name])
            stream.flush()
            os.fsync(stream.fileno())
    return folder


def make_splits(
    ids_train: Sequence[str], ids_valid: Sequence[str], num_labels: int, seed: int
) -> Splits:
    """Draw ``num_labels`` labeled ids from ``ids_train``; the other train ids are unlabeled.

    Deterministic: the result depends only on the *set* of train ids, ``num_labels`` and ``seed``
    (ids are sorted before a numpy ``Generator(seed)`` permutes them), not on the input order.
    """
    train = [str(i) for i in ids_train]
    _raise_on_duplicates(train, "train ids")
    _raise_on_duplicates([str(i) for i in ids_valid], "valid ids")
    train_set = set(train)
    leaked = [str(i) for i in ids_valid if str(i) in train_set]
    if leaked:
        raise UserError(
            f"{len(leaked)} valid ids are also train ids ({_first_ids(leaked)}); validation images must "
            "not be trained on: remove them from the train list (or from the valid list)"
        )
    if not 1 <= num_labels <= len(train):
        raise UserError(
            f"num_labels={num_labels} must be between 1 and the number of train images "
            f"({len(train)})"
        )
    ordered = sorted(train)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[k] for k in order]
    return Splits(
        labeled=shuffled[:num_labels], unlabeled=shuffled[num_labels:], valid=list(ids_valid)
    )


def check_splits(
    splits: Splits,
    image_path: Callable[[str], Path] | None = None,
    allow_valid_in_train: bool = False,
    mask_path: Callable[[str], Path] | None = None,
) -> None:
    """Raise ``UserError`` on a broken split; return ``None`` when it is fine.

    Checks: no id twice within a list; no id both labeled and unlabeled; (unless
    ``allow_valid_in_train``) no valid id among the train ids; when ``image_path`` is given
    (e.g. ``dataset.image_path``), that every id's image file exists; and when ``mask_path`` is
    given, that every labeled and valid id's mask file exists. Missing files are reported on one
    line: how many, then the first few ids with the paths where their files were expected.
    """
    for name in (*SPLIT_NAMES, "test"):
        _raise_on_duplicates(getattr(splits, name), f"{name} split")
    labeled = set(splits.labeled)
    both = [i for i in splits.unlabeled if i in labeled]
    if both:
        raise UserError(
            f"{len(both)} ids are both labeled and unlabeled (first: {both[0]!r}); "
            "fix the split files or write new ones with `prcl splits`"
        )
    if not allow_valid_in_train:
        train = labeled.union(splits.unlabeled)
        leaked = [i for i in splits.valid if i in train]
        if leaked:
            raise UserError(
                f"{len(leaked)} valid ids are also train ids ({_first_ids(leaked)}); "
                "validation images must not be trained on"
            )
    missing = missing_files(splits, image_path, mask_path)
    if missing:
        raise UserError(f"{describe_missing(missing)}; check data.root or the split files")


@dataclass(frozen=True)
class MissingFile:
    """One file a split names that is not on disk: which list, which id, image or mask, where."""

    split: str
    image_id: str
    kind: str
    path: Path


def missing_files(
    splits: Splits,
    image_path: Callable[[str], Path] | None = None,
    mask_path: Callable[[str], Path] | None = None,
) -> list[MissingFile]:
    """Files the split names that do not exist, in list order (labeled, unlabeled, valid, test).

    With ``image_path`` every id's image is looked for; with ``mask_path`` the mask of every
    labeled and valid id (unlabeled and test ids need no mask). Without either: an empty list.
    """
    missing: list[MissingFile] = []
    for name in (*SPLIT_NAMES, "test"):
        for image_id in getattr(splits, name):
            if image_path is not None:
                path = Path(image_path(image_id))
                if not path.is_file():
                    missing.append(MissingFile(name, image_id, "image", path))
            if mask_path is not None and name in ("labeled", "valid"):
                path = Path(mask_path(image_id))
                if not path.is_file():
                    missing.append(MissingFile(name, image_id, "mask", path))
    return missing


class FileLayout(Protocol):
    """Where a dataset keeps an id's files (e.g. a ``SegmentationDataset``)."""

    def image_path(self, image_id: str) -> Path: ...

    def mask_path(self, image_id: str) -> Path: ...


def missing_split_files(splits: Splits, train: FileLayout, valid: FileLayout) -> list[MissingFile]:
    """Missing files of a split: labeled and unlabeled ids looked up in ``train``, valid ids in
    ``valid`` (Cityscapes keeps them in another folder); masks of labeled and valid ids too."""
    return (missing_files(Splits(splits.labeled, splits.unlabeled, []), train.image_path, train.mask_path)
            + missing_files(Splits([], [], splits.valid), valid.image_path, valid.mask_path))


def describe_missing(missing: Sequence[MissingFile], first: int = 3) -> str:
    """One line: how many files are missing and the first ``first`` of them with their paths."""
    shown = "; ".join(f"{m.split} {m.kind} of {m.image_id!r}: {m.path}" for m in missing[:first])
    more = f"; and {len(missing) - first} more" if len(missing) > first else ""
    noun = "file is" if len(missing) == 1 else "files are"
    return f"{len(missing)} {noun} missing ({shown}{more})"


def _first_ids(ids: Sequence[str], first: int = 3) -> str:
    """``first: 'a', 'b', 'c', ...`` for a one-line message."""
    more = ", ..." if len(ids) > first else ""
    return "first: " + ", ".join(repr(i) for i in ids[:first]) + more


def _raise_on_duplicates(ids: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise UserError(f"{what} lists {i!r} more than once; each id must appear once")
        seen.add(i)
