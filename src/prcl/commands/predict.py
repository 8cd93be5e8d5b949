"""`prcl predict`: masks, overlays and uncertainty maps for image files, folders and globs."""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from prcl.commands import require
from prcl.data.datasets import DataFileError, decode_image
from prcl.data.validate import check_output_folder
from prcl.devices import resolve_device
from prcl.errors import UserError
from prcl.stopping import Stopped

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DECODE_THREADS = 2  # prcl predict: threads decoding the next images
ENCODE_THREADS = 2  # and encoding the PNGs of the last ones
UNCERTAINTY_MAPS = ("entropy", "variance")  # what <name>_uncertainty.png shows (predict --uncertainty)


def _image_files_below(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every image file (by extension) anywhere below ``folder``, sorted by path, except below ``exclude``.

    Symbolic links to folders below ``folder`` are not entered (a link back up would loop); links to
    files are taken.
    """
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _outside(p, exclude))


def _outside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` is not below ``folder`` (always, when ``folder`` is None)."""
    return folder is None or not path.resolve().is_relative_to(folder.resolve())


def _name_matches(pattern: str, name: str) -> bool:
    """One path component against one glob component; as ``glob``, a wildcard skips hidden names."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatch(name, pattern)


def _parts_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether the path components ``parts`` match the glob components ``pattern``, where ``**`` stands
    for any number of (non-hidden) folders, none included."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_parts_match(rest, parts[skip:]) for skip in range(len(parts) + 1)
                   if not any(part.startswith(".") for part in parts[:skip]))
    return bool(parts) and _name_matches(head, parts[0]) and _parts_match(rest, parts[1:])


def _may_match_below(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether something below the folder ``parts`` can still match ``pattern`` (else it is not walked)."""
    if not pattern:
        return False
    if pattern[0] == "**":
        return True
    if not parts:
        return True
    return _name_matches(pattern[0], parts[0]) and _may_match_below(pattern[1:], parts[1:])


def _glob_images(pattern: str, exclude: Path | None = None) -> list[Path]:
    """The image files a glob names, walking folders as :func:`_image_files_below` does.

    The components before the first wildcard name the folder that is walked (``os.walk``, which enters
    no symbolic link to a folder, so a link loop cannot make the walk endless); ``**`` matches any number
    of folders, ``*``, ``?`` and ``[...]`` as in ``glob`` (hidden names only when the component starts
    with a dot). A matched folder gives every image below it; a matched file is kept when it has an
    image extension. Nothing below ``exclude`` is taken. Sorted by path.
    """
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    wanted = parts[first:]
    if _parts_match(wanted, ()):  # e.g. "photos/**": the folder itself
        return _image_files_below(base, exclude) if base.is_dir() else []
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(base):
        here = Path(folder)
        relative = here.relative_to(base).parts
        walked = []
        for name in sorted(dirnames):
            path = here / name
            if not _outside(path, exclude):
                continue
            if _parts_match(wanted, relative + (name,)):
                found += _image_files_below(path, exclude)  # a matched folder: everything below it
            elif _may_match_below(wanted, relative + (name,)):
                walked.append(name)
        dirnames[:] = walked
        for name in filenames:
            path = here / name
            if (path.suffix.lower() in IMAGE_SUFFIXES and _parts_match(wanted, relative + (name,))
                    and path.is_file() and _outside(path, exclude)):
                found.append(path)
    return sorted(found)


def _inputs(paths: list[str], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """The image files the inputs name, and one note per input that names none.

    An input is a file (taken whatever its extension), a folder (every image file below it,
    recursively, by extension: ``IMAGE_SUFFIXES``) or a glob the shell left unexpanded (walked as a
    folder is, :func:`_glob_images`, so ``photos/**/*.jpg`` works and a symbolic link loop below
    ``photos`` is not followed). A path that does not exist (and is no glob) raises UserError; an
    empty folder or a glob matching no image is a note. A file reached twice is predicted once.
    Images below ``exclude`` (the output folder, which may lie inside an input folder) are left out
    of folders and globs. When no input names any image, UserError naming them (one line).
    """
    files: list[Path] = []
    notes: list[str] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found = _image_files_below(path, exclude)
            if not found:
                notes.append(f"no images in folder {path}")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(item):
            found = _glob_images(str(path), exclude)
            if not found:
                notes.append(f"no images match {item}")
        else:
            raise UserError(f"input not found: {path} (give image files, folders of images or globs)")
        files += found
    if not files:
        looked = f"looked for {', '.join(IMAGE_SUFFIXES)}"
        raise UserError(f"nothing to predict: {'; '.join(notes) or 'no inputs'} ({looked})")
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), notes


def output_names(files: list[Path]) -> list[str]:
    """The name each input's outputs start with: its stem (``x.jpg`` -> ``x``), or, where two inputs
    share a stem (``x.jpg`` and ``x.png``), the file name with its extension (``x.jpg``, ``x.png``),
    so no output overwrites another. Inputs whose file names are the same too (``a/x.jpg`` and
    ``b/x.jpg``) are refused: predict them into separate folders."""
    stems: dict[str, set[Path]] = {}
    for path in files:
        stems.setdefault(path.stem, set()).add(path.resolve())
    names = [path.stem if len(stems[path.stem]) == 1 else path.name for path in files]
    seen: dict[str, Path] = {}
    for path, name in zip(files, names):
        if name in seen and seen[name].resolve() != path.resolve():
            raise UserError(f"inputs {seen[name]} and {path} would write the same {name}_mask.png; "
                            "predict them into separate --out folders")
        seen[name] = path
    return names


@dataclass
class PredictResult:
    """What :func:`predict_files` did: the mask written per predicted image, and the skipped files."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, why), e.g. "cannot decode: ..."
    notes: list[str] = field(default_factory=list)  # inputs that named no image (empty folders, globs)


def check_views(protocol: str | None, window: int | None, stride: int | None) -> None:
    """UserError (one line) for ``--protocol``/``--window``/``--stride`` that cannot work together."""
    if protocol == "whole" and (window is not None or stride is not None):
        raise UserError("--window and --stride are for --protocol sliding, not whole")
    for flag, value in (("--window", window), ("--stride", stride)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive number of pixels, got {value}")
    if window is not None and stride is not None and stride > window:
        raise UserError(f"--stride ({stride}) must not exceed --window ({window}): pixels between windows "
                        "would get no prediction")


def _set_views(predictor, protocol: str | None, window: int | None, stride: int | None) -> None:
    """Apply --protocol/--window/--stride; unset ones keep the checkpoint config's eval settings.

    ``--window`` or ``--stride`` alone mean sliding. A sliding window not given is the config's
    ``eval.window`` (``data.crop_size`` unless set); a stride not given is two thirds of the window
    when --window is given, else the config's ``eval.stride``.
    """
    if protocol is None and window is None and stride is None:
        return
    if (protocol or "sliding") == "whole":
        predictor.protocol, predictor.window, predictor.stride = "whole", None, None
        return
    cfg = getattr(predictor, "config", None)
    config_window = predictor.window or (cfg.eval.window if cfg is not None else None)
    config_stride = predictor.stride or (cfg.eval.stride if cfg is not None else None)
    if window is None:
        window = config_window
        stride = stride or config_stride
    if window is None:
        raise UserError("--protocol sliding needs --window (the checkpoint's config sets none)")
    stride = stride or max(1, int(window) * 2 // 3)
    check_views("sliding", int(window), int(stride))
    predictor.protocol, predictor.window, predictor.stride = "sliding", int(window), int(stride)


def _decode_ahead(files: list[Path], ahead: int) -> Iterator[tuple[Path, np.ndarray | str]]:
    """(path, decoded (H, W, 3) uint8 picture or the reason it could not be decoded) per file, in order.

    Up to ``ahead`` files are decoded beforehand by a few threads (decoding releases the GIL), so
    reading overlaps the network; at most ``ahead`` decoded pictures wait in memory.
    """
    def decode(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path)
        except DataFileError as error:
            return error.reason

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        pending: deque[tuple[Path, Future]] = deque()
        for path in files:
            pending.append((path, pool.submit(decode, path)))
            if len(pending) > ahead:
                done_path, future = pending.popleft()
                yield done_path, future.result()
        while pending:
            done_path, future = pending.popleft()
            yield done_path, future.result()


def _size_batches(items: Iterable[tuple[Path, np.ndarray | str]], batch_size: int,
                  on_failure: Callable[[Path, str], None]) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Group decoded pictures into batches of one size, at most ``batch_size`` each.

    A size's batch is given out once it is full; when ``4 x batch_size`` pictures wait (sizes that
    rarely repeat), the largest waiting batch goes; at the end, all. Failures go to ``on_failure``.
    """
    waiting: dict[tuple[int, ...], list[tuple[Path, np.ndarray]]] = {}
    held = 0
    for path, picture in items:
        if isinstance(picture, str):
            on_failure(path, picture)
            continue
        size = picture.shape[:2]
        group = waiting.setdefault(size, [])
        group.append((path, picture))
        held += 1
        if len(group) == batch_size or held >= 4 * batch_size:
            if len(group) < batch_size:  # too many waiting: the largest group goes
                size = max(waiting, key=lambda s: len(waiting[s]))
            held -= len(waiting[size])
            yield waiting.pop(size)
    yield from waiting.values()


def predict_files(checkpoint: str | Path, inputs: list[str], out_dir: str | Path, device: str = "cpu",
                  protocol: str | None = None, window: int | None = None, stride: int | None = None,
                  save_probs: bool = False, progress: bool | None = None, batch_size: int = 4,
                  uncertainty: str = "entropy") -> PredictResult:
    """For each image: ``<name>_mask.png`` (a palette PNG whose colours are the checkpoint's class colours,
    else :func:`prcl.infer.visualize.palette`'s), ``<name>_overlay.png`` and
    ``<name>_uncertainty.png`` in ``out_dir``, all at the image's size; with ``save_probs`` also
    ``<name>_probs.npy``, the (C, H, W) float32 softmax probabilities.

    ``uncertainty``: "entropy" (the softmax entropy, any checkpoint; the default: on the demo it
    finds the prediction's errors far better than the variance, docs/usage.md) or "variance" (the
    probability head's mean variance, PRCL checkpoints only).

    ``inputs`` are files, folders (searched recursively) and globs, see :func:`_inputs`. ``<name>``
    is the input's stem (``photo.jpg`` -> ``photo_mask.png``); inputs sharing a stem keep their
    extension (``x.jpg_mask.png`` and ``x.png_mask.png``), see :func:`output_names`. ``protocol``
    ("whole" or "sliding"), ``window`` and ``stride`` replace the checkpoint config's eval settings.
    Images of the same size are predicted ``batch_size`` at a time (:meth:`Predictor.predict_batch`);
    files are decoded and outputs encoded by threads beside the network.

    The device, the inputs, the views, the batch size and the output folder are checked before
    the checkpoint is loaded (UserError). A file that cannot be read or decoded, or whose prediction
    does not fit in memory (a batch that does not is retried one image at a time), is reported on
    stderr (one line, named, with the fix) and skipped; the others are still predicted. Each output is written
    atomically. ``progress``: a tqdm bar on stderr; None shows it only when stderr is a terminal.
    """
    from tqdm import tqdm

    from prcl.infer import Predictor
    from prcl.infer.visualize import palette
    from prcl.io import remove_leftovers

    torch_device = resolve_device(device, "--device")
    check_views(protocol, window, stride)
    if uncertainty not in UNCERTAINTY_MAPS:
        raise UserError(f"--uncertainty must be one of {', '.join(UNCERTAINTY_MAPS)}, got {uncertainty!r}")
    if batch_size < 1:
        raise UserError(f"--batch must be a positive number of images, got {batch_size}")
    out = check_output_folder(out_dir, "--out")
    files, notes = _inputs(inputs, exclude=out)
    names = dict(zip(files, output_names(files)))
    result = PredictResult(notes=notes)
    for note in notes:
        print(f"prcl: {note}; skipped", file=sys.stderr)
    predictor = Predictor.from_checkpoint(checkpoint, device=torch_device)
    if uncertainty == "variance" and predictor.probability_head is None:
        raise UserError(f"{checkpoint} has no probability head (not a PRCL checkpoint), so no variance map; "
                        f"use --uncertainty entropy")
    _set_views(predictor, protocol, window, stride)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)  # what a predict killed while writing left (not those of one still running)
    bar = tqdm(total=len(files), desc="predict", unit="image", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)

    def failed(path: Path, reason: str) -> None:
        result.failed.append((path, reason))
        tqdm.write(f"prcl: skipped {path}: {reason}", file=sys.stderr)
        bar.update(1)

    colors = predictor.palette  # (C, 3), once: the property builds the table at each access
    mask_palette = palette(256)  # values past the classes keep the default colours
    mask_palette[: predictor.num_classes] = colors[:256]
    flat_palette = mask_palette.reshape(-1).tolist()
    writes: deque[tuple[Path, Future]] = deque()

    def finish(path: Path, write: Future) -> None:
        """Wait for one image's outputs; a write error other than running out of memory ends the run."""
        try:
            write.result()
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            failed(path, "out of memory writing its outputs; free memory or predict it alone")
            return
        result.written.append(out / f"{names[path]}_mask.png")
        bar.update(1)

    try:
        with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as writer:
            for batch in _size_batches(_decode_ahead(files, 2 * batch_size), batch_size, failed):
                for (path, picture), prediction in _predict_or_skip(predictor, batch, failed):
                    writes.append((path, writer.submit(_write_outputs, out, names[path], picture, prediction,
                                                       colors, flat_palette, save_probs, uncertainty)))
                while len(writes) > 2 * batch_size:  # a bounded queue; a write error surfaces here
                    finish(*writes.popleft())
            while writes:
                finish(*writes.popleft())
    except Stopped as stop:  # SIGINT / SIGTERM: the images handed to the writers were finished (each file atomic)
        bar.close()
        finished = len(result.written) + sum(1 for _, done in writes if done.done() and done.exception() is None)
        raise stop.with_detail(f"{finished} of {len(files)} images written to {out}") from None
    bar.close()
    return result


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation: Python's MemoryError, torch's OutOfMemoryError (CUDA),
    or the RuntimeError of torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _out_of_memory_reason(predictor, picture: np.ndarray) -> str:
    """Why one picture failed for lack of memory, and what to try (a flag of ``prcl predict``)."""
    height, width = picture.shape[:2]
    if predictor.protocol == "sliding":
        fix = "retry it with a smaller --window"
    else:
        fix = "retry it with --protocol sliding (windows of the crop size, not the whole image at once)"
    return f"out of memory predicting its {width}x{height} pixels; {fix}"


