"""Toggle: token-efficient RL by alternating a length budget on and off (K2.5, arXiv 2602.02276 §4.4).

At RL iteration ``t`` with phase length ``m``:

    phase 0 (floor(t / m) even):  r~ = r * 1[ mean_i r(x, y_i) < lam  or  |y| <= budget(x) ]
    phase 1 (floor(t / m) odd):   r~ = r

``budget(x)`` is the ``rho``-th percentile of the lengths of the *correct* responses to prompt ``x`` (or to its
task type), measured once before training and then fixed. Phase 0 teaches brevity where the model already
solves the prompt (its group's mean reward reaches ``lam``); a prompt it still fails keeps its plain reward, so
hard problems are not starved. Phase 1 lifts the budget so the model does not "length-overfit" (lose the
ability to use more tokens when needed). lam, m and rho are not published; the defaults here are ours.

    budgets = budgets_from_lengths({"count": [12, 15, 30], ...}, rho=50)
    tg = Toggle(budgets, lam=0.5, m=4)                 # mode="toggle" (the paper), "always" or "off"
    shaped = tg.shape(t, "count", rewards, lengths)    # one group's K rewards and response lengths

``mode="always"`` keeps phase 0 forever (a rigid budget, the baseline Toggle improves on); ``mode="off"`` is
RL without length control.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

__all__ = ["TOGGLE_MODES", "percentile_budget", "budgets_from_lengths", "Toggle"]

TOGGLE_MODES: tuple[str, ...] = ("toggle", "always", "off")


def _real(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def percentile_budget(lengths: Sequence[int], rho: float) -> int:
    """Nearest-rank percentile: the smallest observed length L with at least ``rho`` % of ``lengths`` <= L
    (an integer a response actually had; ``rho`` in (0, 100])."""
    rho = _real("rho", rho)
    if not 0 < rho <= 100:
        raise ValueError(f"rho must be in (0, 100], got {rho}")
    if isinstance(lengths, (str, bytes)) or len(lengths) == 0:
        raise ValueError("lengths must be a non-empty sequence of response lengths")
    xs = sorted(lengths)
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in xs):
        raise ValueError(f"lengths must be ints >= 0, got {list(lengths)[:8]!r}")
    rank = max(1, math.ceil(rho / 100.0 * len(xs)))
    return xs[rank - 1]


def budgets_from_lengths(correct_lengths: Mapping[Hashable, Sequence[int]], rho: float) -> dict[Hashable, int]:
    """``{key: percentile_budget(lengths, rho)}`` for every key with at least one correct response (keys without
    one get no budget: :meth:`Toggle.shape` leaves them unshaped)."""
    if not isinstance(correct_lengths, Mapping):
        raise ValueError(f"correct_lengths must be a mapping key -> lengths, got {type(correct_lengths).__name__}")
    return {k: percentile_budget(v, rho) for k, v in correct_lengths.items() if len(v)}


class Toggle:
    """The reward shaping of one RL run; see the module docstring."""

    def __init__(self, budgets: Mapping[Hashable, int], lam: float = 0.5, m: int = 4, mode: str = "toggle") -> None:
        if mode not in TOGGLE_MODES:
            raise ValueError(f"mode must be one of {TOGGLE_MODES}, got {mode!r}")
        if not isinstance(budgets, Mapping):
            raise ValueError(f"budgets must be a mapping key -> int, got {type(budgets).__name__}")
        for k, b in budgets.items():
            if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                raise ValueError(f"budgets[{k!r}] must be an int >= 0, got {b!r}")
        self.lam = _real("lam", lam)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an int >= 1, got {m!r}")
        self.budgets, self.m, self.mode = dict(budgets), m, mode

    def phase(self, t: int) -> int:
        """0 (budget on) or 1 (budget off) at iteration ``t`` (0-based)."""
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"t must be an int >= 0, got {t!r}")
        if self.mode == "always":
            return 0
        if self.mode == "off":
            return 1
        return (t // self.m) % 2

    def shape(self, t: int, key: Hashable, rewards: Sequence[float], lengths: Sequence[int]) -> list[float]:
        """The shaped rewards of one group (``rewards`` and response ``lengths`` of its K samples)."""
        if len(rewards) != len(lengths) or len(rewards) == 0:
            raise ValueError(f"rewards and lengths must be non-empty and of equal length, got {len(rewards)} "
                             f"and {len(lengths)}")
        rs = [_real("rewards[i]", r) for r in rewards]
        if self.phase(t) == 1 or key not in self.budgets:
            return rs
        if sum(rs) / len(rs) < self.lam:  # the group still struggles: keep its plain reward
            return rs
        b = self.budgets[key]
        return [r if n <= b else 0.0 for r, n in zip(rs, lengths)]
