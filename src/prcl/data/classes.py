"""Class names and colours of a run: the dataset's own, a classes file beside your data, or the config's.

Where each comes from, first found wins (names and colours separately):

1. the config: ``data.class_names`` (when set, no classes file is read) and ``data.class_colors``;
2. a folder dataset's classes file in ``data.root``: ``classes.yaml`` or ``classes.txt`` (not both);
3. the dataset's own: the VOC names with the VOC colour map, the Cityscapes names with the Cityscapes
   colours, the demo's names with its mask colours; a folder dataset ``class_0``, ``class_1``, ...
   A class the file gives no colour gets the VOC colour map's colour of its index.

``classes.txt``: one class per line in class index order, the name alone or followed by a colon and
three integers 0..255, ``road: 128 64 128`` (commas may separate them); blank lines and lines starting
with ``#`` are skipped. ``classes.yaml``: a list, one entry per class in index order, each a name or
a mapping ``{name: road, color: [128, 64, 128]}``. A file naming another number of classes than
``data.num_classes``, an empty or repeated name, or a colour that is not three integers 0..255 is one
:class:`prcl.errors.UserError` line naming the file (and the line or class).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prcl.config import DataConfig, check_unique_names, is_rgb
from prcl.data.datasets import CITYSCAPES_CLASS_NAMES, VOC_CLASS_NAMES
from prcl.data.demo_dataset import demo_class_colors, demo_class_names
from prcl.errors import UserError
from prcl.yaml_files import read_yaml

Color = tuple[int, int, int]

CLASSES_FILES = ("classes.yaml", "classes.txt")
"""The classes files looked for in a folder dataset's ``data.root``."""

# The Cityscapes colours of the 19 train ids, in CITYSCAPES_CLASS_NAMES order (cityscapesScripts' labels.py).
CITYSCAPES_CLASS_COLORS: tuple[Color, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def voc_color_map(count: int) -> np.ndarray:
    """(count, 3) uint8: the PASCAL VOC colour map, each class index's bits interleaved into R, G, B.

    Class 0 is black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...; colours stay distinct for
    up to 2**24 classes. The default colours of classes nobody gave a colour.
    """
    colours = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        colours[index] = (red, green, blue)
    return colours


@dataclass
class ClassInfo:
    """One name and one RGB colour per class, in class index order."""

    names: list[str]
    colors: list[Color]


def dataset_classes(data: DataConfig) -> ClassInfo:
    """The classes a dataset brings itself (step 3 of the module docstring), for ``data.num_classes`` classes."""
    count = data.num_classes
    if count is None:
        raise ValueError("dataset_classes needs a resolved config (data.num_classes set)")
    default_colors = [_color(c) for c in voc_color_map(count)]
    if data.dataset == "voc":
        return ClassInfo(list(VOC_CLASS_NAMES), default_colors)
    if data.dataset == "cityscapes":
        return ClassInfo(list(CITYSCAPES_CLASS_NAMES), list(CITYSCAPES_CLASS_COLORS))
    if data.dataset == "demo":
        return ClassInfo(demo_class_names(data.demo.num_classes), demo_class_colors(data.demo.num_classes))
    return ClassInfo([f"class_{k}" for k in range(count)], default_colors)


def run_classes(data: DataConfig, root: Path | None) -> ClassInfo:
    """The names and colours of a run (see the module docstring); ``root`` is the dataset's folder."""
    classes = dataset_classes(data)
    if data.class_names is None and data.dataset == "folder" and root is not None:
        path = find_classes_file(root)
        if path is not None:
            entries = read_classes_file(path)
            if len(entries) != data.num_classes:
                raise UserError(f"{path} names {len(entries)} classes but data.num_classes is {data.num_classes}: "
                                f"list one class per line (class index order), or set data.num_classes="
                                f"{len(entries)}")
            classes = ClassInfo([name for name, _ in entries],
                                [color or default for (_, color), default in zip(entries, classes.colors)])
    if data.class_names is not None:
        classes.names = list(data.class_names)
    if data.class_colors is not None:
        classes.colors = [_color(c) for c in data.class_colors]
    return classes


def find_classes_file(root: Path) -> Path | None:
    """``root/classes.yaml`` or ``root/classes.txt``, None when neither exists; UserError when both do."""
    found = [root / name for name in CLASSES_FILES if (root / name).is_file()]
    if len(found) > 1:
        raise UserError(f"{root} holds both {CLASSES_FILES[0]} and {CLASSES_FILES[1]}: keep one of them")
    return found[0] if found else None


def read_classes_file(path: Path) -> list[tuple[str, Color | None]]:
    """(name, colour or None) per class from a ``classes.yaml`` or ``classes.txt`` (any other name: as text)."""
    entries = _read_yaml_entries(path) if path.suffix in (".yaml", ".yml") else _read_text_entries(path)
    check_unique_names([name for name, _ in entries], str(path))
    if not entries:
        raise UserError(f"{path} names no class: list one class per line, in class index order")
    return entries


def _read_text_entries(path: Path) -> list[tuple[str, Color | None]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {' '.join(str(error).split())}") from None
    entries: list[tuple[str, Color | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, color_text = line.rpartition(":") if ":" in line else (line, "", "")
        name = name.strip()
        if not name:
            raise UserError(f"{path} line {number} gives no class name: write 'name' or 'name: R G B'")
        color = None
        if colon:
            parts = [p for p in re.split(r"[\s,]+", color_text.strip()) if p]
            values = [int(p) for p in parts if re.fullmatch(r"[0-9]+", p)]
            if len(values) != len(parts) or not is_rgb(values):
                raise UserError(f"{path} line {number}: the color of {name!r} must be three integers 0..255 "
                                f"(R G B, e.g. '{name}: 128 64 128'), got {color_text.strip()!r}")
            color = _color(values)
        entries.append((name, color))
    return entries


def _read_yaml_entries(path: Path) -> list[tuple[str, Color | None]]:
    content = read_yaml(path, "classes file")
    shape = "a list with one entry per class in index order, each a name or {name: NAME, color: [R, G, B]}"
    if not isinstance(content, list):
        raise UserError(f"{path} must hold {shape}, got {type(content).__name__}")
    return [_yaml_entry(path, index, entry, shape) for index, entry in enumerate(content)]


def _yaml_entry(path: Path, index: int, entry: Any, shape: str) -> tuple[str, Color | None]:
    where = f"{path}, class {index}"
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: {entry!r} is not a name (quote names such as 'no' or '1') nor "
                        "{name: NAME, color: [R, G, B]}")
    unknown = [str(key) for key in entry if key not in ("name", "color")]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; an entry holds name and color")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: the name must be text, got {name!r}; {path} must hold {shape}")
    color = entry.get("color")
    if color is not None and not is_rgb(color):
        raise UserError(f"{where}: the color of {name!r} must be three integers 0..255 [R, G, B], got {color!r}")
    return name.strip(), _color(color) if color is not None else None


def _color(value: Any) -> Color:
    red, green, blue = (int(c) for c in value)
    return red, green, blue
