"""The import rules between coord's layers hold, and no modules import each other in a cycle.

Every ``.py`` file under ``coord/``, ``client/`` and ``recipes/`` is parsed with ``ast``;
every import is an edge of the graph (relative imports resolved; ``from package import
name`` goes to the submodule when ``name`` is one). Imports inside functions count as
edges too (they run sooner or later); imports under ``if TYPE_CHECKING:`` do not (they
never run). The rules (docs/architecture.md, "Import rules"):

1. Only ``coord.cli`` and ``coord.testing`` (and their submodules) may import ``client``
   or ``recipes``: the server never depends on the client library.
2. ``client`` imports from coord only the wire modules :data:`WIRE` (the codec, the
   errors, CBOR, zxids), and those import nothing else of coord, so a program that uses
   the client loads no server code. ``client`` does not import ``recipes``.
3. ``recipes`` imports only ``client`` (and the standard library and trio).
4. The production server does not import the CLI or the test harness; ``coord.testing``
   does not import ``coord.cli`` (the CLI's ``ensemble`` command imports the testing
   package, not the other way).
5. No import cycles anywhere.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coord", "client", "recipes")
WIRE = frozenset({"coord.protocol", "coord.errors", "coord.cbor", "coord.zxid"}) | frozenset(
    f"coord.protocol.{path.stem}" for path in (ROOT / "coord" / "protocol").glob("*.py") if path.stem != "__init__"
)
"""What ``client`` may import of coord: the codec package (and each of its modules), the errors, CBOR, zxids."""
MAY_USE_CLIENT = ("coord.cli", "coord.testing")
"""The parts of coord that may import ``client`` and ``recipes``."""
RECIPES_THIRD_PARTY = frozenset({"trio"})


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    where: str
    """``file:line`` of the import statement."""

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


@dataclass(frozen=True, slots=True)
class Graph:
    modules: Mapping[str, Path]
    edges: list[Edge]
    """Imports of project modules."""
    external: list[Edge]
    """Imports of anything else (``target`` is the top-level name)."""

    def targets(self, source: str) -> set[str]:
        return {edge.target for edge in self.edges if edge.source == source}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path, root)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere (functions included) but under ``if TYPE_CHECKING:``."""
    if isinstance(tree, ast.Import | ast.ImportFrom):
        yield tree
        return
    if isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for node in tree.orelse:
            yield from _imports(node)
        return
    for child in ast.iter_child_nodes(tree):
        yield from _imports(child)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name ``from <...> import`` refers to in ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def build_graph(modules: Mapping[str, Path], root: Path = ROOT) -> Graph:
    edges: list[Edge] = []
    external: list[Edge] = []

    def add(source: str, target: str, path: Path, line: int) -> None:
        where = f"{path.relative_to(root)}:{line}"
        if target in modules:
            edges.append(Edge(source, target, where))
            return
        # a name inside a module (``import a.b.c`` where c is not a module): its nearest module
        prefix = target
        while "." in prefix:
            prefix = prefix.rsplit(".", 1)[0]
            if prefix in modules:
                edges.append(Edge(source, prefix, where))
                return
        external.append(Edge(source, target.split(".")[0], where))

    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name, path, node.lineno)
                continue
            base = _resolve(name, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(name, submodule if submodule in modules else base, path, node.lineno)
    return Graph(modules, edges, external)


def find_cycles(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target in edges:
        successors.setdefault(source, []).append(target)
        successors.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in successors[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in successors[node]:
                components.append(component)

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(component), successors) for component in components]


def _cycle_in(component: list[str], successors: Mapping[str, list[str]]) -> list[str]:
    """A concrete cycle through the component's first node (breadth first: a shortest one)."""
    start = component[0]
    members = set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in successors[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target in members and target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")


def _in(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def violations(graph: Graph) -> list[str]:
    """Every broken rule, one line each, naming the edge (or the cycle)."""
    found: list[str] = []
    for edge in graph.edges:
        source, target = edge.source, edge.target
        if _in(target, "client", "recipes") and _in(source, "coord") and not _in(source, *MAY_USE_CLIENT):
            found.append(f"{edge}: only coord.cli and coord.testing may import client or recipes")
        if _in(source, "client") and _in(target, "coord") and target not in WIRE:
            found.append(f"{edge}: client may import only {', '.join(sorted(WIRE))} of coord")
        if _in(source, "client") and _in(target, "recipes"):
            found.append(f"{edge}: client may not import recipes (recipes are built on the client)")
        if source in WIRE and target not in WIRE:
            found.append(f"{edge}: the wire modules the client uses may import only each other of coord")
        if _in(source, "recipes") and not _in(target, "recipes", "client"):
            found.append(f"{edge}: recipes may import only client")
        if _in(source, "coord") and not _in(source, *MAY_USE_CLIENT) and _in(target, *MAY_USE_CLIENT):
            found.append(f"{edge}: the server may not import the CLI or the test harness")
        if _in(source, "coord.testing") and _in(target, "coord.cli"):
            found.append(f"{edge}: coord.testing may not import coord.cli (the CLI imports the testing package)")
    allowed = set(sys.stdlib_module_names) | RECIPES_THIRD_PARTY
    for edge in graph.external:
        if _in(edge.source, "recipes") and edge.target not in allowed:
            found.append(f"{edge}: recipes may import only client, trio and the standard library")
    lines = {(edge.source, edge.target): edge for edge in reversed(graph.edges)}
    for cycle in find_cycles(graph.modules, lines):
        steps = ", ".join(str(lines[(a, b)]) for a, b in itertools.pairwise(cycle))
        found.append(f"import cycle {' -> '.join(cycle)}: {steps}")
    return found


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(project_modules())


def test_the_layers_hold_and_nothing_imports_in_a_cycle(graph: Graph) -> None:
    problems = violations(graph)
    assert not problems, "\n".join(problems)


def test_the_graph_sees_what_is_there(graph: Graph) -> None:
    """Guards against a walker that finds nothing and so passes everything."""
    assert {"coord.server.shell", "coord.cli", "coord.cli.lock", "coord.testing", "client", "recipes.lock"} <= set(
        graph.modules
    )
    assert "coord.testing" in graph.targets("coord.cli.ensemble")
    assert "coord.testing.ensemble" in graph.targets("coord.testing")  # its exports, imported on first use
    assert {"client", "recipes"} <= graph.targets("coord.cli.lock")
    assert "coord.protocol" in graph.targets("client._client")
    assert "coord.cli.serve" in graph.targets("coord.cli")  # an import inside main() counts
    assert "coord.testing.ensemble" not in graph.targets("coord.testing.pytest_plugin")  # only under TYPE_CHECKING
    assert {edge.target for edge in graph.external if edge.source == "recipes.lock"} >= {"trio"}


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("from .sub import b\nfrom .sub.b import thing\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\nfrom ..a import x\n\ndef f():\n    from . import c\n")
    (package / "sub" / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg import a\n")
    graph = build_graph(project_modules(tmp_path, ["pkg"]), tmp_path)
    assert graph.targets("pkg") == {"pkg.a"}
    assert graph.targets("pkg.a") == {"pkg.sub.b"}
    assert graph.targets("pkg.sub.b") == {"pkg.a", "pkg.sub.c"}  # ``from .. import a`` is the module a
    assert graph.targets("pkg.sub.c") == set()
    assert [
        " -> ".join(cycle) for cycle in find_cycles(graph.modules, [(e.source, e.target) for e in graph.edges])
    ] == ["pkg.a -> pkg.sub.b -> pkg.a"]


def test_each_rule_names_the_offending_edge(tmp_path: Path) -> None:
    files = {
        "coord/__init__.py": "",
        "coord/errors.py": "",
        "coord/protocol.py": "from coord import errors\n",
        "coord/server.py": "import client\n",
        "coord/cli/__init__.py": "from coord.testing import thing\n",
        "coord/testing/__init__.py": "from coord import cli\n",
        "client/__init__.py": "from coord import server\nfrom coord.protocol import x\n",
        "recipes/__init__.py": "import coord.errors\nimport numpy\nimport asyncio\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(build_graph(project_modules(tmp_path), tmp_path))
    expected = [
        "coord.server -> client (coord/server.py:1): only coord.cli and coord.testing may import client",
        "client -> coord.server (client/__init__.py:1): client may import only",
        "recipes -> coord.errors (recipes/__init__.py:1): recipes may import only client",
        "recipes -> numpy (recipes/__init__.py:2): recipes may import only client, trio",
        "coord.testing -> coord.cli (coord/testing/__init__.py:1): coord.testing may not import coord.cli",
        "import cycle coord.cli -> coord.testing -> coord.cli",
        "import cycle client -> coord.server -> client",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in found), f"{start!r} not in:\n" + "\n".join(found)
    assert not any("asyncio" in line or "coord.protocol ->" in line for line in found)
