"""The package layering, checked statically (docs/layout.md): kernels <- components <- experiments <- speedrun/report.

Every module of ``k25mini`` and ``kernels`` is parsed with ``ast`` (nothing is imported), so a cycle hidden
behind a function-level import or a lazy ``__getattr__`` still shows up. Imports under ``if TYPE_CHECKING:``
never run and are left out.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = "k25mini.experiments"
# thin top-level entry points allowed to reach into the experiments package
EXPERIMENT_CLIENTS = {"k25mini.speedrun", "k25mini.report", "k25mini.__main__"}


def _module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every ``.py`` under the package folder ``root`` (``__init__.py`` names the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` branches do run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _imports(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Modules that module ``name`` imports, resolved against ``modules`` (this package's modules)."""

    def resolve(dotted: str) -> str:
        # `import a.b.c` of a name that is not a module of ours: keep the longest prefix that is one
        probe = dotted
        while probe and probe not in modules:
            probe = probe.rpartition(".")[0]
        return probe or dotted

    out = set()
    here = name if is_package else name.rpartition(".")[0]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module or ""
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.add(sub if sub in modules else resolve(src))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            out.add(resolve(node.args[0].value))
    # importing a.b.c first runs the __init__ of every package above it that does not already hold the importer
    for dep in list(out):
        parts = dep.split(".")
        for k in range(1, len(parts)):
            pkg = ".".join(parts[:k])
            if pkg in modules and not (name == pkg or name.startswith(pkg + ".")):
                out.add(pkg)
    out.discard(name)
    return out


def build_import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> modules it imports (anywhere in the file), for the package folder ``root``.

    ``from p.x import y`` counts as an import of module ``p.x.y`` when that is one of ours, else of ``p.x``;
    importing a package counts as importing its ``__init__`` (its dotted name), and importing ``p.x.y`` from
    outside package ``p.x`` as importing ``p.x`` too (Python runs that ``__init__`` first). Relative imports and
    ``importlib.import_module("literal")`` are resolved too. Targets outside the package keep their dotted name.
    """
    files = _module_names(Path(root))
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _imports(tree, name, path.name == "__init__.py", modules)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component of ``graph`` with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def edges(v: str) -> list[str]:
        return sorted(w for w in graph.get(v, ()) if w in graph)

    for start in sorted(graph):  # iterative Tarjan (no recursion limit on deep packages)
        if start in index:
            continue
        work = [(start, iter(edges(start)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(edges(w))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])

    return [_cycle_through(comp[0], set(comp), edges) for comp in sorted(comps)]


def _cycle_through(head: str, members: set[str], edges) -> list[str]:
    """A shortest cycle ``[head, ..., head]`` inside ``members`` (breadth-first search back to ``head``)."""
    prev: dict[str, str | None] = {head: None}
    queue = [head]
    for v in queue:
        for w in edges(v):
            if w == head:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [*reversed(path), head]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {head} in its component")  # pragma: no cover - Tarjan guarantees one


def _format(cycles: list[list[str]]) -> str:
    return "\n".join("  " + " -> ".join(c) for c in cycles)


# --------------------------------------------------------------------------- the builder, on a tiny package


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_builder_resolves_imports(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "import os\nfrom . import b\nfrom .sub import g\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n",
            "pkg/sub/__init__.py": "from ..b import x\n",
            "pkg/sub/c.py": "def f():\n    import pkg.sub.c\n    from pkg import a\n    import importlib\n"
            "    importlib.import_module('pkg.b')\n",
        },
    )
    g = build_import_graph(pkg)
    assert g == {
        "pkg": {"pkg.a"},
        "pkg.a": {"os", "pkg.b", "pkg.sub"},
        "pkg.b": {"typing"},  # the TYPE_CHECKING import never runs
        "pkg.sub": {"pkg.b"},
        "pkg.sub.c": {"importlib", "pkg.a", "pkg.b"},  # function-level imports count; a self-import does not
    }
    assert find_cycles(g) == []


def test_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import g\n",
            "pkg/b.py": "from pkg import c\n",
            "pkg/c.py": "def late():\n    from .a import f\n",
            "pkg/d.py": "import pkg.a\n",  # reaches the cycle but is not part of it
        },
    )
    assert find_cycles(build_import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_cycle_through_a_lazy_package_init_is_found(tmp_path):
    """The old k25mini.world <-> k25mini.data cycle: a submodule import runs the package's __init__."""
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/data/__init__.py": "from pkg.data.tok import T\n\ndef __getattr__(name):\n"
            "    from pkg.data import sets\n    return getattr(sets, name)\n",
            "pkg/data/tok.py": "T = 1\n",
            "pkg/data/sets.py": "from pkg.world import W\n",
            "pkg/world/__init__.py": "from pkg.world.items import W\n",
            "pkg/world/items.py": "from pkg.data.tok import T\nW = T\n",
        },
    )
    g = build_import_graph(pkg)
    assert g["pkg.world.items"] == {"pkg.data", "pkg.data.tok"}
    assert g["pkg.data.sets"] == {"pkg.world"}
    assert find_cycles(g) == [["pkg.data", "pkg.data.sets", "pkg.world", "pkg.world.items", "pkg.data"]]
    (tmp_path / "pkg/world/items.py").write_text("W = 1\n")  # the world no longer imports data: clean
    assert find_cycles(build_import_graph(pkg)) == []


# --------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def k25_graph():
    return build_import_graph(REPO / "k25mini")


def test_no_import_cycles_in_k25mini(k25_graph):
    cycles = find_cycles(k25_graph)
    assert not cycles, "import cycles in k25mini (one path per cycle):\n" + _format(cycles)


def test_only_entry_points_import_experiments(k25_graph):
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in k25_graph.items()
        if mod != EXPERIMENTS and not mod.startswith(EXPERIMENTS + ".") and mod not in EXPERIMENT_CLIENTS
        for dep in deps
        if dep == EXPERIMENTS or dep.startswith(EXPERIMENTS + ".")
    )
    assert not bad, "components must not import k25mini.experiments (docs/layout.md):\n  " + "\n  ".join(bad)


def test_kernels_import_nothing_from_k25mini():
    graph = build_import_graph(REPO / "kernels")
    assert "kernels" in graph
    bad = sorted(f"{m} imports {d}" for m, ds in graph.items() for d in ds if d.split(".")[0] == "k25mini")
    assert not bad, "kernels/ is standalone:\n  " + "\n  ".join(bad)
    assert find_cycles(graph) == []


def test_kernels_is_this_repos_folder():
    """``kernels`` is also the import name of Hugging Face's kernel hub; make sure ours is the one found."""
    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == REPO / "kernels" / "__init__.py", (
        f"`import kernels` finds {spec.origin}, not this repo's kernels/ (another distribution named 'kernels', "
        "e.g. Hugging Face's, shadows it; see docs/layout.md)"
    )
