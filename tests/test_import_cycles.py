"""No two modules of tuneyard import each other, directly or through others.

Every import statement counts, the ones inside functions too: an import deferred into a
function keeps start-up light, but the two modules still depend on each other. Imports under
`if TYPE_CHECKING:` do not run and do not count. A registry that loads modules by name
(importlib) is not an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tuneyard

PACKAGE = Path(tuneyard.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.relative_to(PACKAGE).parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(nodes: list[ast.stmt]):
    """Every statement, nested ones included, except those under `if TYPE_CHECKING:`."""
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _statements(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _statements([c for c in children if isinstance(c, ast.AST)])


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The tuneyard modules that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            found.add(source)
            # `from tuneyard.chat import service` imports the module tuneyard.chat.service.
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(tuple(sorted(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def path_through(graph: dict[str, set[str]], group: tuple[str, ...]) -> str:
    """One cycle of the group, spelled out: a -> b -> a."""
    members = set(group)
    start = group[0]
    trail, seen = [start], {start}
    while True:
        following = sorted(graph[trail[-1]] & members)
        back = start in following
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [module for module in following if module not in seen]
        if not fresh:
            return " -> ".join([*trail, start]) if back else ", ".join(group)
        trail.append(fresh[0])
        seen.add(fresh[0])


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "Import cycles:\n" + "\n".join(path_through(graph, g) for g in found)


def test_a_cycle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [("a", "b", "c")]
    assert path_through(graph, ("a", "b", "c")) == "a -> b -> c -> a"


def test_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from tuneyard import errors\n"
        "def f():\n"
        "    from tuneyard.chat import service\n"
        "    import tuneyard.db\n",
        encoding="utf-8",
    )
    known = {"tuneyard.errors", "tuneyard.chat.service", "tuneyard.chat", "tuneyard.db"}
    assert imports_of("tuneyard.mod", source, known) == {
        "tuneyard.chat",
        "tuneyard.chat.service",
        "tuneyard.db",
    }
