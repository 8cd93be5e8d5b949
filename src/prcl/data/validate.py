"""Checks before the work starts: every data file of a run, and the paths a command will write.

:func:`validate_dataset_files` reads each (image, mask) pair of the given datasets once, in
parallel, before the first training step, and raises one :class:`~prcl.errors.UserError` line that
counts the bad files and names the first few with what is wrong. What it learns about good files
(size in pixels, the set of mask values) is cached in a JSON file keyed by each file's path, size
and modification time, so a restart reads only the files that changed.

:func:`check_output_file` and :func:`check_output_folder` say, before any work, that a path cannot
be written (a regular file where a folder should be, a read-only folder).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prcl.data.datasets import (
    DataFileError,
    SegmentationDataset,
    _one_line,
    decode_image,
    read_label_file,
)
from prcl.errors import UserError
from prcl.io import WriteError, atomic_write, folder_problem

CACHE_VERSION = 2  # 2: image shapes as displayed (EXIF orientation applied); older caches are read again
SHOWN_PER_PROBLEM = 3
"""How many file names each kind of problem shows in the error line."""


@dataclass
class ValidationReport:
    """What :func:`validate_dataset_files` did: distinct files checked, decoded now, taken from the cache."""

    files: int = 0
    read: int = 0
    cached: int = 0
    cache_written: bool = False


@dataclass
class _FileResult:
    key: str
    kind: str  # "image" or "mask"
    entry: dict[str, Any] | None = None  # the cache entry: size, mtime_ns, shape (, values)
    problem: str | None = None  # "missing" or "unreadable"
    reason: str = ""
    from_cache: bool = False


@dataclass
class _Pair:
    dataset: SegmentationDataset
    image: Path
    mask: Path | None


def validate_dataset_files(
    datasets: Iterable[SegmentationDataset | None] | Mapping[str, SegmentationDataset | None],
    num_classes: int | None = None,
    cache_path: str | os.PathLike | None = None,
    workers: int = 8,
    progress: bool | None = None,
    need_labels: Iterable[str] = (),
) -> ValidationReport:
    """Check every image and mask file the datasets name; UserError (one line) if any is bad.

    ``datasets``: :class:`~prcl.data.SegmentationDataset` objects (a list, or a mapping such as
    ``{"labeled": ..., "valid": ..., "test": ...}``; None entries are skipped). For every id:
    the image exists and decodes to RGB (:func:`~prcl.data.datasets.decode_image`); for datasets with
    labels also the mask exists, is an 8-bit grey or palette PNG, has its image's size, and holds
    only class indices ``0..num_classes-1`` or 255 (ignore). ``num_classes`` (e.g.
    ``data.num_classes``) overrides each dataset's own; Cityscapes masks are checked as labelIds.

    ``cache_path``: a JSON file (e.g. ``<out_dir>/.validated.json``) remembering the good files by
    path, byte size and modification time; unchanged files are not read again. It is written
    atomically after the pass (failures included, so a rerun after fixing a few files reads only
    those); a damaged cache is ignored and rewritten; one that cannot be written is skipped (it only
    saves time). None: no cache.

    ``workers``: threads decoding files in parallel (PIL releases the GIL while decoding).
    ``progress``: a tqdm bar on stderr; None shows it only when stderr is a terminal.
    ``need_labels``: keys of the ``datasets`` mapping (e.g. ``("labeled", "valid")``) whose masks, once every
    file is good, must hold at least one labeled pixel between them (a value that is not ignore): training on
    a labeled split without one skips every step, and a valid split without one scores nothing.
    """
    sources = datasets.values() if isinstance(datasets, Mapping) else datasets
    pairs: list[_Pair] = []
    seen: set[tuple[str, str]] = set()
    for dataset in sources:
        if dataset is None:
            continue
        for _, image, mask in dataset.files():
            key = (_key(image), _key(mask) if mask is not None else "")
            if key not in seen:
                seen.add(key)
                pairs.append(_Pair(dataset, Path(image), Path(mask) if mask is not None else None))

    cache = _load_cache(cache_path)
    jobs: dict[tuple[str, str], tuple[Path, str]] = {}
    for pair in pairs:
        jobs.setdefault((_key(pair.image), "image"), (pair.image, "image"))
        if pair.mask is not None:
            jobs.setdefault((_key(pair.mask), "mask"), (pair.mask, "mask"))

    results: dict[tuple[str, str], _FileResult] = {}
    bar = _progress_bar(len(jobs), progress)
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
    try:
        futures = {job: pool.submit(_check_file, path, kind, cache) for job, (path, kind) in jobs.items()}
        for job, future in futures.items():
            results[job] = future.result()
            bar.update(1)
    finally:
        # After an error or a stop signal (KeyboardInterrupt) the files not yet started are dropped: only the
        # threads' current files are finished, not every file of the dataset.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    report = ValidationReport(files=len(results))
    report.cached = sum(r.from_cache for r in results.values())
    report.read = report.files - report.cached
    if cache_path is not None and report.read:
        fresh = {r.key: r.entry for r in results.values() if r.entry is not None and not r.from_cache}
        report.cache_written = _save_cache(cache_path, cache, fresh)

    problems = _problems(pairs, results, num_classes)
    roots = {str(getattr(pair.dataset, "root", "")) for pair in pairs}
    where = f" under {roots.pop()}" if len(roots) == 1 and "" not in roots else ""
    if problems:
        raise UserError(_describe(problems, report.files, where))
    named = datasets if isinstance(datasets, Mapping) else {}
    for name in need_labels:
        dataset = named.get(name)
        if dataset is not None and dataset.with_labels and len(dataset) and not _any_labeled_pixel(dataset, results):
            effect = "every training step would be skipped" if name == "labeled" else "evaluation would score nothing"
            raise UserError(f"data check: none of the {len(dataset)} {name} masks{where} holds a labeled pixel (every "
                            f"value means ignore, e.g. 255), so {effect}; give these masks class indices, or check "
                            "data.root and the split files")
    return report


def _any_labeled_pixel(dataset: SegmentationDataset, results: dict[tuple[str, str], _FileResult]) -> bool:
    """Whether any mask of ``dataset`` holds a value that decodes to a class (its cached set of values says)."""
    for _, _, mask in dataset.files():
        entry = results[(_key(mask), "mask")].entry if mask is not None else None
        values = np.asarray(entry["values"] if entry else [], dtype=np.int64)
        try:
            if values.size and (dataset.decode_labels(values, Path(mask)) >= 0).any():
                return True
        except DataFileError:  # a value this dataset's own class count refuses: not ignore, so labeled
            return True
    return False


# ----------------------------------------------------------------------------- one file


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _check_file(path: Path, kind: str, cache: dict[str, dict[str, Any]]) -> _FileResult:
    key = _key(path)
    result = _FileResult(key, kind)
    try:
        stat = os.stat(path)
    except OSError:
        result.problem, result.reason = "missing", "missing"
        return result
    if os.path.isdir(path):
        result.problem, result.reason = "unreadable", "a folder, not a file"
        return result
    cached = cache.get(key)
    if (
        isinstance(cached, dict)
        and cached.get("kind") == kind
        and cached.get("size") == stat.st_size
        and cached.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(cached.get("shape"), list)
        and (kind == "image" or isinstance(cached.get("values"), list))
    ):
        result.entry, result.from_cache = cached, True
        return result
    try:
        result.entry = {"kind": kind, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **_read_file(path, kind)}
    except DataFileError as error:
        result.problem, result.reason = "unreadable", error.reason
    except Exception as error:  # anything else a decoder raises: the file cannot be used either
        result.problem, result.reason = "unreadable", _one_line(error)
    return result


def _read_file(path: Path, kind: str) -> dict[str, Any]:
    """Decode one file: {"shape": [H, W]} for an image, plus {"values": sorted unique} for a mask."""
    if kind == "mask":
        values = read_label_file(path)
        return {"shape": list(values.shape), "values": np.unique(values).tolist()}
    return {"shape": list(decode_image(path).shape[:2])}


# ----------------------------------------------------------------------------- the summary line


def _problems(
    pairs: list[_Pair], results: dict[tuple[str, str], _FileResult], num_classes: int | None
) -> dict[tuple[str, str], list[str]]:
    """{(problem heading, fix): ["file (detail)", ...]} in a stable order, each bad file once."""
    problems: dict[tuple[str, str], list[str]] = {}
    reported: set[str] = set()
    fix_files = "fix or replace these files, or remove their ids from the split files"

    def add(heading: str, fix: str, key: str, text: str) -> None:
        if key not in reported:
            reported.add(key)
            problems.setdefault((heading, fix), []).append(text)

    for pair in pairs:  # missing first, then unreadable, then sizes, then values (dict order)
        for path, kind in ((pair.image, "image"), (pair.mask, "mask")):
            if path is None:
                continue
            result = results[(_key(path), kind)]
            if result.problem == "missing":
                add("missing", fix_files, result.key, _name(path, pair.dataset))
    for pair in pairs:
        for path, kind in ((pair.image, "image"), (pair.mask, "mask")):
            if path is None:
                continue
            result = results[(_key(path), kind)]
            if result.problem == "unreadable":
                add("unusable", fix_files, result.key, f"{_name(path, pair.dataset)} ({result.reason})")
    for pair in pairs:
        if pair.mask is None:
            continue
        image = results[(_key(pair.image), "image")].entry
        mask = results[(_key(pair.mask), "mask")].entry
        if image is None or mask is None:
            continue
        if list(mask["shape"]) != list(image["shape"]):
            (mh, mw), (ih, iw) = mask["shape"], image["shape"]
            add("size", "each mask must have its image's size (H x W)", _key(pair.mask),
                f"{_name(pair.mask, pair.dataset)} ({mh}x{mw}, image {ih}x{iw})")
    for pair in pairs:
        if pair.mask is None:
            continue
        mask = results[(_key(pair.mask), "mask")].entry
        if mask is None:
            continue
        bad = pair.dataset.invalid_mask_values(np.asarray(mask["values"], dtype=np.int64), num_classes)
        if bad:
            what, fix = pair.dataset.describe_mask_values(num_classes)
            shown = ", ".join(map(str, bad[:3])) + (", ..." if len(bad) > 3 else "")
            add(f"values:{what}", fix, _key(pair.mask), f"{_name(pair.mask, pair.dataset)} ({shown})")
    return problems


def _describe(problems: dict[tuple[str, str], list[str]], total: int, where: str = "") -> str:
    parts, fixes = [], []
    bad = 0
    for (heading, fix), files in problems.items():
        bad += len(files)
        n = len(files)
        shown = ", ".join(files[:SHOWN_PER_PROBLEM]) + (f", and {n - SHOWN_PER_PROBLEM} more"
                                                         if n > SHOWN_PER_PROBLEM else "")
        if heading == "missing":
            text = f"{n} {'file is' if n == 1 else 'files are'} missing"
        elif heading == "unusable":
            text = f"{n} {'file cannot' if n == 1 else 'files cannot'} be read"
        elif heading == "size":
            text = f"{n} {'mask differs' if n == 1 else 'masks differ'} in size from {'its' if n == 1 else 'their'} image"
        else:
            text = f"{n} {'mask has' if n == 1 else 'masks have'} {heading.split(':', 1)[1]}"
        parts.append(f"{text}: {shown}")
        if fix not in fixes:
            fixes.append(fix)
    return f"data check: {bad} of {total} files{where} are bad: {'; '.join(parts)}; {'; '.join(fixes)}"


def _name(path: Path, dataset: SegmentationDataset) -> str:
    """``path`` relative to the dataset's root when it lies under it (shorter), else as given."""
    root = getattr(dataset, "root", None)
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return str(path)


