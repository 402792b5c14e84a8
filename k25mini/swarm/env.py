"""The swarm environment: the world's web, runtimes for a single agent and for a swarm, batched episodes,
and per-episode metrics (item-F1, success, critical / total steps, simulated wall-clock, parallelism).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from k25mini.agents import SINGLE_AGENT_TOOLS, SWARM_TOOLS, Episode, LatencyModel, SwarmConfig, SwarmRuntime, run_sync
from k25mini.data.tokenizer import Tokenizer
from k25mini.swarm.tasks import SwarmTask, score_answer
from k25mini.world import Web, World

__all__ = ["EnvConfig", "make_runtime", "run_episodes", "episode_metrics", "aggregate", "valid_subagent_answer"]

_TOK = Tokenizer()


def _count_tokens(s: str) -> int:
    return len(_TOK.encode(s))


def valid_subagent_answer(answer: str) -> bool:
    """A subagent finished only if it returns something: a table with a row, or a deep-search value."""
    a = answer.strip()
    return bool(a) and a not in ("(nothing found)", "unknown")


@dataclass(frozen=True)
class EnvConfig:
    """Sizes and limits. ``budget``: the critical-steps budget used in training (below what serial needs
    for the larger wide tasks); ``context_window``: tokens per agent."""

    n_entities: int = 64
    min_rows: int = 6
    max_rows: int = 26
    budget: int = 10
    max_steps_main: int = 40
    max_steps_sub: int = 12
    context_window: int = 2400
    max_observation: int = 600
    llm_step_s: float = 1.0
    search_s: float = 0.3
    browse_s: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_runtime(world: World, orchestrator: Any, subagent: Any | None, cfg: EnvConfig, *, swarm: bool,
                 budget: int | None | str = "train") -> SwarmRuntime:
    """A runtime on ``world``'s web. ``swarm=False``: the single agent (search / browse / finish only).
    ``budget="train"`` uses ``cfg.budget``; an int or None overrides it."""
    b = cfg.budget if budget == "train" else budget
    lat = LatencyModel(llm_step=cfg.llm_step_s, tools={"search": cfg.search_s, "browse": cfg.browse_s,
                                                       "create_subagent": 0.0, "assign_task": 0.0})
    sc = SwarmConfig(max_steps_main=cfg.max_steps_main, max_steps_sub=cfg.max_steps_sub, critical_steps_budget=b,
                     context_window=cfg.context_window, max_observation=cfg.max_observation, max_parallel=64,
                     main_tools=SWARM_TOOLS if swarm else SINGLE_AGENT_TOOLS, latency=lat,
                     validate_answer=valid_subagent_answer, count=_count_tokens)
    web = Web(world, search_latency=cfg.search_s, browse_latency=cfg.browse_s)
    return SwarmRuntime(web, orchestrator, subagent if swarm else None, sc)


def run_episodes(runtime: SwarmRuntime, tasks: list[SwarmTask], prefix: str = "ep") -> list[Episode]:
    """Run all ``tasks`` concurrently on one runtime (so LM policies sample them in batches)."""

    async def _all() -> list[Episode]:
        return list(await asyncio.gather(*[runtime.run(t.text, episode_id=f"{prefix}-{i}")
                                           for i, t in enumerate(tasks)]))

    return run_sync(_all())


def episode_metrics(ep: Episode, task: SwarmTask) -> dict[str, float]:
    """Scores and costs of one episode. ``unfinished`` = assigned subtasks that did not finish; ``errors`` =
    every error the runtime counted in the episode, all kinds together (``Episode.errors`` has them by kind)."""
    s = score_answer(task, ep.answer)
    return {
        "item_f1": s["item_f1"],
        "success": s["success"],
        "critical_steps": float(ep.critical_steps),
        "total_steps": float(ep.total_steps),
        "wall_clock": float(ep.wall_clock),
        "n_assigned": float(ep.n_assigned),
        "n_finished": float(ep.n_finished),
        "unfinished": float(ep.n_assigned - ep.n_finished),
        "avg_parallel": float(ep.avg_parallel),
        "max_parallel": float(ep.max_parallel),
        "cutoff": float(ep.cutoff is not None),
        "finished": float(ep.finished),
        "n_rows": float(task.n_rows),
        "errors": float(ep.n_errors),
    }


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over episodes."""
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
