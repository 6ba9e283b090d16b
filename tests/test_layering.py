"""Data flows one way: no module imports a layer above its own, siblings stay apart,
and no two modules import each other (DESIGN.md, "Layout").

The check reads every module's syntax tree, so imports inside functions and under
``TYPE_CHECKING`` count as well: a function-local import does not hide an upward one.
`test_the_check_fails_on_purpose` runs the same check on a small package built to break
both rules, so a check that silently passes everything would fail here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "romerea_vo"

LAYERS: list[set[str]] = [
    {"__init__", "errors"},
    {"ids", "catalogue_files", "client", "plotting"},  # shared leaves
    {"products"},
    {"adql"},
    {"votable"},
    {"variability"},
    {"lightcurves"},
    {"statistics_pass"},
    {"store"},
    {"xmatch"},
    {"lightcurve_documents"},
    {"service", "samp", "export_lightcurves"},  # siblings: never import each other
    {"cli"},
]
"""Bottom to top: each top-level module or subpackage may import only those below it
(and itself)."""

KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}
"""Upward or sibling imports that are known and have an issue to remove them."""


def modules(package: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, for type checkers only) for every import of the package's
    own modules in ``path`` (the module ``name``); ``known``: the package's modules."""
    package_name = name if path.name == "__init__.py" else name.rpartition(".")[0]
    root = name.partition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_name.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import Name`, mod
            targets = {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                       for a in node.names}  # fmt: skip
        elif isinstance(node, ast.Import):
            targets = {a.name for a in node.names}
        else:
            continue
        for full in sorted(targets):
            if full == root or full.startswith(root + "."):
                yield resolve(full, known), node.lineno, id(node) in type_only


def layer_of(module: str) -> tuple[int, str]:
    part = module.split(".")[1] if "." in module else "__init__"
    for i, group in enumerate(LAYERS):
        if part in group:
            return i, part
    raise AssertionError(f"{module}: its part {part!r} is in no layer of LAYERS")


def resolve(target: str, known: set[str]) -> str:
    """The module an import names (``pkg.mod.Name`` -> ``pkg.mod``)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def violations(package: Path, exceptions: dict | None = None) -> list[str]:
    """Every upward or sibling import, and every import cycle between modules."""
    found = dict(modules(package))
    known = set(found)
    out: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in found.items():
        for target, line, type_only in imports(name, path, known):
            if target == name:
                continue
            if not type_only:  # function-local imports count: they may hide a cycle
                graph[name].add(target)
            (mine, my_part), (theirs, their_part) = layer_of(name), layer_of(target)
            upward = theirs > mine or (theirs == mine and their_part != my_part)
            if upward and (name, target) not in (exceptions or {}):
                where = f"{path.relative_to(package.parent)}:{line}"
                reason = f"{their_part} is not below {my_part}"
                out.append(f"{where}: {name} imports {target} ({reason})")
    out.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_data_flows_one_way():
    assert violations(PACKAGE, KNOWN_EXCEPTIONS) == []


def test_known_exceptions_are_still_needed():
    """An exception whose import has gone is removed from the list."""
    found = dict(modules(PACKAGE))
    present = {
        (name, target)
        for name, path in found.items()
        for target, _, _ in imports(name, path, set(found))
    }
    assert set(KNOWN_EXCEPTIONS) <= present


def test_the_check_fails_on_purpose(tmp_path):
    pkg = tmp_path / "romerea_vo"
    for sub in ("products", "store", "service", "samp"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    # upward, hidden in a function
    (pkg / "store" / "ingest.py").write_text(
        "from ..errors import x\n\ndef f():\n    from ..service.app import y\n"
    )
    # sibling
    (pkg / "samp" / "bridge.py").write_text("from romerea_vo.service import app\n")
    (pkg / "service" / "app.py").write_text("from . import tap\n")
    # a cycle inside one layer, hidden in a function
    (pkg / "service" / "tap.py").write_text("def f():\n    from .app import z\n")
    found = violations(pkg)
    assert any("store.ingest imports romerea_vo.service.app" in v for v in found), found
    assert any("samp.bridge imports romerea_vo.service" in v for v in found), found
    assert any(
        v == "import cycle: romerea_vo.service.app -> romerea_vo.service.tap" for v in found
    ), found
    assert len(found) == 3, found
