"""Turn a percent-format script (``# %%`` code cells, ``# %% [markdown]`` cells) into a notebook.

Used while writing chapters; the .ipynb in notebooks/ is the source of truth afterwards.
    python tools/py2nb.py chapter.py notebooks/05_x.ipynb
"""

from __future__ import annotations

import sys

import nbformat


def convert(src: str) -> nbformat.NotebookNode:
    cells: list[tuple[str, list[str]]] = []
    kind, buf = None, []
    for line in src.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                cells.append((kind, buf))
            kind = "markdown" if "[markdown]" in line else "code"
            buf = []
        elif kind is not None:
            buf.append(line)
    if kind is not None:
        cells.append((kind, buf))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            text = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines)
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            nb.cells.append(nbformat.v4.new_code_cell("\n".join(lines)))
    return nb


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/py2nb.py SRC.py DST.ipynb")
    nbformat.write(convert(open(sys.argv[1], encoding="utf-8").read()), sys.argv[2])
