"""Execute notebooks in place (used by ``make notebooks``; scale from K25_SCALE, default cpu).

    K25_SCALE=cpu python tools/run_notebooks.py notebooks/00_tour.ipynb [...]
Each notebook runs with notebooks/ as its working directory; outputs are written in place only
after a successful run, so a failing notebook never loses its committed outputs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor


def run(path: str, timeout: int = 1800) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": os.path.dirname(os.path.abspath(path))}}
    )
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.time() - t0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for p in sys.argv[1:]:
        print(f"{p}: running at K25_SCALE={os.environ.get('K25_SCALE', 'cpu')} ...", flush=True)
        print(f"{p}: done in {run(p):.1f} s", flush=True)
