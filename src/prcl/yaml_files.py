"""YAML config files: reading a file with its ``_base_`` chain, scalars as in overrides, and writing; merging
and comparing the plain trees (sections -> keys -> values) they hold; suggesting the key meant by a misspelt one.

YAML 1.1 reads ``1e-3`` as text (it wants a dot and a signed exponent); our loader reads it as a float,
like the command line does, and refuses a key given twice in one mapping (PyYAML keeps the last silently).
Lists are written inline (``scale_range: [0.5, 1.5]``).
"""

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import yaml

from prcl.errors import UserError

BASE_KEY = "_base_"


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice (or more) in one mapping: its dotted path, the lines, whether it names a section."""

    def __init__(self, key: str, lines: list[int], section: bool) -> None:
        super().__init__(f"duplicate key {key!r} at lines {lines}")
        self.key, self.lines, self.section = key, lines, section

    def describe(self, where: str, with_lines: bool = True) -> str:
        """One line: duplicate key 'train' in <where> at lines 3 and 12; merge the two sections."""
        *first, last = map(str, sorted(set(self.lines)))
        at = f" at lines {', '.join(first)} and {last}" if first else f" at line {last}"
        count = "two" if len(self.lines) == 2 else str(len(self.lines))
        fix = f"merge the {count} sections" if self.section else "keep only one"
        return f"duplicate key '{self.key}' in {where}{at if with_lines else ''}; {fix}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3, 1.0e3 and -.5 as floats (YAML 1.1 wants a dot and a signed exponent), and
    raises DuplicateKeyError for a key given twice in one mapping."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.paths: dict[int, str] = {}  # id of a mapping node under a key -> its dotted path plus "."

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Check the keys of ``node`` before constructing it (a parent mapping is constructed before its children)."""
        prefix, lines, sections = self.paths.get(id(node), ""), {}, set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # << merge keys override by design; an unhashable key fails in the base class
            key = self.construct_object(key_node)
            lines.setdefault(key, []).append(key_node.start_mark.line + 1)
            if isinstance(value_node, yaml.MappingNode):
                self.paths[id(value_node)] = f"{prefix}{key}."
                sections.add(key)
        for key, found in lines.items():
            if len(found) > 1:
                raise DuplicateKeyError(f"{prefix}{key}", found, key in sections)
        return super().construct_mapping(node, deep)


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
    content = read_yaml(path, "config file")
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


def read_yaml(path: Path, what: str = "file") -> Any:
    """The content of the YAML file ``path`` (our loader: 1e-3 is a float, a key given twice is refused); one
    UserError line naming ``what`` and ``path`` when it cannot be read or parsed (with the line and column)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except DuplicateKeyError as error:
        raise UserError(error.describe(str(path))) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {what} {path}: {' '.join(str(error).split())}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            problem = f"{problem} ({context} started at line {context_mark.line + 1})"
        raise UserError(f"malformed YAML in {path}{where}: {' '.join(problem.split())}") from None


def parse_value(text: str) -> Any:
    """An override's value read as a YAML scalar or list (``1e-3`` -> 0.001, ``[1,2]``, ``null``); bad YAML stays text."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except DuplicateKeyError as error:
        raise UserError(error.describe(repr(text), with_lines=False)) from None
    except yaml.YAMLError:
        return text


def write_yaml(tree: dict[str, Any], stream: IO[str]) -> None:
    """Sections as blocks, lists inline, keys in their order."""
    yaml.dump(tree, stream, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def merge_layer(tree: dict[str, Any], content: dict[str, Any], source: str) -> None:
    """Merge ``content`` into ``tree`` section by section (a null section, all its keys commented out, is empty)."""
    for key, value in content.items():
        if not isinstance(key, str):
            raise UserError(f"config key {key!r}{source} must be a name such as 'data'")
        if isinstance(tree.get(key), dict) and isinstance(value, dict):
            merge_layer(tree[key], value, source)
        elif value is not None or not isinstance(tree.get(key), dict):
            tree[key] = value


def inline_text(value: Any, limit: int = 30) -> str:
    """``value`` on one line as in a YAML file (null, true, [0.5, 1.5], 'quoted' where needed), cut to ``limit``."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=1_000_000).removesuffix("...\n")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ChangedKey(str):
    """A dotted key whose value differs between two trees; ``change`` reads "old -> new" (as ``inline_text``)."""

    change = ""


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[ChangedKey]:
    """The dotted keys of two trees whose values differ, in the order of ``new`` (then keys only in ``old``)."""
    changed = []
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += changed_keys(before, after, f"{prefix}{key}.")
        elif before != after:
            changed.append(ChangedKey(f"{prefix}{key}"))
            changed[-1].change = f"{inline_text(before)} -> {inline_text(after)}"
    return changed


def unknown_key(key: str, keys: Iterable[str], source: str) -> UserError:
    """The error for a dotted key not among ``keys``, suggesting the closest key (difflib), or the closest in its
    section."""
    keys, (parent, _, leaf) = list(keys), key.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    names = {k.rpartition(".")[2]: k for k in siblings}
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) or [
        names[n] for n in difflib.get_close_matches(leaf, list(names), n=1, cutoff=0.5)]
    listed = "; valid keys here: " + ", ".join(siblings) if siblings else ""
    hint = f"; did you mean '{close[0]}'?" if close else listed
    return UserError(f"unknown config key '{key}'{source}{hint}")
