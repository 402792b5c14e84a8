"""Step accounting for an orchestrated episode [K25 §3]:

    CriticalSteps = Σ_t ( S_main^(t) + max_i S_sub,i^(t) )        TotalSteps = Σ_t ( S_main^(t) + Σ_i S_sub,i^(t) )

A *stage* t is one orchestrator turn: S_main = 1 (its own step) plus the subagents it launched in that
turn, which run concurrently; max over an empty group is 0. A single agent is the special case with no
subagents, where critical steps = total steps. Critical steps are the latency-like cost (the longest
chain of dependent steps); total steps are the compute-like cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class Stage:
    """One orchestrator turn: its own steps (``main``, normally 1) and the step count of each subagent
    it launched (``subs``; empty when the turn only used direct tools)."""

    main: int = 1
    subs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.main) != self.main or self.main < 0:
            raise ValueError(f"Stage.main must be a non-negative int; got {self.main!r}")
        if any(int(s) != s or s < 0 for s in self.subs):
            raise ValueError(f"Stage.subs must be non-negative ints; got {self.subs!r}")

    @property
    def critical(self) -> int:
        return int(self.main) + (max(self.subs) if self.subs else 0)

    @property
    def total(self) -> int:
        return int(self.main) + sum(self.subs)


StageLike = Stage | tuple[int, Sequence[int]]


def _as_stage(s: StageLike) -> Stage:
    if isinstance(s, Stage):
        return s
    main, subs = s
    return Stage(main, list(subs))


def critical_steps(stages: Iterable[StageLike]) -> int:
    """Σ over stages of (S_main + max_i S_sub,i). Stages are ``Stage`` or ``(main, [sub steps])``."""
    return sum(_as_stage(s).critical for s in stages)


def total_steps(stages: Iterable[StageLike]) -> int:
    """Σ over stages of (S_main + Σ_i S_sub,i): every step any agent took."""
    return sum(_as_stage(s).total for s in stages)


def speedup(stages: Iterable[StageLike]) -> float:
    """total / critical: how many steps run side by side on average (1.0 for a serial agent)."""
    stages = [_as_stage(s) for s in stages]
    c = critical_steps(stages)
    return total_steps(stages) / c if c else 1.0
