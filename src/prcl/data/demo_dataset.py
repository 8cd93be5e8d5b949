"""The embedded demo dataset: texture mosaics made from pictures bundled in scikit-image.

No download is possible on a fresh offline machine, so the default data is generated. Each
image is cut into random regions (a warped, weighted Voronoi partition of 3-6 cells, at least 2
classes per image); each region shows a randomly scaled, rotated, flipped and recoloured patch
of one source picture, and its label is that picture's class index.

Colour alone must not give the answer: every region's luminance is standardised to a random
mean and contrast, and its chroma is rotated to a random hue, rescaled and tinted, so mean
colour carries (almost) no class information and the network has to use texture.

Sources: only pictures stored inside the scikit-image wheel (``skimage.data``; nothing is
fetched), all CC0 or public domain per their ``skimage.data`` docstrings.

The dataset is written in the folder layout of :class:`prcl.data.datasets.FolderDataset`::

    root/images/<id>.png          RGB, image_size x image_size
    root/masks/<id>.png           palette PNG, value = class index (masks exist for every image;
                                  the unlabeled split simply does not use them)
    root/splits/<num_labels>/<split_seed>/{labeled,unlabeled,valid}_filename.txt
    root/splits/test_filename.txt
    root/demo.json                parameters and class names; written last (completion marker)

Ids: ``train_00000``..., ``valid_00000``..., ``test_00000``....
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from prcl.data.splits import SPLIT_NAMES, make_splits, split_dir, write_id_list, write_splits
from prcl.errors import UserError
from prcl.io import process_alive, reason_of

GENERATOR_VERSION = 1
"""Bump when the rendered images change, so cached datasets are regenerated."""

MARKER_NAME = "demo.json"

# (skimage.data function, class name). Order = class index; the first ``num_classes`` are used.
DEMO_SOURCES: tuple[tuple[str, str], ...] = (
    ("brick", "brick"),  # CC0 (CC0Textures Bricks25)
    ("grass", "grass"),  # CC0 (CC0Textures Grass001)
    ("gravel", "gravel"),  # CC0 (CC0Textures Gravel04)
    ("chelsea", "fur"),  # CC0 (Stefan van der Walt)
    ("coffee", "coffee"),  # CC0 (Rachel Michetti)
    ("hubble_deep_field", "stars"),  # public domain (NASA)
    ("rocket", "rocket"),  # public domain (SpaceX)
    ("camera", "camera"),  # CC0 (Lav Varshney)
    ("astronaut", "astronaut"),  # public domain (NASA)
    ("cell", "cell"),  # CC0
    ("retina", "retina"),  # CC0
    ("clock", "clock"),  # public domain (Stefan van der Walt)
)

# RGB <-> YIQ: Y is luminance, (I, Q) the chroma plane; a hue change is a rotation of (I, Q).
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)

_PYRAMID_FACTORS = (1, 2, 4)


@dataclass(frozen=True)
class DemoParams:
    """Everything that determines the rendered images (not the split files).

    No defaults: the values come from the caller (the config's ``data.demo`` section).
    """

    num_train: int
    num_valid: int
    num_test: int
    image_size: int
    num_classes: int
    seed: int
    version: int = GENERATOR_VERSION

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def demo_class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` demo classes (class index order)."""
    _check_num_classes(num_classes)
    return [name for _, name in DEMO_SOURCES[:num_classes]]


def default_cache_dir() -> Path:
    """``$PRCL_CACHE`` if set, else ``~/.cache/prcl``."""
    env = os.environ.get("PRCL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prcl"


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= len(DEMO_SOURCES):
        raise UserError(
            f"demo num_classes={num_classes} must be between 2 and {len(DEMO_SOURCES)}"
        )


# ----------------------------------------------------------------------------- sources


@lru_cache(maxsize=None)
def _load_source(name: str) -> tuple[Image.Image, ...]:
    """A source picture as PIL images at scale factors 1, 2, 4 (mode L or RGB)."""
    import skimage.data

    try:
        array = getattr(skimage.data, name)()
    except Exception as error:  # a stripped install would try to download: refuse clearly
        raise UserError(
            f"scikit-image sample picture {name!r} is not available offline ({error}); "
            "reinstall scikit-image from its wheel"
        ) from None
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) * (255.0 / max(float(array.max()), 1.0))).astype(np.uint8)
    if array.ndim == 3:
        array = array[..., :3]
    base = Image.fromarray(array)
    return tuple(base if f == 1 else base.reduce(f) for f in _PYRAMID_FACTORS)


# ----------------------------------------------------------------------------- rendering


def _partition(rng: np.random.Generator, size: int) -> np.ndarray:
    """A warped, multiplicatively weighted Voronoi partition: cell index per pixel (size, size)."""
    num_cells = int(rng.integers(3, 7))
    seeds = rng.uniform(0, size, (num_cells, 2)).astype(np.float32)
    weights = rng.uniform(0.7, 1.3, num_cells).astype(np.float32)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)  # (2, size, size): y, x
    # a smooth random displacement makes the boundaries curvy instead of straight
    coarse = rng.normal(0.0, 0.08 * size, (2, 4, 4)).astype(np.float32)
    for axis in range(2):
        warp = Image.fromarray(coarse[axis]).resize((size, size), Image.BICUBIC)
        grid[axis] += np.asarray(warp)
    dist = np.sqrt(((grid[None] - seeds[:, :, None, None]) ** 2).sum(1)) / weights[:, None, None]
    return dist.argmin(0)


def _patch(rng: np.random.Generator, source: tuple[Image.Image, ...], size: int) -> np.ndarray:
    """A randomly zoomed, rotated and flipped view of ``source``: float32 (size, size, 3)."""
    full = source[0]
    largest = size / 2 * math.sqrt(2)  # half-diagonal of the output window, any rotation
    zoom_max = 0.98 * min(full.size) / (2 * largest)  # keep the rotated window inside the source
    zoom = min(float(np.exp(rng.uniform(0.0, math.log(3.0)))), zoom_max)  # source px per output px
    level = max(k for k, f in enumerate(_PYRAMID_FACTORS) if f <= max(zoom, 1.0))
    factor = _PYRAMID_FACTORS[level]
    picture, step = source[level], zoom / factor
    width, height = picture.size
    reach = largest * step
    center_x = rng.uniform(reach, max(width - reach, reach))
    center_y = rng.uniform(reach, max(height - reach, reach))
    angle = rng.uniform(0, 2 * math.pi)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    cos, sin = math.cos(angle) * step, math.sin(angle) * step
    a, b, d, e = cos * flip, -sin, sin * flip, cos  # output (x, y) -> source, about the centres
    half = size / 2
    coeffs = (a, b, center_x - a * half - b * half, d, e, center_y - d * half - e * half)
    view = picture.transform((size, size), Image.Transform.AFFINE, coeffs, Image.BILINEAR)
    out = np.asarray(view, dtype=np.float32) / 255.0
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


