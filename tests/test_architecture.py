"""The architecture as tests: imports point one way (sweep_platform -> trainables), no cycles, no module of the
platform names a trainable, trainables come through the entry-point group, and platform modules stay small."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep_platform", "trainables")
MAX_PLATFORM_LINES = 420  # "about 400"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module `name` imports, at module level or inside a function (a lazy import is still an edge)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            # the longest project module that is a prefix of the target (from pkg import module -> pkg.module)
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_ancestor_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_trainables_never_import_the_platform():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if m.startswith("trainables")
                 for t in ts if t.startswith("sweep_platform"))
    assert not bad, "trainables/ must not import sweep_platform:\n" + "\n".join(bad)


def test_platform_imports_no_model_package():
    """The platform knows a trainable only through its TrainableSpec (trainables.registry)."""
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if m.startswith("sweep_platform")
                 for t in ts if re.match(r"trainables\.(bast|binaural|cnn_loc)\b", t))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    # Importing a submodule runs its package's __init__: that edge is Python's, not a design choice, so a package
    # importing its own children (re-exports) does not count as a cycle with them.
    graph = {m: {t for t in ts if not _is_ancestor_package(t, m)} for m, ts in GRAPH.items()}
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def connect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_platform_never_names_a_trainable():
    """No branching on "bast" / "binaural" in the platform: names come from the sweep file or the registry."""
    pattern = re.compile(r"""==\s*["'](bast|binaural|cnn_loc)["']|["'](bast|binaural|cnn_loc)["']\s*[:,)]""")
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("sweep_platform"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("sweep_platform")))
def test_platform_modules_are_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_PLATFORM_LINES, f"{MODULES[name]} has {lines} lines; split it by job"


def test_builtin_trainables_register_through_entry_points():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["binsweep.trainables"]
    assert set(declared) >= {"bast", "binaural", "cnn_loc"}
    from trainables.registry import get_trainable, known_trainables, trainable_source

    assert set(known_trainables()) >= set(declared)
    for name, target in declared.items():
        spec = get_trainable(name)
        assert spec.name == name and target.endswith(":SPEC")
        assert trainable_source(name).startswith("binsweep ")  # found through the installed distribution
