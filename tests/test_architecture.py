"""The package's shape: no import cycle, SQL only in `store/`, modules of a readable size.

These read the source (no database, no network), so a change that breaks the layering
fails here with the module and line to look at.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import prefect_integrations

ROOT = Path(prefect_integrations.__file__).parent
#: A module longer than this says why in its docstring (a line containing "lines because").
MAX_LINES = 450
#: SQLAlchemy and psycopg calls that run or build SQL.
SQL_CALLS = frozenset({"execute", "exec_driver_sql", "executemany", "scalar", "scalars"})
SQL_BUILDERS = frozenset({"text", "select", "insert", "update", "delete"})


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def _imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
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
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found.update(t for t in targets if t in known and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            visit(node)
    return found


def test_no_import_cycle_even_under_type_checking() -> None:
    modules = list(_modules())
    known = {name for name, _, _ in modules}
    graph = {name: _imports(name, path, tree, known) for name, path, tree in modules}
    assert sum(len(targets) for targets in graph.values()) > 100, "the scan found no imports"
    assert _cycles(graph) == []


def test_cycle_detection_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _sql_sites(tree: ast.Module) -> Iterator[int]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            runs = func.attr in SQL_CALLS
            builds = func.attr in SQL_BUILDERS and ast.unparse(func.value) in {"sa", "sqlalchemy"}
            if runs or builds:
                yield node.lineno
        elif isinstance(func, ast.Name) and func.id in {"pg_insert", "text"}:
            yield node.lineno


def test_sql_runs_only_in_the_store() -> None:
    outside = []
    for name, path, tree in _modules():
        if name.startswith("prefect_integrations.store") or name == "prefect_integrations.models":
            continue  # models.py: table definitions (server defaults), no statements
        outside += [f"{path.relative_to(ROOT)}:{line}" for line in _sql_sites(tree)]
    assert outside == []


def test_the_sql_scan_finds_the_store_statements() -> None:
    store = [line for name, _, tree in _modules() if ".store" in name for line in _sql_sites(tree)]
    assert len(store) > 40


def test_long_modules_say_why() -> None:
    unexplained = []
    for _, path, tree in _modules():
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(tree) or ""
        if lines > MAX_LINES and "lines because" not in docstring:
            unexplained.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert unexplained == []
