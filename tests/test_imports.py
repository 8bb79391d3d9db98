"""The package map holds: layers (app -> {retrieval, indexer}, indexer -> retrieval) and no import cycles.

Every import statement in retrieval/, indexer/ and app/ is parsed, the lazy ones inside functions included
(they still run, so a cycle through them is a cycle). TYPE_CHECKING-only imports are ignored: they never run.
An edge goes to the module an import names: ``from pkg import name`` goes to ``pkg.name`` when that is a
module, else to ``pkg``. Cycles are the strongly connected components of that graph with more than one module
(or a module importing itself).
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"retrieval": "imgrag.retrieval", "indexer": "imgrag.indexer", "app": "imgrag.app"}
LAYER_OK = {
    "imgrag.retrieval": {"imgrag.retrieval"},
    "imgrag.indexer": {"imgrag.indexer", "imgrag.retrieval"},
    "imgrag.app": {"imgrag.app", "imgrag.indexer", "imgrag.retrieval"},
}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for folder, pkg in FOLDERS.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = p
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, is_pkg: bool, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()

    def resolve(target: str) -> str | None:
        # the longest known module prefix of target
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            cand = ".".join(parts[:i])
            if cand in mods:
                return cand
        return None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("imgrag."):
                    r = resolve(a.name)
                    if r:
                        out.add(r)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("imgrag."):
                for a in node.names:
                    full = f"{module}.{a.name}"
                    r = full if full in mods else resolve(module)
                    if r:
                        out.add(r)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, p.name == "__init__.py", mods) for m, p in mods.items()}


def _layer(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_layers():
    bad = [f"{m} imports {t}" for m, ts in _graph().items() for t in sorted(ts)
           if _layer(t) not in LAYER_OK[_layer(m)]]
    assert not bad, "layer violations (allowed: app -> {retrieval, indexer}, indexer -> retrieval):\n" + "\n".join(bad)


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        # iterative Tarjan (the graph is small, but recursion limits are not worth testing)
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    graph = _graph()
    cycles = [c for c in _sccs(graph) if len(c) > 1]
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_detector_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in _sccs(g) if len(c) > 1] == [["a", "b", "c"]]


def test_every_package_is_listed_for_installation():
    """A package folder missing from pyproject's list would be absent from a wheel install."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages with no folder: {sorted(listed - found)}"


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_modules_stay_small(folder):
    """The restructuring rule: no module over 500 lines (tests aside)."""
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not big, f"modules over 500 lines: {big}"


def test_design_map_matches_the_tree():
    """docs/DESIGN.md's module tree names every module, and every module it names exists."""
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    import re

    stems = {p.stem for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if p.stem != "__init__"}
    named = set(re.findall(r"([a-z_]+)\.py", text))
    for group in re.findall(r"\{([a-z_,]+)\}\.py", text):
        named.update(group.split(","))
    missing = sorted(s for s in stems if s not in named and s != "__main__")
    assert not missing, f"modules missing from docs/DESIGN.md: {missing}"
    tree = text.split("```")[1]  # the module tree block
    in_tree = set(re.findall(r"([a-z_]+)\.py", tree))
    for group in re.findall(r"\{([a-z_,]+)\}\.py", tree):
        in_tree.update(group.split(","))
    stale = sorted(in_tree - stems - {"__init__"})
    assert not stale, f"docs/DESIGN.md names modules that do not exist: {stale}"
