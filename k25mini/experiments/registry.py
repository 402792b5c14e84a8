"""The one list of experiments. ``make speedrun``, ``make reproduce``, ``python -m k25mini.report`` and the
notebooks go through it; a chapter adds itself with one :class:`Experiment` entry.

Entry points are ``"module:function"`` strings, imported only when used, so listing the registry is cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Experiment", "EXPERIMENTS", "get", "resolve"]


@dataclass(frozen=True)
class Experiment:
    """One chapter's experiment.

    * ``package`` - its sub-package (its code version stamps its results; ``python -m package`` runs it);
    * ``results`` - the result files it writes at cpu scale, relative to results/;
    * ``section`` - ``"module:function"``: ``fn(results_dir, docs_dir, scale) -> markdown`` for
      docs/reproduction.md;
    * ``speedrun`` - ``"module:function"``: ``fn(scale) -> list[Stage]``, its stages in one model's life (or None);
    * ``reproduce`` - the arguments of ``python -m package`` for its full multi-seed run (``{workers}`` filled in).
    """

    name: str
    chapter: str
    title: str
    package: str
    results: tuple[str, ...]
    section: str | None
    speedrun: str | None
    reproduce: tuple[str, ...] | None

    def resolve(self, attr: str) -> Any:
        """The function named by ``attr`` (``"section"`` or ``"speedrun"``)."""
        spec = getattr(self, attr)
        if spec is None:
            raise ValueError(f"experiment {self.name!r} has no {attr} entry point")
        return resolve(spec)


def resolve(spec: str) -> Any:
    """``"pkg.module:function"`` -> the function."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"entry point must be 'module:function', got {spec!r}")
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        name="world", chapter="00", title="configs, parameter counts and the toy world",
        package="k25mini.experiments.ch00_world", results=(), section=None,
        speedrun="k25mini.experiments.ch00_world:speedrun_stages", reproduce=None),
    Experiment(
        name="fusion_ablation", chapter="05", title="early-fusion pre-training (Table 1)",
        package="k25mini.experiments.ch05_fusion",
        results=("fusion_ablation.json", "fusion_ablation/cpu", "fusion_ablation/probes",
                 "fusion_ablation/diagnostics_cpu.json"),
        section="k25mini.experiments.ch05_fusion.report:section",
        speedrun="k25mini.experiments.ch05_fusion.speedrun:speedrun_stages",
        reproduce=("--workers", "{workers}")),
    Experiment(
        name="zero_vision_sft", chapter="06", title="zero-vision SFT with a sandboxed code tool",
        package="k25mini.experiments.ch06_zero_vision",
        results=("zero_vision_sft_cpu.json", "zero_vision_sft/cpu"),
        section="k25mini.experiments.ch06_zero_vision.report:section",
        speedrun="k25mini.experiments.ch06_zero_vision.speedrun:speedrun_stages",
        reproduce=("--workers", "{workers}")),
    Experiment(
        name="vision_rl", chapter="07", title="clipped RL: vision-only RL and the text suites (Table 2)",
        package="k25mini.experiments.ch07_clipped_rl",
        results=("vision_rl_cpu.json", "vision_rl/cpu", "rl_mismatch_cpu.json", "rl_mismatch/cpu", "rl_toggle_cpu.json",
                 "rl_toggle/cpu"),
        section="k25mini.experiments.ch07_clipped_rl.report:section",
        speedrun="k25mini.experiments.ch07_clipped_rl.speedrun:speedrun_stages",
        reproduce=("--workers", "{workers}")),
    Experiment(
        name="swarm", chapter="08", title="Agent Swarm trained with PARL",
        package="k25mini.experiments.ch08_swarm", results=("swarm_cpu.json", "swarm_attempts.json"),
        section="k25mini.experiments.ch08_swarm.report:section",
        speedrun="k25mini.experiments.ch08_swarm.speedrun:speedrun_stages",
        reproduce=("--recompute", "--workers", "{workers}")),
    Experiment(
        name="scaling", chapter="09", title="scaling out: memory plan and FSDP2 × expert parallel",
        package="k25mini.experiments.ch09_scaling", results=(), section=None,
        speedrun="k25mini.experiments.ch09_scaling:speedrun_stages", reproduce=None),
)


def get(name: str) -> Experiment:
    """The registered experiment called ``name`` (ValueError listing the names otherwise)."""
    for e in EXPERIMENTS:
        if e.name == name:
            return e
    raise ValueError(f"no experiment {name!r}; registered: {', '.join(e.name for e in EXPERIMENTS)}")
