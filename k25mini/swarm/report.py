"""The chapter-08 section of docs/reproduction.md, generated from ``results/swarm_*.json``.

``markdown_section()`` renders every ``results/swarm_<scale>.json`` (gpu, then cpu; smoke only when alone)
with :func:`~k25mini.swarm.experiments.reproduction_markdown`, then the log of configurations tried
(``results/swarm_attempts.json``), so the numbers in the doc are never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from k25mini.swarm.experiments import RESULTS_DIR, reproduction_markdown

__all__ = ["SCALES", "load_results", "load_attempts", "attempts_markdown", "markdown_section"]

#: result files in the order the section shows them (the most trustworthy scale first)
SCALES = ("gpu", "cpu", "smoke")


def load_results(results_dir: str | Path = RESULTS_DIR, smoke_only_if_alone: bool = True) -> list[dict[str, Any]]:
    """Every ``swarm_<scale>.json`` that exists, largest scale first. Smoke results (a plumbing check) are
    left out when a larger scale exists, unless ``smoke_only_if_alone=False``."""
    out = []
    for scale in SCALES:
        p = Path(results_dir) / f"swarm_{scale}.json"
        if p.exists() and not (scale == "smoke" and out and smoke_only_if_alone):
            out.append(json.loads(p.read_text()))
    return out


def load_attempts(results_dir: str | Path = RESULTS_DIR) -> list[dict[str, Any]]:
    p = Path(results_dir) / "swarm_attempts.json"
    return json.loads(p.read_text())["attempts"] if p.exists() else []


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.2f}"
    if isinstance(x, list):
        return ", ".join(_cell(v) for v in x)
    return str(x)


def attempts_markdown(attempts: list[dict[str, Any]]) -> str:
    """A table of every configuration tried (what changed, seeds, per-seed outcome, verdict)."""
    if not attempts:
        return ""
    lines = ["### What was tried (in order; every run listed, including the failed ones)", "",
             "| # | change vs. previous | scale / seeds | single agent (finish rate, item-F1, crit. steps) | "
             "swarm after PARL (item-F1, crit. steps, avg parallelism) | parallelism during RL | verdict |",
             "|---|---|---|---|---|---|---|"]
    for i, a in enumerate(attempts, 1):
        lines.append(f"| {i} | {a['change']} | {a['scale']} / {_cell(a['seeds'])} | {a['single']} | {a['swarm']} | "
                     f"{a['parallel_curve']} | {a['verdict']} |")
    return "\n".join(lines) + "\n"


def markdown_section(results_dir: str | Path = RESULTS_DIR) -> str:
    """The swarm section of docs/reproduction.md (a placeholder line when no results exist yet)."""
    results = load_results(results_dir)
    if not results:
        return "## Chapter 08 — Agent Swarm / PARL\n\n*No `results/swarm_*.json` yet: run notebook 08.*\n"
    parts = ["## Chapter 08 — Agent Swarm / PARL", ""]
    for r in results:  # one heading level down: the chapter heading is ours
        md = reproduction_markdown(r)
        parts.append("#" + md if md.startswith("## ") else md)
    att = attempts_markdown(load_attempts(results_dir))
    if att:
        parts.append(att)
    return "\n".join(parts)
