"""Per-test example budgets relative to the loaded Hypothesis profile (tests/conftest.py).

A property whose every example builds a model or runs the vision tower is given a fraction of the profile's
``max_examples`` (at least ``floor``), so the ``ci`` profile stays fast and ``thorough`` scales it up with the rest.
"""

from __future__ import annotations

from hypothesis import settings


def examples(fraction: float = 1.0, floor: int = 5) -> settings:
    """``@examples(0.5)``: half the profile's max_examples for this test (never fewer than ``floor``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return settings(max_examples=max(floor, round(settings.default.max_examples * fraction)))
