"""Pictures of predictions: class palettes, overlays, heatmaps, titled grids (Pillow + numpy).

Every function takes and returns numpy arrays: images are (H, W, 3) uint8, masks (H, W) integer
class indices where -1 (the package's ignore value) and 255 (the files' ignore value) mean ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prcl.constants import IGNORE_INDEX
from prcl.data.classes import voc_color_map
from prcl.data.datasets import FILE_IGNORE_VALUE
from prcl.io import atomic_write

IGNORE_VALUES = (IGNORE_INDEX, FILE_IGNORE_VALUE)

# A viridis-like ramp (perceptually ordered, luminance rising from dark violet to yellow):
# (position, RGB) anchors interpolated linearly.
_RAMP_POSITIONS = np.linspace(0.0, 1.0, 9)
_RAMP_COLOURS = np.array(
    [
        (68, 1, 84),
        (72, 40, 120),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (40, 174, 128),
        (94, 201, 98),
        (173, 220, 48),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the PASCAL VOC colour map (class bits interleaved into R, G, B).

    Class 0 is black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...; colours stay distinct
    for up to 2**24 classes. The colours of classes that were given none (see :func:`class_palette`).
    """
    return voc_color_map(num_classes)


def class_palette(num_classes: int, colors: Sequence[Sequence[int]] | np.ndarray | None = None) -> np.ndarray:
    """(num_classes, 3) uint8: ``colors`` (one RGB per class, e.g. a run's ``class_colors``), or
    :func:`palette` when None. ValueError when ``colors`` holds fewer than ``num_classes`` colours."""
    if colors is None:
        return palette(num_classes)
    table = np.asarray(colors, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3 or len(table) < num_classes:
        raise ValueError(f"colors must be one (R, G, B) per class for {num_classes} classes, got shape {table.shape}")
    if table.min(initial=0) < 0 or table.max(initial=0) > 255:
        raise ValueError("colors must be integers 0..255")
    return table[:num_classes].astype(np.uint8)


def _ignored(mask: np.ndarray, num_classes: int) -> np.ndarray:
    ignored = mask == IGNORE_INDEX
    if num_classes <= FILE_IGNORE_VALUE:
        ignored |= mask == FILE_IGNORE_VALUE
    return ignored


def colorize(
    mask: np.ndarray, num_classes: int, ignore_colour: tuple[int, int, int] = (255, 255, 255),
    colors: Sequence[Sequence[int]] | np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours of :func:`class_palette` (``colors``, or the VOC
    colour map when None); ignore pixels get ``ignore_colour``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    mask = mask.astype(np.int64)
    ignored = _ignored(mask, num_classes)
    kept = mask[~ignored]
    if kept.size and (kept.min() < 0 or kept.max() >= num_classes):
        bad = kept.min() if kept.min() < 0 else kept.max()
        raise ValueError(f"mask value {bad} is out of range for {num_classes} classes")
    image = class_palette(num_classes, colors)[np.where(ignored, 0, mask)]
    image[ignored] = ignore_colour
    return image


def overlay(
    image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, num_classes: int | None = None,
    colors: Sequence[Sequence[int]] | np.ndarray | None = None,
) -> np.ndarray:
    """Blend class colours over an image: (H, W, 3) uint8 -> (H, W, 3) uint8.

    ``mask`` is (H, W) class indices (coloured as :func:`colorize` does with ``colors``; ignore
    pixels keep the image) or an (H, W, 3) uint8 colour picture. ``alpha`` is the weight of the
    colours. ``num_classes`` defaults to the number of ``colors``, else to the largest index + 1.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape} differ in size")
    weight = np.full(mask.shape[:2] + (1,), float(alpha))
    if mask.ndim == 2:
        if num_classes is None and colors is not None:
            num_classes = len(colors)
        if num_classes is None:
            kept = mask[(mask != IGNORE_INDEX) & (mask != FILE_IGNORE_VALUE)]
            num_classes = max(int(kept.max()) + 1 if kept.size else 1, 1)
        colours = colorize(mask, num_classes, colors=colors)
        weight[_ignored(mask.astype(np.int64), num_classes)] = 0.0
    else:
        colours = mask
    blended = (1.0 - weight) * image.astype(np.float64) + weight * colours.astype(np.float64)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 on a viridis-like ramp (dark violet = vmin, yellow = vmax).

    vmin/vmax default to the finite minimum/maximum; values outside are clipped; non-finite
    values are black.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (H, W), got shape {values.shape}")
    finite = np.isfinite(values)
    if vmin is None:
        vmin = float(values[finite].min()) if finite.any() else 0.0
    if vmax is None:
        vmax = float(values[finite].max()) if finite.any() else 1.0
    span = vmax - vmin
    position = (values - vmin) / span if span > 0 else np.zeros_like(values)
    position = np.clip(np.where(finite, position, 0.0), 0.0, 1.0)
    channels = [np.interp(position, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    image = np.rint(np.stack(channels, axis=-1)).astype(np.uint8)
    image[~finite] = 0
    return image


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo mean/std normalisation: (3, H, W) float (numpy or torch) -> (H, W, 3) uint8."""
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {image.shape}")
    rgb = image * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, shortened with "..." until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def make_grid(
    rows: list[list[np.ndarray]],
    column_titles: list[str],
    scale: int = 2,
    path: str | Path | None = None,
    title: str | None = None,
    legend: list[tuple[str, tuple[int, int, int]]] | None = None,
) -> Image.Image:
    """A grid of equally sized (H, W, 3) uint8 tiles, enlarged ``scale`` times (nearest), with titles.

    The picture is (len(columns) * W * scale) wide and (title band + len(rows) * H * scale) high;
    without titles there is no band. ``title`` adds a line above the grid; ``legend`` (name, RGB)
    pairs add colour swatches with their names below it. Saved as PNG (atomically) when ``path`` is
    given.
    """
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one row with one tile")
    columns = len(rows[0])
    if any(len(row) != columns for row in rows):
        raise ValueError("every row of the grid must hold the same number of tiles")
    if column_titles and len(column_titles) != columns:
        raise ValueError(f"{len(column_titles)} column titles for {columns} columns")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    shape = np.asarray(rows[0][0]).shape
    for row in rows:
        for tile in row:
            tile = np.asarray(tile)
            if tile.shape != shape or tile.ndim != 3 or tile.shape[2] != 3:
                raise ValueError(f"every tile must be (H, W, 3) of one size; got {tile.shape} and {shape}")
    tile_h, tile_w = shape[0] * scale, shape[1] * scale

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), "Ag", font=font)
    padding = 3
    band = (bottom - top) + 2 * padding if column_titles else 0

    body = np.concatenate(
        [np.concatenate([np.asarray(tile, dtype=np.uint8) for tile in row], axis=1) for row in rows], axis=0
    )
    body = body.repeat(scale, axis=0).repeat(scale, axis=1)
    canvas = Image.new("RGB", (columns * tile_w, band + len(rows) * tile_h), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (0, band))
    if column_titles:
        draw = ImageDraw.Draw(canvas)
        for column, column_title in enumerate(column_titles):
            text = _fit(str(column_title), draw, font, tile_w - 2 * padding)
            x = column * tile_w + (tile_w - draw.textlength(text, font=font)) / 2
            draw.text((x, padding - top), text, fill=(0, 0, 0), font=font)
    if title or legend:
        canvas = _add_title_and_legend(canvas, title, legend or [], font, padding)
    if path is not None:
        with atomic_write(path, "wb") as stream:
            canvas.save(stream, format="PNG")
    return canvas


