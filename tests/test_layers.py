"""The import floors (issue 16), checked from the source with ast.

Floors, bottom up:

    pymta.lib   imports nothing of pymda, pypop, pyimap or the other pymta modules
    pymda       imports only pymta.lib and pymda
    programs    pymta (not lib), pypop, pyimap: each may import pymta.lib, pymda
                and its own package, never another program package

Every import counts, function-level ones included (a lazy import is still a
dependency), and no two modules may import each other, directly or round a
longer loop.  KNOWN_VIOLATIONS lists what the tree still does wrong while
issue 16 moves it; a listed violation that is gone fails too, so the list can
only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pymta", "pymda", "pypop", "pyimap")

# What the tree still does wrong while issue 16 moves it: (importer, imported) pairs,
# (importer, NAMED_IN_STRINGS) for a lower floor that names upper ones in strings,
# and cycles as the sorted tuple of their modules.  Remove an entry when its move lands.
NAMED_IN_STRINGS = "<upper floors named in strings>"
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_files() -> dict[str, Path]:
    """Every module of the four packages, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules NAME imports anywhere in its file (resolved to modules where possible)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" names the module mod; "from mod import func" names mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def named_in_strings() -> dict[str, set[str]]:
    """Project modules that pymta.lib and pymda modules name in a string constant (importlib.import_module,
    preload lists): a lower floor naming an upper one depends on it all the same.  Programs may name other
    programs: they start them as processes (python3 -m pypop.pop3d)."""
    modules = module_files()
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        if floor_of(name) not in ("lib", "pymda"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                if node.value != name:
                    found.setdefault(name, set()).add(node.value)
    return found


def floor_of(module: str) -> str:
    """'lib', 'pymda', or the program package ('pymta', 'pypop', 'pyimap')."""
    if module == "pymta.lib" or module.startswith("pymta.lib."):
        return "lib"
    return module.split(".")[0]


ALLOWED = {
    "lib": {"lib"},
    "pymda": {"lib", "pymda"},
    "pymta": {"lib", "pymda", "pymta"},
    "pypop": {"lib", "pymda", "pypop"},
    "pyimap": {"lib", "pymda", "pyimap"},
}


def floor_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for importer, imported in graph.items():
        for target in imported:
            # The package "pymta" itself is only a namespace: importing it is no step up.
            if target == "pymta":
                continue
            if floor_of(target) not in ALLOWED[floor_of(importer)]:
                bad.add((importer, target))
    return bad


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

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
                found.add(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def report(title: str, items) -> str:
    return title + "\n" + "\n".join(f"    {' -> '.join(item)}" for item in sorted(items))


def test_no_import_goes_up_or_sideways():
    found = floor_violations(import_graph())
    in_strings = floor_violations(named_in_strings())
    found |= {(importer, NAMED_IN_STRINGS) for importer, _ in in_strings}
    new = found - set(KNOWN_VIOLATIONS)
    gone = set(KNOWN_VIOLATIONS) - found
    problems = []
    if new:
        problems.append(report("imports that go up or sideways (importer -> imported):", new))
        if any(imported == NAMED_IN_STRINGS for _, imported in new):
            problems.append(report("the names in strings (importer -> named):", in_strings))
    if gone:
        problems.append(report("fixed, so remove from KNOWN_VIOLATIONS in tests/test_layers.py:", gone))
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    found = cycles(import_graph())
    new = found - set(KNOWN_CYCLES)
    gone = set(KNOWN_CYCLES) - found
    problems = []
    if new:
        problems.append(report("import cycles (modules that reach each other):", new))
    if gone:
        problems.append(report("fixed, so remove from KNOWN_CYCLES in tests/test_layers.py:", gone))
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_it_should(tmp_path):
    """It resolves every form of import (relative, from-package, function-level) and finds loops and floors."""
    source = tmp_path / "m.py"
    source.write_text(
        "import pymta.lib.log\n"
        "from pymta.lib import config, sasl\n"
        "from . import sibling\n"
        "from .sibling import thing\n"
        "def later():\n"
        "    from pymda.maildir import deliver\n"
    )
    modules = dict.fromkeys(
        [
            "pymta.lib",
            "pymta.lib.log",
            "pymta.lib.config",
            "pymta.lib.sasl",
            "pypop.sibling",
            "pypop.m",
            "pymda",
            "pymda.maildir",
        ],
        source,
    )
    assert imports_of("pypop.m", source, modules) == {
        "pymta.lib.log",
        "pymta.lib.config",
        "pymta.lib.sasl",
        "pypop.sibling",
        "pymda.maildir",
    }
    assert import_graph(), "no modules found"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert floor_violations({"pymta.lib.x": {"pymda.y"}, "pymda.y": {"pymta.lib.x"}}) == {("pymta.lib.x", "pymda.y")}
    assert floor_violations({"pypop.a": {"pyimap.b"}, "pyimap.b": set()}) == {("pypop.a", "pyimap.b")}
