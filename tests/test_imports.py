"""No import cycles: the project's import graph, read from the source with ``ast``, is acyclic.

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions: a cycle
hidden that way is still a cycle in the design.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The repository's top-level packages: server, locustfiles, analysis, bench, deploy, scripts,
# harness, tests (whichever exist).
PACKAGES = sorted({p.parent.name for p in REPO.glob("*/__init__.py")} | {"tests"})


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that module ``name`` imports (``from pkg import mod`` included)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # The closest project module: "analysis.records.Findings" -> "analysis.records".
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@functools.cache
def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. A package's ``__init__`` importing its own
    submodules is not an edge back (Python runs ``__init__`` first either way)."""
    found = modules()
    graph = {name: imported(name, path, set(found)) for name, path in found.items()}
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return graph


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_hidden_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from pkg.other import X\ndef f():\n    from . import third\n")
    known = {"pkg", "pkg.mod", "pkg.other", "pkg.third"}
    assert imported("pkg.mod", source, known) == {"pkg", "pkg.other", "pkg.third"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = project_graph()
    inside = {n: {t for t in ts if t.split(".")[0] == package}
              for n, ts in graph.items() if n.split(".")[0] == package}
    assert find_cycle(inside) is None, " -> ".join(find_cycle(inside) or [])


def test_no_import_cycle_across_packages() -> None:
    graph = project_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def third_party(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (``flask`` for ``flask.json``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


WEB_ONLY = {"flask", "flask_limiter", "werkzeug", "gunicorn", "pydantic"}


def test_the_engine_never_imports_the_web_layer() -> None:
    """server.engine (scheduler, caches, kernels, model) knows nothing of HTTP: it imports no
    server.web module, not the app factory, and no web framework."""
    engine = {n: p for n, p in modules().items() if n.startswith("server.engine")}
    assert len(engine) > 10, sorted(engine)  # the package is where this test looks
    graph = project_graph()
    for name, path in engine.items():
        bad = {t for t in graph[name] if t == "server" or t.startswith("server.web")}
        assert not bad, f"{name} imports {sorted(bad)}"
        assert not third_party(path) & WEB_ONLY, f"{name} imports {third_party(path) & WEB_ONLY}"


def test_the_engine_rule_would_catch_a_web_import(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from server.web import routes\n    import flask\n")
    known = {"server", "server.web", "server.web.routes"}
    assert "server.web.routes" in imported("server.engine.mod", source, known)
    assert "flask" in third_party(source)
