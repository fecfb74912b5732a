"""The import rule of DESIGN.md, checked on the source with ``ast`` (no module is imported).

Every ``import`` / ``from ... import`` statement of ``lit_attr/`` counts, also inside functions and
``if TYPE_CHECKING:``. An edge goes from the importing file to the file of the module it names, and to the file of
every submodule its ``from`` list names (``from lit_attr import viz`` is an edge to ``lit_attr/__init__.py`` and to
``lit_attr/viz.py``). The rules:

* **private**: no file imports a ``_private`` module or a ``_private`` name of another subpackage; the top level of
  ``lit_attr`` counts as one package, so its shared internals (``lit_attr/_checks.py``, ...) are open to all.
* **layers**: imports run down :data:`LAYERS` (sideways within a layer is fine), except that ``functional`` and
  ``methods`` never import each other. An import inside a function that emits a ``DeprecationWarning`` is a
  deprecation shim (a moved name still reachable from its old place, imported only when used) and may point up.
* **circles**: no two files import each other, directly or through others (shims included). A package's
  ``__init__.py`` and one of its own modules importing each other (a re-export beside ``from package import
  name``) is not counted.
* **length**: no file over :data:`MAX_LINES` lines.

``python ../shared/tools/layering.py`` checks the same private, circle and length rules.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 500

#: Every top-level module and subpackage of lit_attr -> its layer; imports only go to the same layer or lower ones.
LAYERS: dict[str, int] = {
    "__init__": 8,  # the package's public re-exports
    "cli": 7,  # the `lit_attr` console script
    "evaluate": 6,  # orchestrators, thin users of the runner, and the demo models that use them
    "callbacks": 6,
    "demo": 6,
    "attribution_quality": 6,
    "models": 6,
    "report": 5,  # outputs: report.html, loggers; resuming an evaluation
    "report_trust": 5,
    "delivery": 5,
    "_resume": 5,
    "runner": 4,  # the one loop: methods -> metrics -> records; results shown as their metrics declare
    "records": 4,
    "presenting": 4,
    "metrics": 3,  # torchmetrics Metrics, their registry and presentation
    "functional": 2,  # pure tensor functions | attribution methods: they do not import each other
    "methods": 2,
    "inputs": 1,  # input kinds, batches, rendering, shared internals, embedded data
    "batch": 1,
    "viz": 1,
    "data": 1,
    "_checks": 1,
    "_binary": 1,
    "_hygiene": 1,
    "_memory": 1,
    "_optional": 1,
    "_probe": 1,
    "_states": 1,
    "keys": 1,
}
#: Same-layer units that must not import each other.
APART: frozenset[frozenset[str]] = frozenset({frozenset({"functional", "methods"})})

@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` (files relative to the repository), through ``module``."""

    source: str
    target: str
    module: str
    names: tuple[str, ...]
    shim: bool


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _warns_deprecation(function: ast.AST) -> bool:
    """Whether a function calls ``warn(..., DeprecationWarning, ...)`` (``warnings.warn`` or a bare ``warn``)."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "warn":
            values = [*node.args, *(keyword.value for keyword in node.keywords)]
            if any(isinstance(v, ast.Name) and v.id == "DeprecationWarning" for v in values):
                return True
    return False


def _statements(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, and whether it sits in a function that warns of a deprecation."""

    def visit(node: ast.AST, shim: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, shim
            inner = shim or (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _warns_deprecation(child))
            yield from visit(child, inner)

    return visit(tree, False)


def import_edges(root: Path, package: str = "lit_attr") -> list[Edge]:
    """The import edges between the files of ``root / package``, as the module docstring defines them."""
    edges = []
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        here = parts[:-1] if parts[-1] != "__init__" else parts  # the package a relative import starts from
        for node, shim in _statements(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named = [(alias.name, ()) for alias in node.names]
            else:
                base = list(here[: len(here) - node.level + 1]) if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                named = [(module, tuple(alias.name for alias in node.names))]
            for module, names in named:
                if module != package and not module.startswith(f"{package}."):
                    continue
                targets = [_module_file(root, module)] + [_module_file(root, f"{module}.{name}") for name in names]
                for target in dict.fromkeys(t for t in targets if t is not None):
                    edges.append(Edge(str(path.relative_to(root)), str(target.relative_to(root)), module, names, shim))
    return edges


def unit_of(file: str) -> str:
    """``lit_attr/metrics/registry.py`` -> ``metrics``; ``lit_attr/runner.py`` -> ``runner``."""
    parts = Path(file).parts
    return parts[1] if len(parts) > 2 else Path(parts[1]).stem


def _private(edge: Edge) -> list[str]:
    source, target = unit_of(edge.source), unit_of(edge.target)
    if len(Path(edge.target).parts) == 2 or source == target:  # the top level, or its own subpackage
        return []
    found = [edge.module] if any(p.startswith("_") and p != "__init__" for p in edge.module.split(".")[2:]) else []
    found += [f"{edge.module}.{name}" for name in edge.names if name.startswith("_")]
    return [f"private: {edge.source} imports {what}" for what in found]


def _circles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan), less package/own-module pairs."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.source != edge.target:
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1 and not (len(component) == 2 and any(f.endswith("__init__.py") for f in component)):
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return components


def violations(root: Path, layers: dict[str, int], package: str = "lit_attr") -> set[str]:
    """Every break of the rules of the module docstring in ``root / package``."""
    edges = import_edges(root, package)
    found: set[str] = set()
    for edge in edges:
        found.update(_private(edge))
        source, target = unit_of(edge.source), unit_of(edge.target)
        if source == target:
            continue
        for unit in (source, target):
            if unit not in layers:
                found.add(f"unlayered: {unit} (add it to LAYERS)")
        if source in layers and target in layers and not edge.shim:
            if layers[target] > layers[source]:
                found.add(f"up: {edge.source} ({source}, {layers[source]}) imports {edge.target} "
                          f"({target}, {layers[target]})")  # fmt: skip
            if frozenset({source, target}) in APART:
                found.add(f"apart: {edge.source} imports {edge.target} ({source} and {target} must not meet)")
    found.update(f"circle: {' <-> '.join(component)}" for component in _circles(edges))
    for path in sorted((root / package).rglob("*.py")):
        if path.read_text(encoding="utf-8").count("\n") > MAX_LINES:
            found.add(f"long: {path.relative_to(root)}")
    return found


def test_lit_attr_follows_the_import_rule():
    found = sorted(violations(REPO, LAYERS))
    assert not found, "violations of the import rule:\n" + "\n".join(found)


def test_every_unit_of_lit_attr_has_a_layer():
    units = {unit_of(str(path.relative_to(REPO))) for path in (REPO / "lit_attr").rglob("*.py")}
    assert units == set(LAYERS)


# ---------------------------------------------------------------------------------------------------- the checker
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TOY_LAYERS = {"__init__": 3, "top": 3, "low": 1, "functional": 2, "methods": 2, "sub": 1, "_shared": 1}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"low.py": "import pkg.top\n", "top.py": ""}, {"up: pkg/low.py (low, 1) imports pkg/top.py (top, 3)"}),
        ({"low.py": "def f():\n    from pkg import top\n", "top.py": ""},  # inside a function, and via pkg/__init__
         {"up: pkg/low.py (low, 1) imports pkg/top.py (top, 3)", "up: pkg/low.py (low, 1) imports pkg/__init__.py "
          "(__init__, 3)"}),
        ({"low.py": "import warnings\ndef __getattr__(name):\n    warnings.warn('moved', DeprecationWarning)\n"
                    "    from pkg.top import thing\n    return thing\n", "top.py": "thing = 1\n"}, set()),
        ({"top.py": "from pkg.sub._impl import x\nfrom pkg.sub.api import _hidden\nfrom pkg._shared import y\n",
          "sub/__init__.py": "", "sub/_impl.py": "x = 1\n", "sub/api.py": "_hidden = 1\n", "_shared.py": "y = 1\n"},
         {"private: pkg/top.py imports pkg.sub._impl", "private: pkg/top.py imports pkg.sub.api._hidden"}),
        ({"sub/__init__.py": "from pkg.sub.a import f\n", "sub/a.py": "from pkg.sub import b\n",
          "sub/b.py": "from . import a\n"},
         {"circle: pkg/sub/__init__.py <-> pkg/sub/a.py <-> pkg/sub/b.py"}),  # `from . import a` is via __init__
        ({"sub/__init__.py": "from pkg.sub.a import f\n", "sub/a.py": "from pkg.sub import g\n"}, set()),
        ({"functional/__init__.py": "", "functional/f.py": "from pkg.methods.m import g\n",
          "methods/__init__.py": "", "methods/m.py": "g = 1\n"},
         {"apart: pkg/functional/f.py imports pkg/methods/m.py (functional and methods must not meet)"}),
        ({"low.py": "x = 1\n" * (MAX_LINES + 1), "extra.py": "import pkg.low\n"},
         {"long: pkg/low.py", "unlayered: extra (add it to LAYERS)"}),
    ],
    ids=["up", "up-lazy-and-package", "deprecation-shim", "private", "circle", "package-own-module", "apart", "long"],
)
def test_the_checker_finds_each_kind_of_violation(tmp_path, files, expected):
    _write(tmp_path, {"__init__.py": "", **files})
    assert violations(tmp_path, TOY_LAYERS, package="pkg") == expected
