"""PARL reward for the Agent Swarm orchestrator [K25 §3]:

    r_PARL = λ1 · r_parallel + λ2 · r_finish + r_perf

* ``r_parallel`` (instantiation reward, against *serial collapse*): min(n_subagents, cap) / cap, where
  n_subagents counts subagent runs actually launched by ``assign_task`` in the episode.
* ``r_finish`` (finish rate, against *spurious parallelism*): finished / assigned subtasks. With nothing
  assigned it is ``finish_if_none`` (default 1.0: no subtask failed), so r_finish alone never rewards
  spawning — that is r_parallel's job, which keeps the two ablations separable.
* ``r_perf``: the task score (item-F1 for wide search), supplied by the caller.
* λ1, λ2 decay linearly from their initial values to **exactly 0.0** at ``anneal_end`` × total training
  steps and stay 0; from then on the reward *is* r_perf (bit-for-bit). The paper gives neither the
  formulas for r_parallel / r_finish nor the λ values / schedule: these are our choices.

Critical-steps budget: the runtime (``k25mini.agents.SwarmConfig.critical_steps_budget``) cuts an episode
off when its critical steps would exceed the budget. A cut-off episode has ``answer=None``; score it as
the empty answer (item-F1 = 0). Its launched / finished subagents still count in r_parallel / r_finish.

Pure python: no import of the agents runtime; anything with ``n_assigned`` / ``n_finished`` works.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any


def _finite(x: float, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):  # numpy scalars are Real too
        raise ValueError(f"{name} must be a finite number; got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return x


def r_parallel(n_subagents: int, cap: int) -> float:
    """min(n, cap) / cap in [0, 1]."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1; got {cap}")
    if n_subagents < 0:
        raise ValueError(f"n_subagents must be >= 0; got {n_subagents}")
    return min(n_subagents, cap) / cap


def r_finish(n_finished: int, n_assigned: int, finish_if_none: float = 1.0) -> float:
    """finished / assigned in [0, 1]; ``finish_if_none`` when nothing was assigned."""
    if n_assigned < 0 or n_finished < 0 or n_finished > n_assigned:
        raise ValueError(f"need 0 <= n_finished <= n_assigned; got {n_finished}, {n_assigned}")
    return finish_if_none if n_assigned == 0 else n_finished / n_assigned


def anneal_weight(initial: float, step: int, total_steps: int, end_frac: float) -> float:
    """Linear decay initial·(1 − step/(end_frac·total)), returning exactly 0.0 from step ≥ end_frac·total."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; got {total_steps}")
    if not 0 < end_frac <= 1:
        raise ValueError(f"end_frac must be in (0, 1]; got {end_frac}")
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    end = end_frac * total_steps
    if step >= end:
        return 0.0  # an explicit branch: never rely on float round-off to land on 0
    return initial * (1.0 - step / end)


@dataclass(frozen=True)
class PARLConfig:
    """Weights and schedule. ``anneal=False`` (ablation) keeps λ at their initial values forever;
    ``use_parallel`` / ``use_finish`` = False drop a term (the paper's two failure-mode ablations)."""

    lambda1: float = 0.1
    lambda2: float = 0.1
    parallel_cap: int = 8
    anneal_end: float = 0.5
    anneal: bool = True
    use_parallel: bool = True
    use_finish: bool = True
    finish_if_none: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.lambda1 < math.inf and 0 <= self.lambda2 < math.inf):  # NaN fails both comparisons
            raise ValueError(f"lambda1, lambda2 must be >= 0; got {self.lambda1}, {self.lambda2}")
        if isinstance(self.parallel_cap, bool) or not isinstance(self.parallel_cap, int) or self.parallel_cap < 1:
            raise ValueError(f"parallel_cap must be >= 1; got {self.parallel_cap}")
        if not 0 < self.anneal_end <= 1:
            raise ValueError(f"anneal_end must be in (0, 1]; got {self.anneal_end}")
        if not 0 <= self.finish_if_none <= 1:
            raise ValueError(f"finish_if_none must be in [0, 1]; got {self.finish_if_none}")

    def lambdas(self, step: int, total_steps: int) -> tuple[float, float]:
        """(λ1, λ2) at training ``step`` of ``total_steps``; 0.0 for a disabled term."""
        l1 = self.lambda1 if self.use_parallel else 0.0
        l2 = self.lambda2 if self.use_finish else 0.0
        if self.anneal:
            l1 = anneal_weight(l1, step, total_steps, self.anneal_end)
            l2 = anneal_weight(l2, step, total_steps, self.anneal_end)
        elif total_steps < 1 or step < 0:
            raise ValueError(f"need step >= 0 and total_steps >= 1; got {step}, {total_steps}")
        return l1, l2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parl_reward(
    r_perf: float,
    n_subagents: int,
    n_finished: int,
    n_assigned: int | None = None,
    *,
    lambda1: float,
    lambda2: float,
    cap: int = 8,
    finish_if_none: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """r = λ1·r_parallel + λ2·r_finish + r_perf; returns (r, parts). ``n_assigned`` defaults to n_subagents.

    When λ1 = λ2 = 0 the shaping terms are skipped, so the result is r_perf exactly.
    """
    r_perf = _finite(r_perf, "r_perf")
    lambda1, lambda2 = _finite(lambda1, "lambda1"), _finite(lambda2, "lambda2")  # a NaN weight would poison r
    n_assigned = n_subagents if n_assigned is None else n_assigned
    rp = r_parallel(n_subagents, cap)
    rf = r_finish(n_finished, n_assigned, finish_if_none)
    total = r_perf
    if lambda1 != 0.0:
        total += lambda1 * rp
    if lambda2 != 0.0:
        total += lambda2 * rf
    parts = {"r_perf": r_perf, "r_parallel": rp, "r_finish": rf, "lambda1": lambda1, "lambda2": lambda2, "r": total}
    return total, parts


class PARLReward:
    """Stateful helper for a training loop: ``reward, parts = PARLReward(cfg, total_steps)(r_perf, ep, step)``.

    ``episode`` is anything with integer attributes ``n_assigned`` and ``n_finished`` (e.g. an
    ``agents.Episode``) or a mapping with those keys.
    """

    def __init__(self, config: PARLConfig | None = None, total_steps: int = 1) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps}")
        self.config = config or PARLConfig()
        self.total_steps = total_steps

    def __call__(self, r_perf: float, episode: Any, step: int) -> tuple[float, dict[str, float]]:
        get = episode.get if isinstance(episode, dict) else lambda k: getattr(episode, k)
        n_assigned, n_finished = int(get("n_assigned")), int(get("n_finished"))
        l1, l2 = self.config.lambdas(step, self.total_steps)
        return parl_reward(
            r_perf,
            n_assigned,
            n_finished,
            n_assigned,
            lambda1=l1,
            lambda2=l2,
            cap=self.config.parallel_cap,
            finish_if_none=self.config.finish_if_none,
        )
