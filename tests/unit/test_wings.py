"""The package's wings: imports run downward only, no import cycle, no module over 400 lines.

src/emolens is layered by role, so each wing reads and tests without the wings above it; this test keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "emolens"
# Top to bottom: a module may import from its own wing or any wing below it, never above.
WINGS = ("top", "report", "phases", "engine", "model", "data", "stats", "bottom")
TOP = {"emolens.cli", "emolens.options"}  # the command line; config, layout, io and emolens itself are the bottom
MAX_LINES = 400


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, from its __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def wing(module: str) -> int:
    """The rank of a module's wing, 0 at the top; a subpackage that is no wing is an error (place it first)."""
    parts = module.split(".")
    if len(parts) > 2 or len(parts) == 2 and (PACKAGE / parts[1]).is_dir():
        return WINGS.index(parts[1])
    return 0 if module in TOP else len(WINGS) - 1


def _resolve(name: str, modules: set[str]) -> str:
    """The module a dotted name is, or the longest module it lies in (a function, a class, a constant)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules one module imports, at any depth (functions included); ``from emolens.x import y``
    counts as importing the module y where y is one, else x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name, modules) for a in node.names if a.name.split(".")[0] == "emolens"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package = module.split(".")[: len(module.split(".")) - (path.name != "__init__.py")]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "emolens":
                found |= {_resolve(f"{base}.{a.name}", modules) for a in node.names}
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports."""
    names = module_names()
    return {m: imports(m, path, set(names)) for m, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (a depth-first search for an edge back into the path)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if cycle := visit(child):
                return cycle
        path.pop()
        done.add(node)
        return None

    return next((c for node in sorted(graph) if (c := visit(node))), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a lower wing into a higher one, as "a.b imports c.d"."""
    return [f"{m} imports {i}" for m in sorted(graph) for i in sorted(graph[m]) if wing(i) < wing(m)]


def long_modules(lengths: dict[str, int]) -> list[str]:
    """Each module over MAX_LINES lines, with its length."""
    return [f"{m}: {n} lines" for m, n in sorted(lengths.items()) if n > MAX_LINES]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_downward():
    assert upward_imports(import_graph()) == []


def test_no_module_over_400_lines():
    lengths = {m: len(path.read_text().splitlines()) for m, path in module_names().items()}
    assert long_modules(lengths) == []


def test_every_module_has_a_wing_and_every_wing_a_package():
    for module in module_names():
        wing(module)  # a subpackage outside WINGS raises ValueError
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(WINGS[1:-1])


def test_the_graph_sees_every_import_form():
    graph = import_graph()
    assert "emolens.phases.residual" in graph["emolens.cli"]  # from emolens.phases import residual, in a function
    assert "emolens.stats.resampling" in graph["emolens.stats.effects"]  # from emolens.stats.resampling import f
    assert "emolens" in graph["emolens.io"]  # from emolens import __version__: the package itself


def test_the_checks_catch_a_cycle_an_upward_import_and_a_long_module():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
    graph = {"emolens.stats.effects": {"emolens.data.dataset", "emolens.io"}, "emolens.cli": {"emolens.stats.effects"}}
    assert upward_imports(graph) == ["emolens.stats.effects imports emolens.data.dataset"]
    assert long_modules({"emolens.io": 400, "emolens.layout": 401}) == ["emolens.layout: 401 lines"]
