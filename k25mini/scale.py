"""The one size dial: ``K25_SCALE`` in {smoke, cpu, gpu}; default ``cpu``.

Every notebook, script and experiment reads the scale through this module only::

    from k25mini.scale import current_scale, pick
    steps = pick(smoke=5, cpu=300, gpu=5000)

* ``smoke`` - CI: a notebook runs in about a minute.
* ``cpu``   - a student's laptop: a notebook in ten minutes or less; committed outputs use it.
* ``gpu``   - one accelerator.
"""

from __future__ import annotations

import os
from typing import TypeVar

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu")
DEFAULT_SCALE = "cpu"
ENV_VAR = "K25_SCALE"

T = TypeVar("T")


def validate_scale(value: str, source: str = ENV_VAR) -> str:
    """Return the normalised scale name or raise ValueError naming ``source``."""
    if not isinstance(value, str):
        raise ValueError(f"{source} must be a string, one of {SCALES}; got {type(value).__name__}")
    name = value.strip().lower()
    if name not in SCALES:
        raise ValueError(f"{source}={value!r} is not a known scale; expected one of {', '.join(SCALES)}")
    return name


def current_scale() -> str:
    """The scale from the environment (read at call time, so tests can change it)."""
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip() == "":
        return DEFAULT_SCALE
    return validate_scale(raw)


def pick(*, smoke: T, cpu: T, gpu: T | None = None, scale: str | None = None) -> T:
    """Choose a value for the current scale; ``gpu`` falls back to ``cpu`` when not given."""
    name = current_scale() if scale is None else validate_scale(scale, "scale")
    if name == "smoke":
        return smoke
    if name == "gpu" and gpu is not None:
        return gpu
    return cpu


def describe() -> str:
    return f"{ENV_VAR}={current_scale()} (choices: {', '.join(SCALES)}; default {DEFAULT_SCALE})"
