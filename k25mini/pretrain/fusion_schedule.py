"""Vision/text mixing schedules with a fixed token budget (K2.5 Table 1).

A schedule injects vision data at fraction ``inject_at`` (p) of training and from then on mixes
vision:text at ratio ``r``. Table 1 compares three schedules chosen so that, for the same total
budget B, the *total* vision and text tokens are identical:

    early  p = 0.0, 10:90  ->  vision = B * 1.0 * 0.10 = 0.10 B
    mid    p = 0.5, 20:80  ->  vision = B * 0.5 * 0.20 = 0.10 B
    late   p = 0.8, 50:50  ->  vision = B * 0.2 * 0.50 = 0.10 B

"Vision tokens" are the tokens of image-text documents (media tokens and their surrounding text);
"text tokens" those of text-only documents - the two data streams the ratio mixes.
:func:`token_plan` turns a schedule into exact integer per-step budgets whose sums are identical
across schedules with the same total vision share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FusionSchedule", "SCHEDULES", "schedule_for_share", "token_plan"]


@dataclass(frozen=True)
class FusionSchedule:
    name: str
    inject_at: float  # p: fraction of training before vision data enters
    vision_ratio: float  # r: vision share of the tokens after injection (0.1 for 10:90)

    def __post_init__(self) -> None:
        if not (0.0 <= self.inject_at < 1.0):
            raise ValueError(f"inject_at must be in [0, 1), got {self.inject_at!r}")
        if not (0.0 <= self.vision_ratio <= 1.0):
            raise ValueError(f"vision_ratio must be in [0, 1], got {self.vision_ratio!r}")

    @property
    def vision_share(self) -> float:
        """Vision tokens as a fraction of the whole budget."""
        return (1.0 - self.inject_at) * self.vision_ratio

    @property
    def label(self) -> str:
        v = round(100 * self.vision_ratio)
        return f"{self.name} (p={self.inject_at:g}, {v}:{100 - v})"


SCHEDULES: dict[str, FusionSchedule] = {
    "early": FusionSchedule("early", 0.0, 0.10),
    "mid": FusionSchedule("mid", 0.5, 0.20),
    "late": FusionSchedule("late", 0.8, 0.50),
}


def schedule_for_share(inject_at: float, vision_share: float = 0.10, name: str = "custom") -> FusionSchedule:
    """The schedule injecting at ``inject_at`` whose total vision share is ``vision_share``
    (what the notebook's slider uses: moving p changes r so the totals stay fixed)."""
    if not (0.0 <= inject_at < 1.0):
        raise ValueError(f"inject_at must be in [0, 1), got {inject_at!r}")
    r = vision_share / (1.0 - inject_at)
    if not (0.0 <= r <= 1.0):
        raise ValueError(
            f"vision_share={vision_share} cannot be reached after inject_at={inject_at}: it needs ratio {r:.3f} > 1"
        )
    return FusionSchedule(name, inject_at, r)


def token_plan(schedule: FusionSchedule, steps: int, tokens_per_step: int) -> np.ndarray:
    """Integer per-step budgets, array [steps, 2] of (vision tokens, text tokens).

    Each row sums to ``tokens_per_step``. The vision total is ``round(B * vision_share)`` with
    B = steps * tokens_per_step, spread uniformly over the steps after injection (cumulative
    rounding, so the per-step values differ by at most one token).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step <= 0:
        raise ValueError(f"tokens_per_step must be a positive int, got {tokens_per_step!r}")
    budget = steps * tokens_per_step
    vision_total = round(budget * schedule.vision_share)
    start = int(np.floor(schedule.inject_at * steps + 1e-9))
    n_vis_steps = steps - start
    if vision_total > n_vis_steps * tokens_per_step:
        raise ValueError(f"schedule {schedule.name!r}: vision budget does not fit after step {start}")
    plan = np.zeros((steps, 2), dtype=np.int64)
    if n_vis_steps > 0 and vision_total > 0:
        cum = np.floor(np.arange(n_vis_steps + 1) * vision_total / n_vis_steps + 1e-9).astype(np.int64)
        plan[start:, 0] = np.diff(cum)
    plan[:, 1] = tokens_per_step - plan[:, 0]
    return plan
