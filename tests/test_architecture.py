"""The package's import graph, read with ``ast``: imports run one way down the layers, nothing imports a
private name of another module, and no import cycle exists (imports inside functions count: a lazy
import that dodges a cycle is still a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seg_transfer"

# The one statement of the layering, bottom first. A module may import from its own unit (the first
# name under seg_transfer: "models", "engine"...) and from units of lower layers, never from a unit
# of its own layer or above. "__init__" is the package root: the lazy public API over everything.
LAYERS: list[set[str]] = [
    {"version", "errors"},
    {"config", "io", "viz", "testing", "run_folder"},
    {"models"},
    {"transfer", "data"},
    {"engine", "predict", "advise"},
    {"serve"},
    {"cli", "__init__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = ["seg_transfer", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported seg_transfer module, names taken from it, line) for every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "seg_transfer"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "seg_transfer":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:  # `from . import weights`: the submodules themselves
                found += [(m, [], node.lineno) for m in submodules]
            if len(submodules) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_unit_has_a_layer():
    assert {unit(m) for m in MODULES} <= set(LAYER), sorted({unit(m) for m in MODULES} - set(LAYER))


def test_the_graph_is_read():
    """A guard on the reader itself: known edges are found (relative, absolute, submodule, function-level)."""
    edges = {(m, t) for m, targets in GRAPH.items() for t, _, _ in targets}
    assert ("seg_transfer.models.build", "seg_transfer.models.segmentation") in edges
    assert ("seg_transfer.engine.trainer", "seg_transfer.transfer.freeze") in edges
    assert ("seg_transfer.cli", "seg_transfer.engine.trainer") in edges  # imported inside a function
    assert all(t in MODULES for targets in GRAPH.values() for t, _, _ in targets)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_or_sideways_import(module: str):
    here = unit(module)
    bad = [f"line {line}: {target} ({unit(target)}, layer {LAYER[unit(target)]})"
           for target, _, line in GRAPH[module]
           if unit(target) != here and LAYER[unit(target)] >= LAYER[here]]
    assert not bad, f"{module} ({here}, layer {LAYER[here]}) imports from its own layer or above: {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_from_another_module(module: str):
    bad = [f"line {line}: {name} from {target}" for target, names, line in GRAPH[module] if target != module
           for name in names if name.startswith("_") and not name.startswith("__")]
    assert not bad, f"{module} imports private names: {bad}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target, _, _ in GRAPH[module]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
