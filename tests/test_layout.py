"""The package layout shows the layers: data -> models -> inference -> evaluation -> reporting -> entry points,
and a module only imports from its own layer or the layers below it (so there is no import cycle between them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

PACKAGE = REPO / "bcd"
# low to high; a module may import its own layer and any lower one
LAYERS = {
    "bcd.utils": 0,
    "bcd.data": 1,
    "bcd.models": 2,
    "bcd.inference": 3,
    "bcd.runs": 4,
    # starting bcd.train runs from other commands (sweep trials, cv folds)
    "bcd.launch": 4,
    "bcd.evaluation": 5,
    "bcd.tuning": 5,
    "bcd.reporting": 6,
    # the config schemas are gathered from data and models; check_config and the entry-point wiring
    "bcd.config": 6,
}
ENTRY_POINTS = 7  # bcd.train, bcd.evaluate, ... and the bench package


def layer(module: str) -> int:
    """The layer of a bcd module (the longest matching prefix), entry points on top."""
    for prefix, level in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return ENTRY_POINTS


def modules() -> list[tuple[str, Path]]:
    """Every module of the package with its dotted name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def bcd_imports(path: Path) -> set[str]:
    """The bcd modules a file imports (at any depth of the file, lazy imports included)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bcd"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("bcd"))
    return imported


@pytest.mark.parametrize(("name", "path"), modules(), ids=[name for name, _ in modules()])
def test_a_module_imports_only_its_own_layer_or_lower(name: str, path: Path) -> None:
    upward = sorted(m for m in bcd_imports(path) if layer(m) > layer(name))
    assert not upward, f"{name} (layer {layer(name)}) imports higher layers: {upward}"


def test_no_two_packages_import_each_other() -> None:
    """No cycle between packages (a layer may import itself, but two packages of one layer not both ways)."""
    package_of = lambda module: ".".join(module.split(".")[:2])  # noqa: E731
    edges = {(package_of(name), package_of(m)) for name, path in modules() for m in bcd_imports(path)}
    cycles = sorted((a, b) for a, b in edges if a < b and (b, a) in edges and a != b)
    assert not cycles, f"packages importing each other: {cycles}"
