"""Chapter 07's section of docs/reproduction.md, generated from results/vision_rl_<scale>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch07_clipped_rl.config import EXPERIMENT, PACKAGE, PAPER, SUITES, TEXT_SUITES
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.results import results_dir as resolve_results_dir

__all__ = ["section", "markdown_table", "mismatch_section", "MISMATCH_TITLES"]

MISMATCH_TITLES = {"pg": "policy gradient × ρ, no mask", "mask": "mask only (τ = 0)",
                   "mask_tau": "mask + τ on kept tokens (default)", "mask_tau_all": "mask + τ on every token",
                   "control": "mask + τ, no injected mismatch"}


def _pm(d: dict[str, Any], k: float = 100.0, sign: bool = False, digits: int = 1) -> str:
    f = f"{'+' if sign else ''}.{digits}f"
    return f"{d['mean'] * k:{f}} ± {d['std'] * k:.{digits}f}" if d["n"] > 1 else f"{d['mean'] * k:{f}}"


def markdown_table(res: dict[str, Any]) -> list[str]:
    rows = ["| suite | blind | before RL | after vision RL | change | change per seed |",
            "|---|---|---|---|---|---|"]
    for s in SUITES:
        t = res["table"][s]
        per = ", ".join(f"{100 * v:+.1f}" for v in t["delta"]["values"])
        blind = res.get("blind", {}).get(s)
        rows.append(f"| {s}{' (text)' if s in TEXT_SUITES else ''} | "
                    f"{'–' if blind is None else f'{100 * blind:.1f}'} | {100 * t['before']:.1f} | "
                    f"{_pm(t['after'])} | {_pm(t['delta'], sign=True)} | {per} |")
    return rows


def mismatch_section(results_dir: str | Path | None = None, scale: str = "cpu") -> list[str]:
    """The train–inference mismatch ablation's table (empty when it has not been run)."""
    res = read_json(resolve_results_dir(results_dir) / f"rl_mismatch_{scale}.json")
    if res is None:
        return []
    lines = ["### Why the mask: a train–inference mismatch, injected", ""]
    flag = staleness(res, "k25mini.experiments.ch07_clipped_rl.mismatch")
    if flag:
        lines += [f"> **{flag}**", ""]
    cfg = res["config"]
    thr = "–" if res["spike_threshold"] is None else f"{res['spike_threshold']:.2f}"
    lines += [f"Each iteration samples from a copy of the policy with Gaussian weight noise (σ = {cfg['sigma']} × each "
              f"tensor's std) and trains the policy on those samples, {cfg['updates']} optimiser steps per batch, "
              f"{cfg['iterations']} iterations, seeds {cfg['seeds']}; mean ± std over seeds. Gradient norms are "
              "before clipping; a spike is an iteration above 10× the control's median "
              f"({thr}). Reward: mean of the "
              f"first and last {res['window']} iterations.", "",
              "| arm | log ρ std (1st step) | masked | grad norm median | grad norm max | spikes "
              "| reward first → last |",
              "|---|---|---|---|---|---|---|"]
    for arm in MISMATCH_TITLES:
        t = res["table"].get(arm)
        if t is None:
            continue
        sp = "–" if t["spikes"] is None else _pm(t["spikes"], 1.0)
        lines.append(f"| {MISMATCH_TITLES[arm]} | {_pm(t['log_ratio_std'], 1.0, digits=3)} | "
                     f"{_pm(t['masked_frac'])} % | "
                     f"{_pm(t['grad_norm_median'], 1.0, digits=2)} | {_pm(t['grad_norm_max'], 1.0, digits=2)} | {sp} | "
                     f"{_pm(t['reward_first'], 1.0, digits=3)} → {_pm(t['reward_last'], 1.0, digits=3)} |")
    return lines + [""]


def section(results_dir: str | Path | None = None, docs_dir: str | Path | None = None, scale: str = "cpu") -> str:
    """The registry's entry point."""
    res = read_json(resolve_results_dir(results_dir) / f"{EXPERIMENT}_{scale}.json")
    title = f"## Vision RL improves text? Table 2 (chapter 07, {PAPER['section']}, scale `{scale}`)"
    if res is None:
        return "\n".join([title, "", "No results yet: run `python -m k25mini.experiments.ch07_clipped_rl`.", "",
                          *mismatch_section(results_dir, scale)])
    lines = [title, ""]
    flag = staleness(res, PACKAGE)
    if flag:
        lines += [f"> **{flag}**", ""]
    cfg = res["config"]
    lines += [f"Paper: {PAPER['claim']}.", "", "| paper benchmark | before | after | change | our nearest suite |",
              "|---|---|---|---|---|"]
    for name, b, a, ours in PAPER["rows"]:
        lines.append(f"| {name} | {b} | {a} | {a - b:+.1f} | {ours or '– (no long-context suite)'} |")
    c = res["reward_curve"]
    lines += ["", f"Ours: chapter 06's zero-vision SFT checkpoint (seed {cfg['sft_seed']}), then "
              f"{cfg['iterations']} RL iterations × {cfg['items_per_iter']} vision prompts (train split) × "
              f"{cfg['k']} samples, loss `{cfg['loss']}` (α {cfg['alpha']}, β {cfg['beta']}, τ {cfg['tau']}), "
              f"{cfg['optimizer']} lr {cfg['lr']}, no tool in the environment; seeds {cfg['seeds']}. All six suites "
              f"on chapter 05's held-out items ({cfg['eval_items']} each), greedy; accuracy in %, mean ± std over "
              f"seeds. Mean training reward, first → last {c['window']} iterations: "
              f"{_pm(c['first'], 1.0, digits=3)} → {_pm(c['last'], 1.0, digits=3)}.", ""]
    lines += markdown_table(res)
    d = res["text_direction"]
    lines += ["", "Direction on the text suites (`up`/`down`/`flat` only when every seed agrees): "
              + ", ".join(f"{s} **{d[s]}**" for s in TEXT_SUITES) + ".", ""]
    lines += mismatch_section(results_dir, scale)
    return "\n".join(lines)
