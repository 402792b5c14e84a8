"""Chapter 06's section of docs/reproduction.md, generated from results/zero_vision_sft_<scale>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch06_zero_vision.config import (
    ARMS,
    EXPERIMENT,
    LIFT,
    PACKAGE,
    PAPER,
    TEXT_SUITES,
    TEXT_TOLERANCE,
    VALID_CALL_TARGET,
    VISION_SKILLS,
)
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.results import results_dir as resolve_results_dir

__all__ = ["section", "markdown_table", "ARM_TITLES"]

ARM_TITLES = {"no_sft": "(a) no SFT, direct", "zero_vision": "(b) zero-vision SFT + tool",
              "zero_vision_blank": "(b′) zero-vision + blank picture + tool",
              "text_visual": "(c) text + visual SFT + tool", "oracle": "(d) scripted oracle + tool"}


def _cell(d: dict[str, Any] | None, k: float = 100.0) -> str:
    if d is None:
        return "–"
    if d["n"] > 1:
        return f"{d['mean'] * k:.1f} ± {d['std'] * k:.1f}"
    return f"{d['mean'] * k:.1f}"


def markdown_table(res: dict[str, Any], metric: str = "acc") -> list[str]:
    """Rows: eval sets (vision skills, then text suites); columns: arms (mean ± std over seeds)."""
    arms = [a for a in ARMS if a in res["table"]]
    head = ["| eval set | blind |" + "|".join(f" {ARM_TITLES[a]} " for a in arms) + "|",
            "|---|---|" + "|".join("---" for _ in arms) + "|"]
    rows = []
    twins = set(res.get("text_twins") or [])
    for k in (*VISION_SKILLS, *TEXT_SUITES):
        if not any(k in res["table"][a] for a in arms):
            continue
        label = f"{k}{' (twin)' if k in twins else ''}"
        blind = res.get("blind", {}).get(k)
        rows.append(f"| {label} | {'–' if blind is None else f'{100 * blind:.1f}'} |" + "|".join(
            f" {_cell(res['table'][a].get(k, {}).get(metric))} " for a in arms) + "|")
    return head + rows


def _checks(res: dict[str, Any], key: str = "checks", who: str = "(b)") -> list[str]:
    c = res.get(key) or {}
    if not c:
        return []
    lifted = ", ".join(c["lifted_skills_every_seed"]) or "none"
    text = ", ".join(f"{s} {100 * v:+.1f}" for s, v in c["text_delta"].items())
    return [f"- {who}: vision skills lifted by ≥ {100 * LIFT:.0f} points over (a) on every seed: **{lifted}** "
            f"({'meets' if c['two_skills_lifted'] else 'does not meet'} the ≥ 2 target)",
            (f"- valid tool-call rate of {who}: **{100 * c['valid_call_rate']:.1f} %** "
             f"({'meets' if c['valid_ok'] else 'misses'} ≥ {100 * VALID_CALL_TARGET:.0f} %)"
             if c["valid_call_rate"] is not None else f"- valid tool-call rate of {who}: no calls were made"),
            f"- text suites, {who} − (a): {text} ({'within' if c['text_within_2'] else 'NOT within'} "
            f"{100 * TEXT_TOLERANCE:.0f} points)"]


def section(results_dir: str | Path | None = None, docs_dir: str | Path | None = None, scale: str = "cpu") -> str:
    """The registry's entry point."""
    path = resolve_results_dir(results_dir) / f"{EXPERIMENT}_{scale}.json"
    res = read_json(path)
    title = f"## Zero-vision SFT with a code tool (chapter 06, {PAPER['section']}, scale `{scale}`)"
    if res is None:
        return f"{title}\n\nNo results yet: run `python -m k25mini.experiments.ch06_zero_vision`.\n"
    lines = [title, ""]
    flag = staleness(res, PACKAGE)
    if flag:
        lines += [f"> **{flag}**", ""]
    cfg = res["config"]
    lines += [f"Paper: {PAPER['claim']}.", "",
              f"Ours: chapter 05's `{cfg['fusion_schedule']}` checkpoint, SFT of the language model for "
              f"{cfg['steps']} steps × {cfg['batch']} trajectories, seeds {cfg['seeds']} (trained arms; (a) and (d) "
              f"are deterministic), {cfg['eval_per_skill']} held-out items per vision skill, "
              f"{cfg['text_eval_items']} per text suite; accuracy in %, mean ± std over seeds. "
              "`(twin)`: the skill has text twins with tool calls in the SFT data. Sandbox: "
              f"{', '.join(res.get('sandboxes') or ['–'])}.", ""]
    lines += markdown_table(res)
    lines += ["", "Tool use of the trained arms (share of questions answered with a call):", ""]
    lines += markdown_table({**res, "table": {a: v for a, v in res["table"].items() if a in
                                              ("zero_vision", "zero_vision_blank", "text_visual")}}, "tool_call_rate")
    lines += ["", *_checks(res), *_checks(res, "checks_blank", "(b′)"), ""]
    return "\n".join(lines)
