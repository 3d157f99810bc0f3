"""The shape of src/: no import cycles, a headless core, modules of a readable size, little repetition.

The module graph comes from an ``ast`` walk over every ``.py`` under ``src/``: every ``import`` and
``from ... import`` statement, at module level or inside functions and classes, with relative
imports resolved. Only imports under ``if TYPE_CHECKING:`` are left out (they never run).
``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``
itself (its ``__init__``); importing ``pkg.mod`` does not count as importing ``pkg``'s
``__init__`` (Python runs it first, but that edge exists for every submodule and is no cycle of
the code's making).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("spgpt_core", "napari_spgpt")
GUI_LIBRARIES = ("napari", "qtpy", "PySide2", "PySide6", "PyQt5", "PyQt6", "magicgui", "vispy", "superqt")
MAX_LINES = 400

#: Cycles known today, each as its sorted tuple of modules, for the agent that removes them.
#: The test fails on any other cycle, and on a listed one that no longer exists (so the list shrinks).
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}

#: Modules allowed over MAX_LINES lines, each with the reason it is still one file.
LONG_MODULES: dict[str, str] = {
    "spgpt_core/io.py": "reading (h5ad, SpatialData tables), checking and atomically writing slides share the "
                        "coordinate / gene-name helpers; splitting readers from writers is planned",
    "spgpt_core/datasets.py": "one registry of public data sets: each entry's download, checksum and conversion "
                              "code sit together so an entry reads top to bottom",
    "spgpt_core/metrics.py": "the paper's evaluation metrics (clustering, integration, deconvolution, imputation) "
                             "with their shared neighbour-graph and label helpers; to be split per task",
    "spgpt_core/params.py": "every option of every verb declared once (default, check, flag, help), so the CLI, the "
                            "API and the plugin read one declaration; one file by design",
    "napari_spgpt/_io.py": "the plugin's reader and the slide model behind every widget (layers, SpatialData "
                           "selection, table sync) that the widgets all use; to be split with the widget restructure",
}

#: Pairs reported by `duplicates` over src/ when this test was written; it may only go down.
MAX_DUPLICATE_PAIRS = 6


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((SRC / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """(imported module name, line) for every import statement that can run."""
    package = module if is_package else module.rpartition(".")[0]
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target, node.lineno, tuple(a.name for a in node.names)
        todo.extend(ast.iter_child_nodes(node))


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, list[tuple[str, int]]]]:
    """Internal edges {module: {imported module: first line}} and all imports {module: [(name, line)]}."""
    files = _source_files()
    edges: dict[str, dict[str, int]] = {m: {} for m in files}
    raw: dict[str, list[tuple[str, int]]] = {m: [] for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, line, names in _imports(tree, mod, path.name == "__init__.py"):
            raw[mod].append((target, line))
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            if len(targets) < len(names) or not names:
                # some names are attributes of `target` itself; for `import a.b.c`, the deepest module
                t = target
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t:
                    targets.append(t)
            for t in targets:
                if t != mod:
                    edges[mod].setdefault(t, line)
    return edges, raw


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The shortest cycle through each module that is in one (strongly connected components of the
    graph, Tarjan), each cycle once: a module in a cycle shows up with the imports that close it."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]

    def strongconnect(v):  # Tarjan (recursive: the graph has ~100 modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    cycles, seen = [], set()
    for comp in comps:
        for start in sorted(comp):  # the shortest cycle through each module of the component
            cycle = _shortest_cycle(edges, comp, start)
            key = frozenset(zip(cycle, cycle[1:]))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(edges, comp: set[str], start: str) -> list[str]:
    """Breadth-first from ``start`` back to itself, inside the component."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but none was found")


