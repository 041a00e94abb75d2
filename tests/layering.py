"""The import walker behind tests/test_layering.py: every import of a source tree, its cycles, its rule breaks.

Every `import` and `from … import` counts, wherever it stands: at module level, inside a function
(a deferred import is still a dependency, only a hidden one) and under `if TYPE_CHECKING:` (a type
the module names is part of its design, even if Python never loads it at run time). Relative imports
are resolved. `import a.b.c` is an edge to `a.b.c` alone, not to the packages `a` and `a.b` Python
also initialises: otherwise every package `__init__` that re-exports a submodule would be a cycle.
Imports computed at run time (`importlib.import_module`) are not seen.

Patterns in the rules: `pkg.*` is the module `pkg` and everything below it, `*` any module, any
other pattern exactly that module. In the layers an exact name wins over a `pkg.*` pattern, so one
module of a package can stand in another layer than its package (a subsystem's `config` module).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One edge of the graph: `importer` names `imported` at path:line."""

    importer: str
    imported: str
    path: str
    line: int
    where: str = ""  # "", "in a function" or "under TYPE_CHECKING"

    def at(self) -> str:
        """path:line, and where the import hides if it does."""
        return f"{self.path}:{self.line}" + (f", {self.where}" if self.where else "")


@dataclass(frozen=True)
class Rules:
    """The layering, as data (see tests/test_layering.py for the project's)."""

    # Top to bottom: a module may import modules of its own layer and of the layers below.
    layers: Sequence[tuple[str, Sequence[str]]]
    # Modules matching the key may import, of the tree's own modules, only those matching the values.
    may_import_only: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Modules matching the key may be imported only by modules matching the values.
    only_imported_by: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # (importer, imported, why): never, whether the imported module is in the tree or not (tests, bench).
    forbidden: Sequence[tuple[str, str, str]] = ()
    # Exact (importer, imported) pairs that break a rule today, with the reason; each must still be needed.
    exceptions: Mapping[tuple[str, str], str] = field(default_factory=dict)


def matches(name: str, pattern: str) -> bool:
    """Whether a module name falls under a rule pattern."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return name == base or name.startswith(base + ".")
    return name == pattern


def _shown(pattern: str) -> str:
    return pattern.removesuffix(".*")


def discover(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package) for every .py file under root/<package>."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportFinder(ast.NodeVisitor):
    """Collects every import node of a module with where it stands."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._functions = 0
        self._type_checking = 0

    def _in_function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_If(self, node: ast.If) -> None:
        guarded = _is_type_checking(node.test)
        self._type_checking += guarded
        for stmt in node.body:
            self.visit(stmt)
        self._type_checking -= guarded
        for stmt in node.orelse:
            self.visit(stmt)

    def _record(self, node: ast.Import | ast.ImportFrom) -> None:
        where = "under TYPE_CHECKING" if self._type_checking else "in a function" if self._functions else ""
        self.found.append((node, where))

    visit_Import = visit_ImportFrom = _record


