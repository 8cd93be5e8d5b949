"""The package's import floors (docs/architecture.md): a module imports only from its own floor or lower ones.

Every ``import`` and ``from ... import`` of every module under src/prcl is read with ``ast``, those inside
functions too, relative ones resolved; only those under ``if TYPE_CHECKING:`` are exempt (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first, labelled as in docs/architecture.md. A unit is a top-level module (prcl.io) or a subpackage with
# everything in it (prcl.engine); ``prcl`` is the package's own (empty) __init__.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("1", ("prcl", "prcl.errors", "prcl.constants", "prcl.io", "prcl.devices", "prcl.yaml_files", "prcl.checkpoint",
           "prcl.distributed", "prcl.stopping")),
    ("2a", ("prcl.schedules",)),
    ("2b", ("prcl.config",)),
    ("3", ("prcl.data", "prcl.models", "prcl.losses", "prcl.metrics")),
    ("4", ("prcl.infer",)),
    ("5", ("prcl.methods",)),
    ("6", ("prcl.engine",)),
    ("7", ("prcl.demo", "prcl.commands")),
    ("8", ("prcl.cli", "prcl.__main__")),
]
FLOOR = {unit: floor for floor, (_, units) in enumerate(FLOORS) for unit in units}
LABEL = {unit: label for label, units in FLOORS for unit in units}


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name (``prcl.engine`` for engine/__init__.py) -> file."""
    modules = {}
    for path in sorted((root / "prcl").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def unit_of(module: str) -> str:
    """The unit a module belongs to: ``prcl`` itself, ``prcl.<name>`` for anything below prcl.<name>."""
    return ".".join(module.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool = False,
               known: set[str] | frozenset[str] = frozenset()) -> list[tuple[int, str, bool]]:
    """(line, imported prcl module, type-only) for every import of a prcl module in ``source``.

    ``module`` is the dotted name of the module holding ``source`` (to resolve relative imports);
    ``from package import name`` counts as importing ``package.name`` when that is a module in
    ``known``, else ``package``. Type-only: under ``if TYPE_CHECKING:``.
    """
    found: list[tuple[int, str, bool]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target if target in known else base, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source), False)
    return [(line, name, type_only) for line, name, type_only in found
            if name == "prcl" or name.startswith("prcl.")]


def upward_imports(source: str, module: str, is_package: bool = False,
                   known: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One line per import in ``source`` (module ``module``) of a prcl module on a higher floor than its own."""
    floor = FLOOR[unit_of(module)]
    return list(dict.fromkeys(  # one line for `from a import b, c`
        f"{module} (floor {LABEL[unit_of(module)]}) line {line} imports {name} (floor {LABEL[unit_of(name)]})"
        for line, name, type_only in imports_of(source, module, is_package, known)
        if not type_only and unit_of(name) in FLOOR and FLOOR[unit_of(name)] > floor))


def unit_graph() -> dict[str, set[str]]:
    """unit -> the other units it imports at run time (type-only imports left out)."""
    modules = module_files()
    graph: dict[str, set[str]] = {unit_of(name): set() for name in modules}
    for name, path in modules.items():
        for _, target, type_only in imports_of(path.read_text(encoding="utf-8"), name,
                                               path.name == "__init__.py", set(modules)):
            if not type_only and unit_of(target) != unit_of(name):
                graph[unit_of(name)].add(unit_of(target))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (each one holds a cycle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


# --------------------------------------------------------------------------------------------
# the package as it is
# --------------------------------------------------------------------------------------------


def test_every_module_is_on_a_floor():
    missing = sorted(name for name in module_files() if unit_of(name) not in FLOOR)
    assert not missing, f"modules on no floor (add them to FLOORS and docs/architecture.md): {missing}"


def test_no_module_imports_from_a_higher_floor():
    modules = module_files()
    upward = [line for name, path in modules.items()
              for line in upward_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py",
                                         set(modules))]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_no_import_cycle_between_packages():
    found = cycles(unit_graph())
    assert not found, f"packages importing each other at run time: {found}"


def test_reading_a_config_or_parsing_arguments_imports_no_torch():
    code = ("import sys; from prcl.config import load_config; from prcl.cli import build_parser; "
            f"load_config({str(SRC / 'prcl' / 'configs' / 'demo.yaml')!r}, []); "
            "build_parser().parse_args(['train', '-c', 'x.yaml']); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "False", result.stderr


# --------------------------------------------------------------------------------------------
# the checkers catch what they are for
# --------------------------------------------------------------------------------------------


def test_the_checker_flags_an_upward_import_even_inside_a_function():
    source = "import torch\n\ndef f():\n    from prcl.engine.trainer import Trainer\n"
    assert upward_imports(source, "prcl.config") == [
        "prcl.config (floor 2b) line 4 imports prcl.engine.trainer (floor 6)"]


@pytest.mark.parametrize("source, module, is_package", [
    ("from ..engine import checkpoint\n", "prcl.models.release_checkpoint", False),  # relative, two levels
    ("from .. import cli\n", "prcl.engine", True),  # relative, from a package's __init__
    ("import prcl.methods\n", "prcl.config", False),
    ("from prcl import cli\n", "prcl.io", False),
])
def test_the_checker_resolves_every_form_of_import(source, module, is_package):
    known = {"prcl.engine.checkpoint", "prcl.cli"}
    assert len(upward_imports(source, module, is_package, known)) == 1


def test_the_checker_exempts_type_only_and_downward_imports():
    source = ("from typing import TYPE_CHECKING\nimport typing\nfrom prcl.errors import UserError\n"
              "if TYPE_CHECKING:\n    from prcl.engine import trainer\nif typing.TYPE_CHECKING:\n"
              "    import prcl.cli\nelse:\n    from prcl.io import atomic_write\n")
    assert upward_imports(source, "prcl.config") == []
    assert [(name, type_only) for _, name, type_only in imports_of(source, "prcl.config")] == [
        ("prcl.errors", False), ("prcl.engine", True), ("prcl.cli", True), ("prcl.io", False)]


def test_the_cycle_finder_finds_a_cycle():
    graph = {"prcl.a": {"prcl.b"}, "prcl.b": {"prcl.c"}, "prcl.c": {"prcl.a"}, "prcl.d": {"prcl.a"}}
    assert cycles(graph) == [["prcl.a", "prcl.b", "prcl.c"]]
    assert cycles({"prcl.a": {"prcl.b"}, "prcl.b": set()}) == []
