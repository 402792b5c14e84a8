"""Agent Swarm with PARL on the toy world (notebook 08).

    from k25mini.swarm import LMPolicy, ScriptedSwarmPolicy, make_runtime, run_episodes

The experiment (single agent vs PARL swarm, results/swarm_<scale>.json) lives in
``k25mini.experiments.ch08_swarm``.

* ``tasks``: wide (region tables) and deep (multi-hop) tasks from ``k25mini.world``; scoring.
* ``codec``: the LM's compact view (fixed-width state line) and compact tool calls -> runtime ToolCalls.
* ``policy``: ``LMPolicy`` (a k25mini K2 LM as an agent, batched sampling, frozen mode), scripted teachers.
* ``env``: runtimes for a single agent and a swarm, batched episodes, metrics.
* ``train``: SFT on scripted traces, PARL RL with the K2.5 loss (orchestrator tokens only).
"""

from k25mini.swarm.codec import SwarmState, compact_text, expand_calls, observe, parse_compact, render_prompt
from k25mini.swarm.env import EnvConfig, aggregate, episode_metrics, make_runtime, run_episodes
from k25mini.swarm.policy import LMPolicy, ScriptedSwarmPolicy, orchestrator_decision, worker_decision
from k25mini.swarm.tasks import SwarmTask, make_swarm_tasks, parse_task, score_answer, subtask_text
from k25mini.swarm.train import RLConfig, build_lm, collect_sft_pairs, frozen_copy, rl_train, sft

__all__ = [
    "EnvConfig", "LMPolicy", "RLConfig", "ScriptedSwarmPolicy", "SwarmState",
    "SwarmTask", "aggregate", "build_lm", "collect_sft_pairs", "compact_text", "episode_metrics",
    "expand_calls", "frozen_copy", "make_runtime", "make_swarm_tasks", "observe", "orchestrator_decision",
    "parse_compact", "parse_task", "render_prompt", "rl_train", "run_episodes",
    "score_answer", "sft", "subtask_text", "worker_decision",
]
