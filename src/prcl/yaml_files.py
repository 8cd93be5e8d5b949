"""YAML config files: reading a file with its ``_base_`` chain, scalars as in overrides, and writing; merging
and comparing the plain trees (sections -> keys -> values) they hold; suggesting the key meant by a misspelt one.

YAML 1.1 reads ``1e-3`` as text (it wants a dot and a signed exponent); our loader reads it as a float,
like the command line does, refuses a key given twice in one mapping (PyYAML keeps the last silently), and refuses
a document whose aliases (``*name``) would expand to more than ``MAX_EXPANDED_VALUES`` values (a "billion laughs":
nine lists of nine aliases each hold 9**9 values once expanded), before anything is built from it.
Lists are written inline (``scale_range: [0.5, 1.5]``).
"""

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import yaml

from prcl.errors import UserError, shown

BASE_KEY = "_base_"
MAX_EXPANDED_VALUES = 100_000
"""The most values (scalars, lists, mappings) a config document may hold with its aliases expanded; a full config
holds a few hundred."""


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


class AliasExpansionError(yaml.YAMLError):
    """A document whose aliases expand to more than ``MAX_EXPANDED_VALUES`` values, or to a value inside itself."""

    def __init__(self, cycle: bool) -> None:
        super().__init__("alias expansion")
        self.cycle = cycle

    def describe(self, where: str) -> str:
        what = ("a value that contains itself" if self.cycle else
                f"more than {MAX_EXPANDED_VALUES} values (a config holds a few hundred)")
        return f"the aliases (*name) in {where} expand to {what}; write the values out instead"


def _expanded_size(root: yaml.Node, limit: int) -> int | None:
    """How many nodes ``root`` holds with every alias expanded (a shared node counts once per use), or None when
    that is more than ``limit`` or infinite (a node inside itself). Linear in the distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > limit:
                return None
        elif id(node) in on_path:
            return None  # a cycle: &a [*a]
        elif id(node) not in sizes:
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3, 1.0e3 and -.5 as floats (YAML 1.1 wants a dot and a signed exponent),
    raises DuplicateKeyError for a key given twice in one mapping and AliasExpansionError for a document whose
    aliases expand to more than MAX_EXPANDED_VALUES values."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.paths: dict[int, str] = {}  # id of a mapping node under a key -> its dotted path plus "."

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An int; one too long for Python to read (over 4300 digits) is a YAML error at its line, not a ValueError."""
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(str(node.value))} digits is longer than any value here",
                node.start_mark) from None

    def get_single_node(self) -> yaml.Node | None:
        """The document's node graph, refused before anything is constructed from it when it expands too far."""
        node = super().get_single_node()
        if node is not None and _expanded_size(node, MAX_EXPANDED_VALUES) is None:
            raise AliasExpansionError(cycle=_expanded_size(node, 2**62) is None)
        return node

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


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
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
    named = f" (named as {BASE_KEY} in {stack[-1]})" if stack else ""
    if not path.exists():
        fix = f"fix the {BASE_KEY} line there" if stack else "check the path, e.g. configs/demo.yaml"
        raise UserError(f"config file not found: {path}{named}; {fix}")
    if path.is_dir():
        raise UserError(f"config path is a folder, not a YAML file: {path}{named}")
    content = read_yaml(path, "config file")
    if content is not None and not isinstance(content, dict):
        kind = type(content).__name__
        raise UserError(f"config file {path} must hold a mapping of sections (data:, model:, ...), got {kind}")
    content = content or {}
    bases = content.pop(BASE_KEY, None)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise UserError(f"{BASE_KEY} in {path} must be a file name or a list of file names, got {shown(bases)}")
    return [layer for base in bases for layer in read_layers(path.parent / base, (*stack, resolved))] + [
        (content, f" in {path}")]


def read_yaml(path: Path, what: str = "file") -> Any:
    """The content of the YAML file ``path`` (our loader: 1e-3 is a float, a key given twice is refused); one
    UserError line naming ``what`` and ``path`` when it cannot be read or parsed (with the line and column)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (DuplicateKeyError, AliasExpansionError) as error:
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
        raise UserError(error.describe(shown(text), with_lines=False)) from None
    except AliasExpansionError as error:
        raise UserError(error.describe(f"the override value {shown(text)}")) from None
    except yaml.YAMLError:
        return text


def write_yaml(tree: dict[str, Any], stream: IO[str]) -> None:
    """Sections as blocks, lists inline, keys in their order."""
    yaml.dump(tree, stream, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def merge_layer(tree: dict[str, Any], content: dict[str, Any], source: str) -> None:
    """Merge ``content`` into ``tree`` section by section (a null section, all its keys commented out, is empty)."""
    for key, value in content.items():
        if not isinstance(key, str):
            raise UserError(f"config key {shown(key)}{source} must be a name such as 'data'")
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