def _predict_or_skip(predictor, batch: list[tuple[Path, np.ndarray]], on_failure: Callable[[Path, str], None]
                     ) -> list[tuple[tuple[Path, np.ndarray], object]]:
    """``((path, picture), prediction)`` per picture of ``batch``. When memory runs out, a batch of
    several is predicted again one picture at a time; a single picture that does not fit goes to
    ``on_failure`` with the flag to retry it with, and the others go on."""
    try:
        return list(zip(batch, predictor.predict_batch([picture for _, picture in batch])))
    except Exception as error:  # only a failed allocation is handled; anything else is re-raised
        if not _is_out_of_memory(error):
            raise
    _release_cached_memory(predictor)  # outside the except block: the failed batch's tensors are freed
    if len(batch) > 1:
        return [done for item in batch for done in _predict_or_skip(predictor, [item], on_failure)]
    path, picture = batch[0]
    on_failure(path, _out_of_memory_reason(predictor, picture))
    return []


def _release_cached_memory(predictor) -> None:
    """Give the GPU memory torch keeps cached back, so the next picture starts from what is really free."""
    import torch

    if predictor.device.type == "cuda":  # a torch.device (Predictor resolves it)
        torch.cuda.empty_cache()


def _write_outputs(out: Path, name: str, picture: np.ndarray, prediction, colors: np.ndarray,
                   flat_palette: list[int], save_probs: bool, uncertainty: str = "entropy") -> None:
    """The files of one prediction (see :func:`predict_files`), each written atomically; ``colors`` are the
    (C, 3) class colours, ``flat_palette`` the mask PNGs' 256 x RGB palette (starting with them) as a flat list."""
    from prcl.infer.visualize import heatmap, overlay
    from prcl.io import atomic_write

    mask = Image.fromarray(prediction.mask.astype(np.uint8), mode="P")
    mask.putpalette(flat_palette)
    outputs = {f"{name}_mask.png": mask,
               f"{name}_overlay.png": Image.fromarray(overlay(picture, prediction.mask, colors=colors))}
    if uncertainty == "entropy":
        outputs[f"{name}_uncertainty.png"] = Image.fromarray(heatmap(prediction.entropy, 0.0, 1.0))
    elif prediction.uncertainty is not None:
        outputs[f"{name}_uncertainty.png"] = Image.fromarray(heatmap(prediction.uncertainty))
    for filename, image in outputs.items():
        with atomic_write(out / filename, "wb") as handle:
            image.save(handle, format="PNG")
    if save_probs:
        with atomic_write(out / f"{name}_probs.npy", "wb") as handle:
            np.save(handle, np.asarray(prediction.probabilities, dtype=np.float32))


def cmd_predict(args: argparse.Namespace) -> int:
    require(args, "predict", {"checkpoint": "--checkpoint FILE", "inputs": "image files, folders or globs",
                               "out": "--out FOLDER"})
    result = predict_files(args.checkpoint, args.inputs, args.out, device=args.device, protocol=args.protocol,
                           window=args.window, stride=args.stride, save_probs=args.save_probs,
                           batch_size=args.batch, uncertainty=args.uncertainty)
    print(f"{len(result.written)} written, {len(result.failed)} failed (outputs in {args.out})")
    return 1 if result.failed else 0