def _add_title_and_legend(canvas: Image.Image, title: str | None, legend: list[tuple[str, tuple[int, int, int]]],
                          font: ImageFont.ImageFont, padding: int) -> Image.Image:
    """The grid with a title line above it and, below it, a swatch and a name for each legend entry."""
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), "Ag", font=font)
    line = (bottom - top) + 2 * padding
    swatch = bottom - top
    # Lay the legend out in rows that fit the grid's width.
    rows: list[list[tuple[str, tuple[int, int, int], float]]] = [[]]
    x = padding
    for name, colour in legend:
        width = swatch + padding + draw.textlength(name, font=font) + 3 * padding
        if rows[-1] and x + width > canvas.width:
            rows.append([])
            x = padding
        rows[-1].append((name, tuple(int(c) for c in colour), x))
        x += width
    title_band = line if title else 0
    legend_band = line * len(rows) if legend else 0
    framed = Image.new("RGB", (canvas.width, title_band + canvas.height + legend_band), (255, 255, 255))
    framed.paste(canvas, (0, title_band))
    draw = ImageDraw.Draw(framed)
    if title:
        text = _fit(title, draw, font, canvas.width - 2 * padding)
        draw.text(((canvas.width - draw.textlength(text, font=font)) / 2, padding - top), text, fill=(0, 0, 0),
                  font=font)
    for index, row in enumerate(rows if legend else []):
        y = title_band + canvas.height + index * line + padding
        for name, colour, x in row:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
            draw.text((x + swatch + padding, y - top), name, fill=(0, 0, 0), font=font)
    return framed