def _describe(cycle: list[str], edges) -> str:
    return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_module_graph_sees_the_imports():
    edges, _ = _graph()
    assert "spgpt_core.tl._embed" in edges["spgpt_core.tl"]  # module level
    assert "spgpt_core.checkpoint.scgpt" in edges["spgpt_core.checkpoint.pretrained"]  # inside a method
    assert "spgpt_core.output" in edges["napari_spgpt._export"]  # absolute, inside a function
    toy = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert _cycles(toy) == [["a", "b", "c", "a"]]
    two = {"pkg": {"pkg.x": 1}, "pkg.x": {"pkg": 2, "pkg.y": 3}, "pkg.y": {"pkg.x": 4}}  # one component
    assert _cycles(two) == [["pkg", "pkg.x", "pkg"], ["pkg.y", "pkg.x", "pkg.y"]]


def test_no_import_cycles():
    edges, _ = _graph()
    cycles = _cycles(edges)
    found = {tuple(sorted(set(c))): c for c in cycles}
    new = [_describe(c, edges) for key, c in found.items() if key not in KNOWN_CYCLES]
    gone = [key for key in KNOWN_CYCLES if key not in found]
    assert not new, "import cycles in src/ (module (line of the import) -> imported module):\n" + "\n".join(new)
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_spgpt_core_is_headless():
    _, raw = _graph()
    pattern = re.compile(rf"^({'|'.join(GUI_LIBRARIES)})(\.|$)")
    bad = [f"{mod} line {line}: import {name}" for mod, imports in raw.items() if mod.split(".")[0] == "spgpt_core"
           for name, line in imports if name and (pattern.match(name) or name.split(".")[0] == "napari_spgpt")]
    assert not bad, "spgpt_core must not import napari, Qt or the plugin:\n" + "\n".join(bad)


def test_no_module_over_400_lines_without_a_reason():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _source_files().values()}
    too_long = {f: n for f, n in sizes.items() if n > MAX_LINES and f not in LONG_MODULES}
    assert not too_long, (f"modules over {MAX_LINES} lines: {too_long}; split them, or add them to LONG_MODULES "
                          "with the reason they are one file")
    stale = [f for f in LONG_MODULES if sizes.get(f, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from LONG_MODULES: {stale}"
    assert all(reason.strip() for reason in LONG_MODULES.values())


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the `duplicates` command is not installed here")
def test_no_more_duplicated_code_than_before():
    out = subprocess.run(["duplicates", "--repo", str(SRC), "--most", "40", "--seconds", "120"],
                         capture_output=True, text=True, timeout=300).stdout
    if "incomplete:" in out:
        pytest.skip(f"duplicates did not finish: {out.splitlines()[-1]}")
    first = out.splitlines()[0] if out.strip() else ""
    m = re.match(r"(\d+) pairs?", first)
    pairs = 0 if first.startswith("no duplicates") else int(m.group(1)) if m else None
    assert pairs is not None, f"cannot read the output of duplicates:\n{out}"
    assert pairs <= MAX_DUPLICATE_PAIRS, f"{pairs} duplicated pairs in src/ (at most {MAX_DUPLICATE_PAIRS}):\n{out}"


def _says_why(lines: list[str], lineno: int) -> bool:
    """An import's reason: a comment on its line, or on the comment / ``try:`` line that opens its block."""
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith(("import ", "from ")):
        i -= 1  # the other imports of the same block
    return i >= 0 and "#" in lines[i] and lines[i].strip().startswith(("#", "try:"))


def test_imports_inside_functions_say_why():
    """spgpt_core imports at module top; an import inside a function (an optional extra, a slow import on a
    rare path) carries its reason. The CLI is exempt: its commands import lazily so `spgpt --help` is fast."""
    bad = []
    for mod, path in _source_files().items():
        if not mod.startswith("spgpt_core") or mod.startswith("spgpt_core.cli"):
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and not _says_why(lines, sub.lineno):
                        bad.append(f"{path.relative_to(SRC)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not bad, "imports inside functions without a reason (move them to the top or say why):\n" + "\n".join(bad)
