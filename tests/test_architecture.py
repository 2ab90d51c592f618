"""The import layering of ``sim``, checked from the source with ``ast`` (docs/architecture.md).

Every ``import``/``from ... import`` of a ``sim`` module is an edge, whether at module level or
inside a function (a lazy import still couples the two at run time); imports under
``if TYPE_CHECKING:`` are annotations only and are left out. ``from sim.report import plots``
is an edge to the submodule ``sim.report.plots`` when it is one, else to the package.
A *package* is ``sim.<name>`` (a subpackage, or a top-level module such as ``sim.runner``).

An exception is allowed only through ``ALLOWED_CYCLES``, ``ALLOWED_PACKAGE_CYCLES`` or
``ALLOWED_EDGES``, each with the reason; an entry that no longer matches anything is reported
as a warning, so the lists only shrink.
"""

from __future__ import annotations

import ast
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sim"

#: packages every layer may use: errors, status codes, the registry, seeding, spec helpers
FOUNDATION = frozenset({"sim", "sim.errors", "sim.outcome", "sim.registry", "sim.rng",
                        "sim.spec"})

#: package -> the only other ``sim`` packages it may import
MAY_IMPORT: dict[str, frozenset[str]] = {
    **dict.fromkeys(FOUNDATION, FOUNDATION),
    # a strategy decides on an immutable snapshot: it never sees the model or the runner
    "sim.policy": FOUNDATION,
    # requests are drawn or replayed without knowing who serves them
    "sim.workload": FOUNDATION,
    # the recorder receives events; the summary is a pass over recorded columns
    "sim.metrics": FOUNDATION,
    # reports read result directories, never the simulator
    "sim.report": FOUNDATION,
    # the engine: nodes, batchers, KV, router; it emits into the recorder. sim.faults_spec
    # holds the frozen parameter models of its fault injector, health checks and autoscaler
    "sim.model": FOUNDATION | {"sim.policy", "sim.workload", "sim.metrics", "sim.faults_spec"},
    "sim.faults_spec": FOUNDATION,
}

#: packages only the command line (and ``python -m sim``) may import
CLI_ONLY = frozenset({"sim.cli", "sim.commands"})
CLI_LAYER = frozenset({"sim.cli", "sim.commands", "sim.__main__"})

#: third-party modules kept out of the simulation core (plots, GPUs, the event kernel)
CORE = frozenset({"sim.model", "sim.policy", "sim.workload", "sim.metrics", "sim.build",
                  "sim.scenario", "sim.runner", "sim.results"} | FOUNDATION)
NOT_IN_CORE = ("matplotlib", "torch")
SIMPY_FREE = frozenset({"sim.policy", "sim.workload", "sim.metrics"} | FOUNDATION)

#: module cycles allowed for now (frozenset of modules -> reason)
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"sim.app", "sim.pool"}): (
        "app.run_pool lazily imports pool.run_in_pool and the pool's worker lazily imports "
        "app.run_one; both files are being reworked (sweeps), the fix is to move run_one "
        "below both (issue 14.1)"),
}

#: package cycles allowed for now, beyond those of ALLOWED_CYCLES (frozenset -> reason)
ALLOWED_PACKAGE_CYCLES: dict[frozenset[str], str] = {}

#: (importer package, imported package) -> reason, for edges MAY_IMPORT/CLI_ONLY refuse
ALLOWED_EDGES: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
    return [f"{base}.{alias.name}" for alias in node.names]


def _walk_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


@cache
def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the ``sim`` modules it imports, module -> third-party top-level names)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _walk_imports(ast.parse(path.read_text(), str(path))):
            for name in _imported_names(node, package):
                if name == "sim" or name.startswith("sim."):
                    target = resolve(name)
                    if target and target != mod:
                        edges[mod].add(target)
                elif not (isinstance(node, ast.ImportFrom) and node.level):
                    external[mod].add(name.split(".")[0])
    return dict(edges), dict(external)


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The cycles of ``graph``: its strongly connected components of two or more nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph() -> dict[str, set[str]]:
    edges, _ = import_graph()
    packages: dict[str, set[str]] = defaultdict(set)
    for src, targets in edges.items():
        for dst in targets:
            if package_of(src) != package_of(dst):
                packages[package_of(src)].add(package_of(dst))
    return dict(packages)


