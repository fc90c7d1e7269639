"""The layout holds: no import cycle, no import that runs back up a layer, no module over 500 lines.

Imports are read from the source (every `import`, at module level or inside a function), so a lazy
import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("serve_app", "lab", "loadtests")
MAX_MODULE_LINES = 500

# Which room may import which: a room imports only itself and the rooms listed for it. `serve_app`
# itself (config, errors, validation, paths, processes) is the base every room may use.
BASE = "serve_app"
ALLOWED = {
    BASE: set(),
    "serve_app.monitoring": {BASE},
    "serve_app.serving": {BASE, "serve_app.monitoring", "serve_app.quality"},
    "serve_app.quality": {BASE, "serve_app.monitoring"},
    "serve_app.autoscaling": {BASE, "serve_app.monitoring"},
    "serve_app.devtools": {
        BASE,
        "serve_app.monitoring",
        "serve_app.serving",
        "serve_app.quality",
        "serve_app.autoscaling",
        "serve_app.app",
    },
    "serve_app.app": {
        BASE,
        "serve_app.monitoring",
        "serve_app.serving",
        "serve_app.quality",
        "serve_app.autoscaling",
    },
    "serve_app.launcher": {BASE, "serve_app.monitoring"},
    "serve_app.cli": set(),  # dispatches by name through importlib: no static import at all
    "lab": {BASE, "serve_app.autoscaling", "serve_app.monitoring"},
    "loadtests": {BASE, "serve_app.autoscaling", "serve_app.monitoring", "lab"},
}
# Modules of the base that are not rooms of their own but entry points composing the rooms.
ENTRY_POINTS = ("serve_app.app", "serve_app.launcher", "serve_app.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports, resolved to the longest known module name."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def room_of(module: str) -> str:
    """The most specific key of ALLOWED that `module` belongs to."""
    for entry in ENTRY_POINTS:
        if module == entry:
            return entry
    best = ""
    for room in ALLOWED:
        if (module == room or module.startswith(room + ".")) and len(room) > len(best):
            best = room
    assert best, f"{module} belongs to no room of ALLOWED: add it to the map"
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_runs_back_up_a_layer(graph):
    wrong = []
    for module, imports in graph.items():
        room = room_of(module)
        for target in imports:
            target_room = room_of(target)
            if target_room != room and target_room not in ALLOWED[room]:
                wrong.append(f"{module} imports {target} ({room} may use {sorted(ALLOWED[room])})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_module_is_over_the_size_limit():
    long = {
        name: n
        for name, path in source_modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
