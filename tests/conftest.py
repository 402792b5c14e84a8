"""Shared pytest set-up.

* Triton kernels run under the interpreter (TRITON_INTERPRET=1) when no CUDA device is present;
  this must be set before triton is first imported, hence here.
* Notebooks (nbval): stderr (warnings, progress bars) is never compared. The Makefile loads this
  file as a plugin (``-p conftest``) when it runs nbval on notebooks/.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("K25_SCALE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _one_intra_op_thread() -> None:
    # Test shapes are tiny and pytest-xdist runs 2 workers on the 2-core CI box: extra intra-op threads only
    # add contention (measured 8-10x slower under load). One place for every test file.
    import torch

    torch.set_num_threads(1)


_one_intra_op_thread()

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import seam`


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and str(collector.path).endswith(".ipynb"):
        collector.skip_compare = tuple(getattr(collector, "skip_compare", ())) + (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )
