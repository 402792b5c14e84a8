"""Learning-rate schedule: linear warmup, then cosine (or linear / constant) decay to ``min_lr_ratio``.

``lr_factor(step, ...)`` is the multiplier of every param group's base lr (``group["initial_lr"]``) at
optimiser step ``step`` (0-based). Warmup: (step + 1) / warmup_steps, so the first step already moves and
step warmup_steps - 1 reaches 1. Decay runs over the remaining steps and reaches exactly ``min_lr_ratio``
on the last step (steps - 1), except when only one step follows warmup: it stays at the peak.
"""

from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "apply_lr", "remember_base_lr"]


def lr_factor(step: int, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1, decay: str = "cosine") -> float:
    """Multiplier in [min_lr_ratio, 1] (or (0, 1] during warmup) for 0-based ``step`` of ``steps``."""
    if not 0 <= step:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = steps - warmup_steps - 1  # decay steps after the peak; the last step sits at progress 1
    progress = 0.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)  # a lone step stays at the peak
    if decay == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if decay == "constant":
        return 1.0
    raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got {decay!r}")


def remember_base_lr(optimizer: torch.optim.Optimizer) -> None:
    """Store each group's current lr as ``initial_lr`` (once), the base the schedule scales."""
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", float(g["lr"]))


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to initial_lr * factor (ratios between groups are preserved)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