# ----------------------------------------------------------------------------- cache and progress


def _load_cache(cache_path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if cache_path is None:
        return {}
    try:
        with open(cache_path, encoding="utf-8") as stream:
            payload = json.load(stream)
    except (OSError, ValueError):
        return {}  # none yet, or damaged: read every file again and rewrite it
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return {}
    files = payload.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(cache_path: str | os.PathLike, old: dict[str, Any], fresh: dict[str, Any]) -> bool:
    """Merge and write atomically; False when it cannot be written (the cache only saves time)."""
    if not fresh:
        return False
    payload = {"version": CACHE_VERSION, "files": {**old, **fresh}}
    try:
        with atomic_write(cache_path, "w") as stream:
            json.dump(payload, stream, separators=(",", ":"))
    except WriteError:
        return False
    return True


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, progress: bool | None) -> Any:
    if progress is False or total == 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="checking data files", unit="file", file=sys.stderr,
                disable=None if progress is None else False, leave=False)


# ----------------------------------------------------------------------------- output paths


def check_output_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise UserError (one line) unless ``folder`` is, or can be created as, a writable folder.

    Creates nothing: finds the nearest existing folder on the way and tries a temporary file there
    (which also catches read-only file systems, and works when running as root). ``what`` names the
    setting in the message, e.g. ``"--out"``.
    """
    folder = Path(folder).expanduser()
    problem = folder_problem(folder)
    if problem:
        raise UserError(f"cannot write {what} {folder}: it {problem}; choose a folder you can write to")
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise UserError (one line) unless ``path`` can be written (atomically, beside itself): not a
    folder, and its folder is or can be created as a writable folder. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder; give a file name, e.g. {path / 'results.json'}")
    problem = folder_problem(path.parent)
    if problem:
        raise UserError(f"cannot write {what} {path}: its folder {problem}; choose a path you can write to")
    return path


