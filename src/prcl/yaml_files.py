"""YAML config files: reading a file with its ``_base_`` chain, scalars as in overrides, and writing.

YAML 1.1 reads ``1e-3`` as text (it wants a dot and a signed exponent); our loader reads it as a float,
like the command line does. Lists are written inline (``scale_range: [0.5, 1.5]``).
"""

import re
from pathlib import Path
from typing import IO, Any

import yaml

from prcl.errors import UserError

BASE_KEY = "_base_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3, 1.0e3 and -.5 as floats (YAML 1.1 wants a dot and a signed exponent)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists inline: ``scale_range: [0.5, 1.5]``."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"), list("-+0123456789."))
_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True))


def read_layers(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """The mappings in a YAML config file and its ``_base_`` files, bases first, as (mapping without _base_,
    source), source being " in <path>" for error messages."""
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack, resolved))
        raise UserError(f"config files name each other as _base_ in a cycle: {cycle}")
    if not path.exists():
        raise UserError(f"config file not found: {path} (check the path, e.g. configs/demo.yaml)")
    if path.is_dir():
        raise UserError(f"config path is a folder, not a YAML file: {path}")
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read config file {path}: {' '.join(str(error).split())}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            problem = f"{problem} ({context} started at line {context_mark.line + 1})"
        raise UserError(f"malformed YAML in {path}{where}: {' '.join(problem.split())}") from None
    if content is not None and not isinstance(content, dict):
        kind = type(content).__name__
        raise UserError(f"config file {path} must hold a mapping of sections (data:, model:, ...), got {kind}")
    content = content or {}
    bases = content.pop(BASE_KEY, None)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise UserError(f"{BASE_KEY} in {path} must be a file name or a list of file names, got {bases!r}")
    return [layer for base in bases for layer in read_layers(path.parent / base, (*stack, resolved))] + [
        (content, f" in {path}")]


def parse_value(text: str) -> Any:
    """An override's value read as a YAML scalar or list (``1e-3`` -> 0.001, ``[1,2]``, ``null``); bad YAML stays text."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        return text


def write_yaml(tree: dict[str, Any], stream: IO[str]) -> None:
    """Sections as blocks, lists inline, keys in their order."""
    yaml.dump(tree, stream, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
