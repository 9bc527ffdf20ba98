"""The import graph of ``intent/`` and ``tasks/``: the domain package stays free of Celery,
no module takes part in an import cycle, and every import points down the layer table.

The graph is read from the source with ``ast``, not from ``sys.modules``: every import
counts, at module level, inside a function or under ``if TYPE_CHECKING:`` alike, since
each one is a dependency a reader (and a refactoring) has to respect.
"""

from __future__ import annotations

import ast
import fnmatch
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import intent

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("intent", "tasks")

# Bottom to top: a module may import its own layer and the layers below it, never one
# above, not even inside a function. Patterns are fnmatch patterns over dotted names
# (``pkg.*``: the package's submodules; the package itself is named by its own name). A
# module takes the layer of its most specific pattern (an exact name over a wildcard, a
# longer wildcard over a shorter), so a package sits in one layer by one line and a module
# of it that reaches higher is named by a second; moving modules into a package needs a
# line or two here. A module no pattern matches, or two layers match equally, fails: a new
# module is placed deliberately.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",  # the domain, its rules and configuration: no connection to anything
        (
            "intent",
            "intent.errors",
            "intent.settings",
            "intent.keys",
            "intent.models",
            "intent.codec",
            "intent.validation",
            "intent.schemas",
            "intent.messages",
            "intent.logs",
            "intent.tracing",
            "intent.retry",
            "intent.lifecycle",
            "intent.forks",
            "intent.once",
            "intent.pools",
        ),
    ),
    (
        "integrations",  # Redis, HTTP, Prometheus, child servers: each over the core alone
        (
            "intent.connections",
            "intent.resp",
            "intent.scripts",
            "intent.clients",
            "intent.httpcut",
            "intent.breaker",
            "intent.breaker.*",
            "intent.ratelimit",
            "intent.budget",
            "intent.cache",
            "intent.drills",
            "intent.waiting",
            "intent.detection",
            "intent.poison",
            "intent.events",
            "intent.events.*",
            "intent.metrics",
            "intent.serving",
            "intent.embedded",
        ),
    ),
    (
        "pipeline",  # the analysis and the per-process runtime that wires the integrations
        (
            "intent.pipeline",
            "intent.pipeline.*",
            "intent.runtime",
            "intent.health",
        ),
    ),
    ("operators", ("intent.admin", "intent.admin.*", "intent.reference", "intent.reference.*")),
    ("celery", ("tasks", "tasks.*")),
    (
        "apps",  # command lines and local tooling: they start Celery when a command runs
        (
            "intent.cli",
            "intent.cli.*",
            "intent.dev",
            "intent.dev.*",
            "intent.ops",
            "intent.ops.*",
        ),
    ),
)
# Layers that may import these only inside a function (so that loading them builds no
# Celery app: a command imports it when it runs).
LATE_ONLY = {"apps": ("celery",)}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    late: bool  # inside a function body: runs when called, not when the module loads


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``, by dotted name."""
    return {
        module_name(path, root): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name a ``from <dots><name> import`` statement in ``module`` reads."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _imports_in(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function (``late``)."""

    def walk(node: ast.AST, late: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, late
            inner = late or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from walk(child, inner)

    yield from walk(tree, False)


def collect_imports(modules: Mapping[str, Path]) -> list[Import]:
    """Every import between ``modules``: ``import a.b`` and ``from a import b`` (``b`` a
    submodule) read module ``a.b``; ``from a import name`` reads ``a``."""
    found: list[Import] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, late in _imports_in(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in targets:
                # ``import a.b.c`` of something not ours (or a name in it): its nearest module.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    found.append(Import(module, target, node.lineno, late))
    return found


def graph_of(imports: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in imports:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm,
    iterative), each sorted, sorted by their first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return sorted(groups)


def _specificity(pattern: str) -> tuple[bool, int]:
    return (not any(c in pattern for c in "*?["), len(pattern))


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> str:
    """The layer of the most specific pattern matching ``module``; an error when none
    matches, or patterns of two layers match it equally."""
    matched = [
        (_specificity(pattern), name)
        for name, patterns in layers
        for pattern in patterns
        if fnmatch.fnmatchcase(module, pattern)
    ]
    if not matched:
        raise LookupError(f"{module} matches no layer pattern")
    best = max(specificity for specificity, _ in matched)
    names = sorted({name for specificity, name in matched if specificity == best})
    if len(names) > 1:
        raise LookupError(f"{module} matches layers {names} equally")
    return names[0]


def violations(
    imports: Iterable[Import],
    layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS,
    late_only: Mapping[str, tuple[str, ...]] = LATE_ONLY,
) -> list[str]:
    """Every import that points up the layer table, or loads a late-only layer early."""
    rank = {name: position for position, (name, _) in enumerate(layers)}
    found = []
    for edge in imports:
        source, target = layer_of(edge.source, layers), layer_of(edge.target, layers)
        where = f"{edge.source}:{edge.line} imports {edge.target}"
        if rank[target] > rank[source]:
            found.append(f"{where} ({source} -> {target}, up the layers)")
        elif target in late_only.get(source, ()) and not edge.late:
            found.append(f"{where} ({source} -> {target}, only inside a function)")
    return found


# -- the real tree ------------------------------------------------------------------------

MODULES = discover(ROOT, PACKAGES)
IMPORTS = collect_imports(MODULES)


def test_every_module_has_exactly_one_layer() -> None:
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError as exc:
            unplaced.append(str(exc))
    assert unplaced == [], "place each module in LAYERS:\n" + "\n".join(unplaced)
    assert len(MODULES) > 50


def test_no_import_cycle() -> None:
    found = cycles(graph_of(IMPORTS))
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_imports_point_down_the_layers() -> None:
    found = violations(IMPORTS)
    assert found == [], "\n".join(found)


def test_metrics_is_an_observer_over_settings_and_models() -> None:
    """The clients and the breaker report through callables the runtime hands them;
    metrics knows nothing above the core. Of the breaker, only its Prometheus adapter
    (and the package, which exports it) reads the family declarations."""
    assert {edge.target for edge in IMPORTS if edge.source == "intent.metrics"} == {
        "intent.settings",
        "intent.models",
    }
    readers = {edge.source for edge in IMPORTS if edge.target == "intent.metrics"}
    low = {m for m in readers if layer_of(m) in ("core", "integrations")}
    assert low == {"intent.breaker.prometheus"}
    breaker_core = {"intent.breaker.breaker", "intent.breaker.view", "intent.clients"}
    assert not {edge.target for edge in IMPORTS if edge.source in breaker_core} & {
        "intent.metrics",
        "intent.breaker.prometheus",
        "intent.runtime",
    }


def test_no_intent_module_imports_celery() -> None:
    modules = [m.name for m in pkgutil.walk_packages(intent.__path__, "intent.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert len(modules) > 10


# -- the checker catches what it is for -----------------------------------------------------

FAKE_LAYERS = (("low", ("app.low", "app.low.*")), ("high", ("app", "app.high")))


def fake_package(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return discover(root, ["app"])


def test_checker_finds_a_cycle_in_a_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_checker_finds_an_upward_import_and_a_cycle_in_a_package(tmp_path: Path) -> None:
    modules = fake_package(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/high.py": "from app.low import helpers\n",
            "app/low/__init__.py": "from app.low.helpers import f\n",
            # Re-enters its own package, under TYPE_CHECKING: still a cycle.
            "app/low/helpers.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from app.low import f
                def f() -> None:
                    from .. import high  # function-local, relative: still upward
            """,
        },
    )
    imports = collect_imports(modules)
    edges = {(edge.source, edge.target, edge.late) for edge in imports}
    assert ("app.high", "app.low.helpers", False) in edges  # a submodule, named as a name
    assert ("app.low.helpers", "app.low", False) in edges
    assert ("app.low.helpers", "app.high", True) in edges
    assert cycles(graph_of(imports)) == [["app.high", "app.low", "app.low.helpers"]]
    assert violations(imports, FAKE_LAYERS, {}) == [
        "app.low.helpers:6 imports app.high (low -> high, up the layers)"
    ]


def test_checker_keeps_late_only_layers_late(tmp_path: Path) -> None:
    modules = fake_package(
        tmp_path,
        {
            "app/__init__.py": "import app.low\n",
            "app/low.py": "",
            "app/high.py": "def run() -> None:\n    import app.low\n",
        },
    )
    imports = collect_imports(modules)
    assert {(edge.source, edge.late) for edge in imports} == {("app", False), ("app.high", True)}
    assert violations(imports, FAKE_LAYERS, {"high": ("low",)}) == [
        "app:1 imports app.low (high -> low, only inside a function)"
    ]


def test_checker_places_a_module_by_its_most_specific_pattern() -> None:
    layers = (("low", ("app.*", "app.low")), ("high", ("app.high", "app.cli.*")))
    assert layer_of("app.low", layers) == "low"
    assert layer_of("app.other", layers) == "low"
    assert layer_of("app.high", layers) == "high"  # named, over the package's wildcard
    assert layer_of("app.cli.run", layers) == "high"  # the longer wildcard
    with pytest.raises(LookupError, match="no layer"):
        layer_of("elsewhere", layers)
    with pytest.raises(LookupError, match="equally"):
        layer_of("app.low", (*layers, ("again", ("app.low",))))


def test_the_architecture_notes_name_every_package() -> None:
    # docs/ARCHITECTURE.md has a section per package: a package or module added to intent/
    # or tasks/ without a word there fails here.
    notes = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    tops = {name.split(".")[1] for name in discover(ROOT, PACKAGES) if name.count(".") >= 1}
    missing = sorted(top for top in tops if f"`{top}" not in notes and f"{top}.py" not in notes)
    assert missing == [], f"docs/ARCHITECTURE.md says nothing of: {missing}"