def _recolour(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Random luminance mean/contrast, hue rotation, saturation and tint: (n, 3) -> (n, 3)."""
    yiq = pixels @ _RGB_TO_YIQ.T
    luma = yiq[:, 0]
    luma = (luma - luma.mean()) / (luma.std() + 1e-3)
    yiq[:, 0] = luma * rng.uniform(0.08, 0.22) + rng.uniform(0.3, 0.7)
    angle = rng.uniform(0, 2 * math.pi)
    gain = rng.uniform(0.3, 1.5)
    rotation = gain * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], np.float32
    )
    tint_angle = rng.uniform(0, 2 * math.pi)
    tint_direction = np.array([math.cos(tint_angle), math.sin(tint_angle)], np.float32)
    tint = rng.uniform(0.0, 0.15) * tint_direction
    yiq[:, 1:] = yiq[:, 1:] @ rotation.T + tint
    return np.clip(yiq @ _YIQ_TO_RGB.T, 0.0, 1.0)


def render_demo_sample(
    rng: np.random.Generator, image_size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic: image uint8 (image_size, image_size, 3) and mask uint8 (same H, W)."""
    _check_num_classes(num_classes)
    sources = [_load_source(name) for name, _ in DEMO_SOURCES[:num_classes]]
    present: np.ndarray = np.zeros(0)
    while len(present) < 2:  # a weighted cell can swallow others; one left is redrawn
        cells = _partition(rng, image_size)
        present = np.unique(cells)
    # distinct classes while there are enough, else random with at least two different
    if len(present) <= num_classes:
        classes = rng.permutation(num_classes)[: len(present)]
    else:
        classes = rng.integers(0, num_classes, len(present))
        if len(set(classes.tolist())) < 2:
            classes[0] = (classes[1] + 1 + rng.integers(0, num_classes - 1)) % num_classes
    mask = np.zeros((image_size, image_size), np.uint8)
    image = np.zeros((image_size, image_size, 3), np.float32)
    for cell, label in zip(present, classes):
        region = cells == cell
        mask[region] = label
        patch = _patch(rng, sources[int(label)], image_size)
        image[region] = _recolour(rng, patch[region])
    return (image * 255.0 + 0.5).astype(np.uint8), mask


def demo_class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The colours of the first ``num_classes`` demo classes (RGB, class index order), as in the mask PNGs."""
    rng = np.random.default_rng(12345)
    base = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
            (0, 128, 128), (170, 110, 40)]  # fmt: skip
    return [base[k] if k < len(base) else tuple(int(v) for v in rng.integers(0, 256, 3))
            for k in range(num_classes)]


def _palette(num_classes: int) -> list[int]:
    """A palette for the mask PNGs: the classes' colours, black for unused values, white for 255 (ignore)."""
    colours = demo_class_colors(num_classes) + [(0, 0, 0)] * (256 - num_classes)
    colours[255] = (255, 255, 255)
    return [v for c in colours for v in c]


# ----------------------------------------------------------------------------- writing


def _render_to(folder: Path, params: DemoParams) -> dict[str, list[str]]:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    palette = _palette(params.num_classes)
    roles = {"train": params.num_train, "valid": params.num_valid, "test": params.num_test}
    ids: dict[str, list[str]] = {}
    index = 0
    for role, count in roles.items():
        ids[role] = []
        for k in range(count):
            image_id = f"{role}_{k:05d}"
            rng = np.random.default_rng([params.seed, index])
            image, mask = render_demo_sample(rng, params.image_size, params.num_classes)
            Image.fromarray(image).save(folder / "images" / f"{image_id}.png")
            mask_png = Image.fromarray(mask)  # mode L; putpalette turns it into P, same values
            mask_png.putpalette(palette)
            mask_png.save(folder / "masks" / f"{image_id}.png")
            ids[role].append(image_id)
            index += 1
    return ids


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def generate_demo_dataset(
    root: str | os.PathLike | None = None,
    *,
    num_train: int,
    num_valid: int,
    num_test: int,
    image_size: int,
    num_classes: int,
    seed: int,
    num_labels: int | Sequence[int],
    split_seeds: int | Sequence[int],
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the demo dataset (if not already there) and return its root folder.

    The counts, size, classes and seeds have no defaults here: they come from the caller, i.e. the
    config (``data.demo.*``, ``data.num_labels``, ``data.split_seed``; see
    :func:`prcl.engine.data_setup.demo_root`).

    ``root`` defaults to ``<cache_dir>/demo/<hash of the image parameters>`` with ``cache_dir``
    defaulting to ``$PRCL_CACHE`` or ``~/.cache/prcl``. Idempotent: a complete dataset with the
    same parameters is reused; one with other parameters is replaced. Images are rendered into a
    temporary sibling folder that is renamed into place, so a crash never leaves a half-written
    dataset. Split files are written for every (num_labels, split_seed) pair asked for (train ids
    split by :func:`prcl.data.splits.make_splits`; valid = all valid images).
    """
    _check_num_classes(num_classes)
    for name, value in (("num_train", num_train), ("num_valid", num_valid)):
        if value < 1:
            raise UserError(f"demo {name}={value} must be at least 1")
    if num_test < 0:
        raise UserError(f"demo num_test={num_test} must be at least 0")
    if image_size < 16:
        raise UserError(f"demo image_size={image_size} must be at least 16")
    labels_list = [num_labels] if isinstance(num_labels, int) else list(num_labels)
    seeds_list = [split_seeds] if isinstance(split_seeds, int) else list(split_seeds)
    for count in labels_list:
        if not 1 <= count <= num_train:
            raise UserError(f"demo num_labels={count} must be between 1 and num_train={num_train}")
    params = DemoParams(num_train, num_valid, num_test, image_size, num_classes, seed)
    if root is None:
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        root = base / "demo" / params.digest()
    root = Path(root).expanduser().absolute()
    wanted = {**asdict(params), "class_names": demo_class_names(num_classes)}

    remove_dead_work_folders(root.parent)  # what a build killed before its rename left
    marker = _read_marker(root)
    if marker != wanted:
        if root.exists() and marker is None and any(root.iterdir()):
            raise UserError(
                f"{root} exists and is not a demo dataset; choose an empty or new folder"
            )
        _build(root, params, wanted)

    ids_train = [f"train_{k:05d}" for k in range(num_train)]
    ids_valid = [f"valid_{k:05d}" for k in range(num_valid)]
    for count in labels_list:
        for split_seed in seeds_list:
            folder = split_dir(root / "splits", count, split_seed)
            if not all((folder / f"{n}_filename.txt").is_file() for n in SPLIT_NAMES):
                splits = make_splits(ids_train, ids_valid, count, split_seed)
                write_splits(root / "splits", count, split_seed, splits)
    test_file = root / "splits" / "test_filename.txt"
    if not test_file.is_file():
        write_id_list(test_file, [f"test_{k:05d}" for k in range(num_test)])
    return root


# .<name>.tmp-<host>-<pid>-<random> (and .old-): a build's private folders (older builds wrote no host)
_WORK_FOLDER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{8}$")


def _sibling(root: Path, kind: str) -> Path:
    """A private folder beside ``root``: ``.<name>.<kind>-<host>-<pid>-<random>`` (kind "tmp" or "old")."""
    return root.parent / f".{root.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_work_folders(folder: Path) -> list[Path]:
    """Remove the "tmp" and "old" folders (:func:`_sibling`) that :func:`_build` leaves in ``folder`` when its
    process is killed, once that process is gone; a running build keeps its own, and another machine's (a shared
    cache) are left alone. A stop signal lets a build remove its own."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = socket.gethostname()
    for entry in entries:
        match = _WORK_FOLDER.match(entry.name)
        if (match and match["host"] in (None, host) and entry.is_dir(follow_symlinks=False)
                and not process_alive(int(match["pid"]))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _build(root: Path, params: DemoParams, wanted: dict) -> None:
    """Render into a temporary sibling folder, then move it into place atomically. A failed write (a full
    disk) is one line naming the folder; a stop signal (``prcl.stopping``, a KeyboardInterrupt) removes the
    temporary folder, and one left by a killed process is removed by the next build."""
    try:
        _build_folder(root, params, wanted)
    except OSError as error:
        raise UserError(f"cannot write the demo dataset {root}: {reason_of(error)}; free space there or set "
                        "PRCL_CACHE (or data.root) to another folder") from None


def _build_folder(root: Path, params: DemoParams, wanted: dict) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(root, "tmp")
    try:
        _render_to(tmp, params)
        (tmp / MARKER_NAME).write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        if root.exists():  # stale dataset (other parameters) or an empty folder: set it aside
            old = _sibling(root, "old")
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            # another process finished the same dataset first: keep theirs if it is complete
            if _read_marker(root) != wanted:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
