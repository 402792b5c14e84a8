"""Shared pytest set-up.

* Triton kernels run under the interpreter (TRITON_INTERPRET=1) when no CUDA device is present;
  this must be set before triton is first imported, hence here.
* Notebooks (nbval): stderr (warnings, progress bars) is never compared. The Makefile loads this
  file as a plugin (``-p conftest``) when it runs nbval on notebooks/.
* Hypothesis profiles for the property tests (tests/properties, docs/reliability_properties.md): ``ci`` (the
  default: few examples, derandomized so every CI run draws the same cases) and ``thorough`` (many random
  examples, saved failures replayed from .hypothesis/). Pick one with HYPOTHESIS_PROFILE=thorough, or
  ``make test-thorough``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("K25_SCALE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")


def _cuda_available() -> bool:
    import torch  # no try/except: a torch that does not import must fail the run, not pass as "no CUDA"

    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _one_intra_op_thread() -> None:
    # Test shapes are tiny and pytest-xdist runs 2 workers on the 2-core CI box: extra intra-op threads only
    # add contention (measured 8-10x slower under load). One place for every test file.
    import torch

    torch.set_num_threads(1)


_one_intra_op_thread()

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import seam`


def _hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    # CI: a fixed, small sample. derandomize=True makes the examples a function of the test alone (a CI failure
    # reproduces on any machine); print_blob=True prints the @reproduce_failure line all the same.
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    # thorough: 25x more examples, fresh random ones each run; failures are kept in .hypothesis/ and replayed first
    settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "thorough"):
        raise ValueError(f"HYPOTHESIS_PROFILE must be 'ci' or 'thorough', got {name!r}")
    settings.load_profile(name)


_hypothesis_profiles()


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and str(collector.path).endswith(".ipynb"):
        collector.skip_compare = tuple(getattr(collector, "skip_compare", ())) + (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )
