"""The one owner of results I/O: where results live, how they are written, and which code made them.

Every experiment writes ``results/<name>.json`` (and per-run files under ``results/<name>/``) through
:func:`write_result`, which stamps the payload with one schema::

    {"schema": 2, "experiment": NAME, ..., "provenance": {
        "git_commit": "<sha or null>", "git_dirty": bool | null,
        "source_hash": "<12 hex>",      # the experiment's sources + every k25mini module they import
        "torch": "2.13.0", "numpy": "2.4.6", "python": "3.11.7",    # the environment (see docs/reliability.md)
        "threads": 2, "wall_s": 123.4, "written_at": "2026-12-03T20:01:02Z"}}

``source_hash`` hashes the *code* (docstrings and comments stripped, so prose edits do not count) of the
experiment's package and of every ``k25mini`` module it imports, transitively. :func:`staleness` compares a
saved result with the current code; callers show its message wherever the result is shown or reused.
Writes are atomic (a per-process temporary file, then ``os.replace``): a crash never leaves half a file,
and side-by-side writers never share a temporary.
"""

from __future__ import annotations

import ast
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ROOT", "RESULTS_DIR", "SCHEMA_VERSION", "results_dir", "write_json", "read_json", "source_files",
           "source_hash", "code_version", "provenance", "write_result", "staleness", "Timer"]

#: the repository root (results/, docs/ and runs/ hang off it, whatever the working directory)
ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "results"
#: 1: results before the experiments layer (no provenance); 2: ``schema`` + ``provenance`` on every file
SCHEMA_VERSION = 2
_PKG_ROOT = ROOT / "k25mini"


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """``override`` if given, else the repository's ``results/``."""
    return Path(override) if override is not None else RESULTS_DIR


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (per-process temporary file, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON at ``path``, or None when the file does not exist. A corrupt file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or restore it from git") from e


# ------------------------------------------------------------------------------------------ code version
def _module_file(name: str) -> Path | None:
    """The file of module ``name`` (``k25mini.x.y``) inside this checkout, or None."""
    parts = name.split(".")
    if parts[0] != "k25mini":
        return None
    base = _PKG_ROOT.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``k25mini`` module ``path`` imports (absolute and relative, at any depth of the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "k25mini")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "k25mini":
                continue
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}") is not None)
    return out


@functools.cache
def source_files(package: str) -> tuple[Path, ...]:
    """The files of ``package`` (a module, or a package with all its modules) and of every k25mini module they
    import, transitively. The ``__init__`` of each parent package is included (importing ``a.b`` runs
    ``a/__init__.py``) but its own imports are not followed: a package's re-exports do not make its other
    modules part of this code's version."""
    start = _module_file(package)
    if start is None:
        raise ValueError(f"package {package!r} is not a k25mini module of this checkout")
    todo = [start]
    if start.name == "__init__.py":
        todo += sorted(start.parent.rglob("*.py"))
    seen: set[Path] = set()
    parents: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for n in _imports(f):
            g = _module_file(n)
            if g is not None and g not in seen:
                todo.append(g)
            parts = n.split(".")
            for i in range(1, len(parts)):
                h = _module_file(".".join(parts[:i]))
                if h is not None:
                    parents.add(h)
    return tuple(sorted(seen | parents))


def _code_only(path: Path) -> str:
    """The module's AST with docstrings removed (comments never reach the AST)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@functools.cache
def source_hash(package: str) -> str:
    """12-hex hash of the code of :func:`source_files` (paths relative to the repository, sorted)."""
    h = hashlib.sha256()
    for f in source_files(package):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(_code_only(f).encode())
    return h.hexdigest()[:12]


def _git(*args: str) -> str | None:
    if not (ROOT / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def code_version(package: str) -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "source_hash"}``; git fields are None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", "k25mini")
    return {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty),
            "source_hash": source_hash(package)}


def provenance(package: str, wall_s: float | None = None) -> dict[str, Any]:
    """Everything a result needs to say which code, library and machine made it."""
    return {**code_version(package), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "wall_s": None if wall_s is None else round(float(wall_s), 2),
            "written_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def write_result(path: str | os.PathLike, payload: dict[str, Any], *, experiment: str, package: str,
                 wall_s: float | None = None) -> dict[str, Any]:
    """Stamp ``payload`` with the schema, the experiment's name and :func:`provenance`, write it atomically and
    return the stamped dict (the payload's own keys are kept; ``schema``/``experiment``/``provenance`` win)."""
    if not isinstance(payload, dict):
        raise ValueError(f"payload must be a dict, got {type(payload).__name__}")
    out = {**payload, "schema": SCHEMA_VERSION, "experiment": experiment,
           "provenance": provenance(package, wall_s)}
    write_json(path, out)
    return out


def staleness(result: dict[str, Any] | None, package: str) -> str | None:
    """None when ``result`` was made by the current code of ``package``; otherwise a one-line reason to show
    beside it (older schema, unknown code version, or a different source hash)."""
    if result is None:
        return None
    if result.get("schema") != SCHEMA_VERSION:
        return (f"STALE: written under results schema {result.get('schema', 1)} (current {SCHEMA_VERSION}): "
                "no code version recorded")
    prov = result.get("provenance") or {}
    have, want = prov.get("source_hash"), source_hash(package)
    if have != want:
        made = prov.get("git_commit")
        return (f"STALE: made by code {have} (git {str(made)[:10] if made else 'unknown'}), current code is {want}: "
                "rerun to refresh")
    return None


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