def _owner(name: str, known: Mapping[str, object]) -> str:
    """The known module a dotted name lives in (itself, or its longest known prefix); else the name as is."""
    probe = name
    while probe:
        if probe in known:
            return probe
        probe = probe.rpartition(".")[0]
    return name


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             known: Mapping[str, object]) -> list[str]:
    if isinstance(node, ast.Import):
        return [_owner(alias.name, known) for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 >= len(base):
            raise ValueError(f"{module}: relative import beyond the top-level package (line {node.lineno})")
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # `from pkg import name` names the submodule pkg.name when there is one, else an attribute of pkg.
    return [_owner(f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix, known)
            for alias in node.names]


def collect_imports(root: Path, packages: Iterable[str]) -> tuple[dict[str, tuple[Path, bool]], list[Import]]:
    """Every module of the packages, and one Import per (importer, imported) pair: its first occurrence."""
    modules = discover(root, packages)
    edges: dict[tuple[str, str], Import] = {}
    for module, (path, is_package) in modules.items():
        finder = _ImportFinder()
        finder.visit(ast.parse(path.read_text(), str(path)))
        for node, where in finder.found:
            for target in _targets(module, is_package, node, modules):
                if target != module and (module, target) not in edges:
                    edges[(module, target)] = Import(module, target, str(path.relative_to(root)), node.lineno,
                                                     where)
    return modules, list(edges.values())


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; singletons included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        while work:
            v, successors = work[-1]
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    component: list[str] = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    out.append(sorted(component))
    return out


def shortest_cycle(start: str, graph: Mapping[str, Iterable[str]], members: set[str]) -> list[str]:
    """A shortest path start -> … -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        v = queue.popleft()
        for w in sorted(set(graph.get(v, ())) & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in seen:
                seen.add(w)
                previous[w] = v
                queue.append(w)
    raise ValueError(f"{start} is on no cycle within {sorted(members)}")


def find_cycles(modules: Iterable[str], imports: Iterable[Import]) -> list[str]:
    """One message per import cycle: `a -> b -> a`, then where each of its imports stands."""
    known = set(modules)
    by_pair = {(i.importer, i.imported): i for i in imports if i.imported in known}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for importer, imported in by_pair:
        graph[importer].add(imported)
    messages = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = shortest_cycle(component[0], graph, set(component))
        steps = "; ".join(by_pair[pair].at() for pair in pairwise(cycle))
        rest = f" (one cycle of the tangle {', '.join(component)})" if len(component) > len(cycle) - 1 else ""
        messages.append(f"import cycle: {' -> '.join(cycle)} ({steps}){rest}")
    return messages


def _layer(module: str, rules: Rules) -> tuple[int, str] | str:
    """The module's layer (index from the top) and the pattern that puts it there, or what is wrong."""
    hits = [(i, p) for i, (_, patterns) in enumerate(rules.layers) for p in patterns if matches(module, p)]
    exact = [(i, p) for i, p in hits if p == module]
    if exact:  # an exact name wins over the package patterns it also matches
        hits = exact
    if len(hits) == 1:
        return hits[0]
    if not hits:
        return f"{module} is in no layer: add it to LAYERS in tests/test_layering.py"
    names = " and ".join(f"{rules.layers[i][0]} ({p})" for i, p in hits)
    return f"{module} is in more than one layer: {names}"


def _breaks(imp: Import, known: set[str], rules: Rules) -> list[str]:
    """What this one import breaks, each as `a imports b (where): rule`."""
    head = f"{imp.importer} imports {imp.imported} ({imp.at()})"
    out = [f"{head}: {_shown(a)} may not import {_shown(b)}: {why}" for a, b, why in rules.forbidden
           if matches(imp.importer, a) and matches(imp.imported, b)]
    if imp.imported not in known:
        return out
    for key, allowed in rules.may_import_only.items():
        if matches(imp.importer, key) and not any(matches(imp.imported, p) for p in allowed):
            out.append(f"{head}: {_shown(key)} may not import {imp.imported} "
                       f"(it may import only {', '.join(map(_shown, allowed))})")
    for key, importers in rules.only_imported_by.items():
        if matches(imp.imported, key) and not any(matches(imp.importer, p) for p in importers):
            out.append(f"{head}: only {', '.join(map(_shown, importers)) or 'nothing'} may import {_shown(key)}")
    below, above = _layer(imp.importer, rules), _layer(imp.imported, rules)
    if isinstance(below, tuple) and isinstance(above, tuple) and above[0] < below[0]:
        out.append(f"{head}: {_shown(below[1])} may not import {_shown(above[1])} "
                   f"(layer {rules.layers[above[0]][0]} is above {rules.layers[below[0]][0]})")
    return out


def check_rules(modules: Iterable[str], imports: Iterable[Import], rules: Rules) -> list[str]:
    """Every rule break, layer-less module and stale exception, as one message each."""
    known = set(modules)
    problems = [layer for m in sorted(known) if isinstance(layer := _layer(m, rules), str)]
    used: set[tuple[str, str]] = set()
    for imp in sorted(imports, key=lambda i: (i.importer, i.imported)):
        broken = _breaks(imp, known, rules)
        if broken and (imp.importer, imp.imported) in rules.exceptions:
            used.add((imp.importer, imp.imported))
            continue
        problems += broken
    problems += [f"exception {a} -> {b} breaks no rule any more: remove it from EXCEPTIONS"
                 for a, b in rules.exceptions if (a, b) not in used]
    return problems
