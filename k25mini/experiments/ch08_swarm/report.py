"""Chapter 08's section of docs/reproduction.md, generated from ``results/swarm_*.json``.

:func:`section` renders every ``results/swarm_<scale>.json`` (gpu, then cpu; smoke only when alone) with
:func:`reproduction_markdown`, then the log of configurations tried (``results/swarm_attempts.json``), so the
numbers in the doc are never typed by hand. A result made by other code than the current one is flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch08_swarm.config import PACKAGE
from k25mini.experiments.ch08_swarm.evaluation import MIN_FINISH_RATE
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.results import results_dir as resolve_results_dir

__all__ = ["SCALES", "load_results", "load_attempts", "attempts_markdown", "reproduction_markdown", "section",
           "markdown_section"]

#: result files in the order the section shows them (the most trustworthy scale first)
SCALES = ("gpu", "cpu", "smoke")


def load_results(results_dir: str | Path | None = None, smoke_only_if_alone: bool = True) -> list[dict[str, Any]]:
    """Every ``swarm_<scale>.json`` that exists, largest scale first, each with ``"stale"`` set (not saved) when
    the code that made it differs from the current code. Smoke results (a plumbing check) are left out when a
    larger scale exists, unless ``smoke_only_if_alone=False``."""
    out = []
    for scale in SCALES:
        r = read_json(resolve_results_dir(results_dir) / f"swarm_{scale}.json")
        if r is not None and not (scale == "smoke" and out and smoke_only_if_alone):
            flag = staleness(r, PACKAGE)
            if flag:
                r["stale"] = flag
            out.append(r)
    return out


def load_attempts(results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The log of configurations tried (``results/swarm_attempts.json``), oldest first."""
    r = read_json(resolve_results_dir(results_dir) / "swarm_attempts.json")
    return r["attempts"] if r is not None else []


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


def markdown_section(results_dir: str | Path | None = None) -> str:
    """The swarm section of docs/reproduction.md (a placeholder line when no results exist yet)."""
    results = load_results(results_dir)
    if not results:
        return ("## Chapter 08 — Agent Swarm / PARL\n\n*No `results/swarm_*.json` yet: run "
                "`python -m k25mini.experiments.ch08_swarm`.*\n")
    parts = ["## Chapter 08 — Agent Swarm / PARL", ""]
    for r in results:  # one heading level down: the chapter heading is ours
        md = reproduction_markdown(r)
        parts.append("#" + md if md.startswith("## ") else md)
    att = attempts_markdown(load_attempts(results_dir))
    if att:
        parts.append(att)
    return "\n".join(parts)


def section(results_dir: str | Path | None = None, docs_dir: str | Path | None = None, scale: str = "cpu") -> str:
    """The registry's entry point (``docs_dir`` and ``scale`` are unused: every scale's results are shown)."""
    return markdown_section(results_dir)


def _fmt(d: dict[str, float], scale: float = 1.0, nd: int = 1) -> str:
    return f"{d['mean'] * scale:.{nd}f} ± {d['std'] * scale:.{nd}f}"


