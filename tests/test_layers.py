"""The package's layers point one way: no import cycles between modules (imports inside
functions count too) or between packages, and the lower layers never reach up."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import fewshot

ROOT = Path(fewshot.__file__).parent
REGISTRIES = {"fewshot.methods", "fewshot.models"}
"""Registries import their members and the members import the registry: cycles inside
these packages are how registration works and are allowed (inside the package only)."""
LOWER = ("fewshot.data", "fewshot.models", "fewshot.methods")
UPPER = ("fewshot.train", "fewshot.evaluate", "fewshot.adapt", "fewshot.adapted",
         "fewshot.cli", "fewshot.quickstart", "fewshot.report")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_graph() -> dict[str, set[str]]:
    """Every fewshot module -> the fewshot modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if is_module(full) else node.module)
        graph[name] = {t for t in targets if t.split(".")[0] == "fewshot" and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else name


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    # fewshot.quickstart imports meta-training inside its function only
    assert "fewshot.train.meta_train" in graph["fewshot.quickstart"]
    assert "fewshot.methods.builtin" in graph["fewshot.methods.base"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_between_modules_outside_the_registries() -> None:
    bad = [c for c in cycles(import_graph())
           if not any(all(m == p or m.startswith(p + ".") for m in c) for p in REGISTRIES)]
    assert bad == []


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        source = package_of(module)
        graph.setdefault(source, set()).update(
            package_of(t) for t in targets if package_of(t) != source)
    assert cycles(graph) == []


def test_lower_layers_never_import_upper_ones() -> None:
    reaching_up = {(module, target) for module, targets in import_graph().items()
                   if module.startswith(LOWER)
                   for target in targets if target.startswith(UPPER)}
    assert reaching_up == set()


def test_no_private_head_attribute_is_read_outside_its_module() -> None:
    methods = ROOT / "methods"
    for path in ROOT.rglob("*.py"):
        if path.parent == methods:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} reads .{node.attr}")
