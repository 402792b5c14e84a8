"""Agent Swarm with PARL on the toy world (notebook 08).

    from k25mini.swarm import run_experiment, default_config, LMPolicy, ScriptedSwarmPolicy
    res = run_experiment(default_config())        # writes / reuses results/swarm_<scale>.json

* ``tasks``: wide (region tables) and deep (multi-hop) tasks from ``k25mini.world``; scoring.
* ``codec``: the LM's compact view (fixed-width state line) and compact tool calls -> runtime ToolCalls.
* ``policy``: ``LMPolicy`` (a k25mini K2 LM as an agent, batched sampling, frozen mode), scripted teachers.
* ``env``: runtimes for a single agent and a swarm, batched episodes, metrics.
* ``train``: SFT on scripted traces, PARL RL with the K2.5 loss (orchestrator tokens only).
* ``experiments``: single vs swarm, ablations, training curves, F1 vs critical-steps budget.
* ``report``: ``markdown_section()``, the chapter-08 section of docs/reproduction.md from ``results/swarm_*.json``.
"""

from k25mini.swarm.codec import SwarmState, compact_text, expand_calls, observe, parse_compact, render_prompt
from k25mini.swarm.env import EnvConfig, aggregate, episode_metrics, make_runtime, run_episodes
from k25mini.swarm.experiments import (
    PAPER,
    VARIANTS,
    ExperimentConfig,
    default_config,
    reproduction_markdown,
    run_experiment,
    run_seed,
    summarize,
    write_reproduction_doc,
)
from k25mini.swarm.policy import LMPolicy, ScriptedSwarmPolicy, orchestrator_decision, worker_decision
from k25mini.swarm.tasks import SwarmTask, make_swarm_tasks, parse_task, score_answer, subtask_text
from k25mini.swarm.train import RLConfig, build_lm, collect_sft_pairs, frozen_copy, rl_train, sft

__all__ = [
    "PAPER", "VARIANTS", "EnvConfig", "ExperimentConfig", "LMPolicy", "RLConfig", "ScriptedSwarmPolicy", "SwarmState",
    "SwarmTask", "aggregate", "build_lm", "collect_sft_pairs", "compact_text", "default_config", "episode_metrics",
    "expand_calls", "frozen_copy", "make_runtime", "make_swarm_tasks", "observe", "orchestrator_decision",
    "parse_compact", "parse_task", "render_prompt", "reproduction_markdown", "rl_train", "run_episodes",
    "run_experiment", "run_seed", "score_answer", "sft", "subtask_text", "summarize", "worker_decision",
    "write_reproduction_doc",
]
