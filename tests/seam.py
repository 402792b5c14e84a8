"""The notebook seam: load a notebook's imports and def/class cells into a fresh module.

Tests use it to check a chapter's from-scratch code against the package::

    nb = load_notebook_defs("notebooks/01_navit_packing.ipynb")
    torch.testing.assert_close(nb.pack(images), k25mini.vision.pack(images))

Only ``import``/``from ... import`` statements, ``def``/``class`` definitions and ALL_CAPS
constant assignments are kept (everything else in a cell - experiments, plots - is dropped), so a
definition that silently reads a notebook global fails here instead of drifting.
"""

from __future__ import annotations

import ast
import builtins
import json
import linecache
import symtable
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_constant_assign(node: ast.AST) -> bool:
    if not isinstance(node, (ast.Assign, ast.AnnAssign)):
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)


def notebook_source(path: str | Path) -> str:
    """The kept statements of every code cell, in order, as one Python source."""
    path = Path(path)
    if not path.is_absolute():
        path = ROOT / path
    nb = json.loads(path.read_text(encoding="utf-8"))
    kept: list[str] = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        # drop IPython magics / shell lines before parsing
        src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
        tree = ast.parse(src)
        lines = src.splitlines(keepends=True)
        for node in tree.body:
            if isinstance(node, _KEEP) or _is_constant_assign(node):
                # start at the first decorator so e.g. @triton.jit / @dataclass are kept
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                kept.append("".join(lines[first - 1 : node.end_lineno]).rstrip())
    return "\n\n".join(kept) + "\n"


def unresolved_globals(source: str, namespace: dict) -> dict[str, set[str]]:
    """Global names that functions/classes in ``source`` read but neither it nor builtins define."""
    table = symtable.symtable(source, "<notebook>", "exec")
    missing: dict[str, set[str]] = {}

    def walk(t: symtable.SymbolTable, qual: str) -> None:
        for child in t.get_children():
            name = f"{qual}.{child.get_name()}" if qual else child.get_name()
            if child.get_type() == "function":
                for sym in child.get_symbols():
                    n = sym.get_name()
                    if sym.is_global() and sym.is_referenced() and n not in namespace and not hasattr(builtins, n):
                        missing.setdefault(name, set()).add(n)
            walk(child, name)

    walk(table, "")
    return missing


def load_notebook_defs(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Execute the notebook's imports and definitions in a fresh module and return it.

    Raises AssertionError if a definition reads a global the notebook never defines.
    """
    source = notebook_source(path)
    mod = types.ModuleType(name or f"nb_{Path(path).stem}")
    filename = f"<notebook {Path(path).name}>"
    mod.__file__ = filename
    # register the source so inspect.getsource works on the loaded defs (triton.jit and friends need it)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), mod.__dict__)
    missing = unresolved_globals(source, mod.__dict__)
    if missing:
        raise AssertionError(f"{path}: definitions read undefined globals: {missing}")
    return mod