def reproduction_markdown(res: dict[str, Any]) -> str:
    """Paper vs ours, generated from a results dict (never typed by hand)."""
    s, p = res["summary"], res["paper"]
    n = len(res["seeds"])
    lines = [f"## Agent Swarm / PARL (toy WideSearch, scale `{res['config']['scale']}`, {n} seed(s), mean ± std)", ""]
    if res.get("stale"):
        lines += [f"> **{res['stale']}**", ""]
    if res["config"]["scale"] == "smoke":
        lines += ["*Smoke scale is a plumbing check (a few SFT steps, two RL iterations): its numbers say nothing "
                  "about the claim.*", ""]
    lines += [
             "| quantity | paper | ours |", "|---|---|---|",
             f"| WideSearch item-F1, single agent | {p['widesearch_item_f1_single']} | "
             f"{_fmt(s['single']['wide']['item_f1'], 100)} |",
             f"| WideSearch item-F1, swarm | {p['widesearch_item_f1_swarm']} | "
             f"{_fmt(s['swarm']['wide']['item_f1'], 100)} |",
             f"| latency reduction (single / swarm critical steps; raw, see the per-seed table) | "
             f"{p['latency_speedup']} | {_fmt(s['critical_steps_ratio'], 1, 2)}× |",
             f"| simulated wall-clock ratio | – | {_fmt(s['wall_clock_ratio'], 1, 2)}× |",
             f"| deep search accuracy, single → swarm | BrowseComp {p['browsecomp_single']} → "
             f"{p['browsecomp_swarm']} | "
             f"{_fmt(s['single']['deep']['item_f1'], 100)} → {_fmt(s['swarm']['deep']['item_f1'], 100)} |", "",
             "| wide tasks (held out) | item-F1 | success | critical steps | total steps | wall-clock (s) |",
             "|---|---|---|---|---|---|"]
    for who, label in (("single", "single agent, no budget"), ("single_at_budget", "single agent, training budget"),
                       ("swarm_warm", "swarm, warm start (SFT only)"), ("swarm", "swarm after PARL")):
        w = s[who]["wide"]
        lines.append(f"| {label} | {_fmt(w['item_f1'], 100)} | {_fmt(w['success'], 100)} | "
                     f"{_fmt(w['critical_steps'])} | {_fmt(w['total_steps'])} | {_fmt(w['wall_clock'])} |")
    if "errors" in s:  # results written before the runtime counted errors have no such entry
        lines += ["", "Runtime errors counted per held-out episode, all kinds (wide / deep; see "
                  "docs/reliability_swarm.md): " + "; ".join(
                      f"{who} {_fmt(s['errors'][who]['wide'], 1, 2)} / {_fmt(s['errors'][who]['deep'], 1, 2)}"
                      for who in s["errors"]) + "."]
    lines += ["", "| PARL variant (held out, training budget) | item-F1 | avg parallelism | subagents | unfinished |",
              "|---|---|---|---|---|"]
    for v, d in s["variants"].items():
        lines.append(f"| {v} | {_fmt(d['item_f1'], 100)} | {_fmt(d['avg_parallel'])} | {_fmt(d['n_assigned'])} | "
                     f"{_fmt(d['unfinished'], 1, 2)} |")
    if "per_seed" in s:
        lines += ["", "| seed | single agent finishes (share of tasks) | single / swarm critical steps | "
                  "item-F1 swarm − single | held-out avg parallelism | RL avg parallelism first → last | "
                  "ratio counts |", "|---|---|---|---|---|---|---|"]
        for seed, c in s["per_seed"].items():
            lines.append(f"| {seed} | {c['single_finish_rate']:.2f} | {c['ratio']:.2f}× | {100 * c['f1_gap']:+.1f} | "
                         f"{c['swarm_parallel']:.2f} | {c['parallel_first']:.2f} → {c['parallel_last']:.2f} | "
                         f"{c['ratio_counts']} |")
        if "seed_counts" in s:
            c = s["seed_counts"]
            lines += ["", f"Seeds where the ratio counts: {c['ratio_counts']}/{c['n']}; where the trained orchestrator "
                      f"fans out on held-out tasks: {c['swarm_parallelises']}/{c['n']}; where sampled parallelism "
                      f"rises during RL: {c['parallelism_rises']}/{c['n']}."]
        lines += ["", f"The critical-steps ratio counts only where the single agent answers (is not cut off at its "
                  f"step limit) on at least {MIN_FINISH_RATE:.0%} of the held-out wide tasks and the swarm's item-F1 "
                  "is at least the single agent's; a ratio against an agent that never answers is not a speed-up."]
    lines += ["", "Acceptance checks: " + ", ".join(f"{k} = {v}" for k, v in s["acceptance"].items()), ""]
    if res.get("note"):
        lines += [f"Run note: {res['note']}.", ""]
    return "\n".join(lines)
