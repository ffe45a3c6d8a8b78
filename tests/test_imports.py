"""No import cycles in ctsync: a module graph built with `ast` from every `import` in the
package (at module level, in functions and under TYPE_CHECKING alike: each one is a
dependency, and a cycle hidden in a function is still a cycle), walked for cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ctsync"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ancestors(name: str) -> list[str]:
    """The packages Python imports before `name`: ctsync.a.b -> ctsync.a (not the root
    package `ctsync`, which imports nothing of its own)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Each ctsync module -> the ctsync modules it imports (and their parent packages)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                # `from ctsync import mapping` imports the module ctsync.mapping
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        own = set(ancestors(name)) | {name}
        for target in targets:
            if target not in modules:
                continue
            graph[name].update(t for t in [*ancestors(target), target] if t not in own)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules (first == last), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_relative_function_level_and_package_imports() -> None:
    graph = import_graph()
    assert "ctsync.errors" in graph["ctsync.settings"]  # from ctsync.errors import ...
    assert "ctsync.redact" in graph["ctsync.settings"]  # from ctsync import redact
    assert "ctsync.mapping" in graph["ctsync.api"]  # from ctsync import mapping
    assert "ctsync.remote" in graph["ctsync.reader"]  # from ctsync import remote
    assert "ctsync.presets.actions" in graph["ctsync.presets"]  # inside a function
    assert "ctsync.mapping" in graph["ctsync.presets.classic"]  # the package of a module


@pytest.mark.parametrize(
    ("module", "leaf"),
    [
        ("ctsync.errors", "ctsync.summary"),
        ("ctsync.mapping.properties", "ctsync.options"),
        ("ctsync.remote", "ctsync.sources"),
        ("ctsync.reader", "ctsync.sources"),
    ],
)
def test_shared_types_live_in_leaf_modules(module: str, leaf: str) -> None:
    """errors and ledger share `Summary`; presets and mapping share their options;
    reader and remote share what an input is."""
    graph = import_graph()
    assert leaf in graph[module]
    # Leaves may use other leaves only (concurrency: the summary's per-endpoint report).
    assert graph[leaf] <= {
        "ctsync.concurrency",
        "ctsync.records",
        "ctsync.rules",
        "ctsync.timestamps",
    }