def _edge_sites(src_package: str, dst_package: str) -> list[str]:
    edges, _ = import_graph()
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if package_of(a) == src_package and package_of(b) == dst_package)


def test_the_graph_sees_known_edges() -> None:
    """The parser finds top-level, lazy and package-relative imports (a broken walker would
    pass every rule below vacuously)."""
    edges, external = import_graph()
    assert "sim.model.requests" in edges["sim.runner"] or "sim.model.cluster" in edges["sim.runner"]
    assert "sim.pool" in edges["sim.app"]  # a lazy import inside a function
    assert "sim.report.plots" in edges["sim.report.html"]
    assert "simpy" in external["sim.model.node"]
    assert len(edges) > 100


def test_no_module_cycles_beyond_the_allowed() -> None:
    cycles = set(strongly_connected(import_graph()[0]))
    unexpected = [sorted(c) for c in cycles - ALLOWED_CYCLES.keys()]
    assert not unexpected, f"import cycles: {unexpected}"


def _stale(what: str, entries: list) -> None:
    """An allow-list entry that matches nothing any more should go, so that what it allowed
    cannot silently come back; a warning rather than a failure, since several people change
    the code at once and a fix may land before the entry is removed."""
    if entries:
        warnings.warn(f"remove from {what} (no longer needed): {entries}", stacklevel=2)


def test_allowed_cycles_are_still_cycles() -> None:
    cycles = set(strongly_connected(import_graph()[0]))
    _stale("ALLOWED_CYCLES", [sorted(c) for c in ALLOWED_CYCLES.keys() - cycles])


def test_no_package_cycles() -> None:
    """Between packages (``sim.model``, ``sim.metrics``, ...) too, beyond the allowed module
    cycles, which are between top-level modules."""
    allowed = {frozenset(package_of(m) for m in c) for c in ALLOWED_CYCLES}
    allowed |= ALLOWED_PACKAGE_CYCLES.keys()
    cycles = [sorted(c) for c in strongly_connected(package_graph()) if c not in allowed]
    assert not cycles, f"package cycles: {cycles}"


def test_allowed_package_cycles_are_still_cycles() -> None:
    cycles = set(strongly_connected(package_graph()))
    _stale("ALLOWED_PACKAGE_CYCLES", [sorted(c) for c in ALLOWED_PACKAGE_CYCLES.keys() - cycles])


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_layer_imports_only_what_it_may(package: str) -> None:
    uses = package_graph().get(package, set())
    refused = sorted(uses - MAY_IMPORT[package] - {package}
                     - {dst for src, dst in ALLOWED_EDGES if src == package})
    sites = [s for dst in refused for s in _edge_sites(package, dst)]
    assert not refused, f"{package} may not import {refused}: {sites}"


def test_only_the_command_line_imports_the_command_line() -> None:
    offenders = sorted(
        f"{src} -> {dst}" for src, targets in package_graph().items() for dst in targets
        if dst in CLI_ONLY and src not in CLI_LAYER and (src, dst) not in ALLOWED_EDGES)
    assert not offenders


def test_core_keeps_heavy_dependencies_out() -> None:
    """matplotlib only where figures are drawn (report, fidelity page, trace plots), torch only
    in the profiler, SimPy only in the engine and the runner."""
    _, external = import_graph()
    found = []
    for module, names in external.items():
        package = package_of(module)
        if package in CORE:
            found += [f"{module} imports {n}" for n in names & set(NOT_IN_CORE)]
        if package in SIMPY_FREE and "simpy" in names:
            found.append(f"{module} imports simpy")
    assert not found


def test_allowed_edges_are_still_used() -> None:
    _stale("ALLOWED_EDGES", [edge for edge in ALLOWED_EDGES if not _edge_sites(*edge)])
