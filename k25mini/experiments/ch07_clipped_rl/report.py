"""Chapter 07's section of docs/reproduction.md, generated from results/vision_rl_<scale>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch07_clipped_rl.config import EXPERIMENT, PACKAGE, PAPER, SUITES, TEXT_SUITES
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.results import results_dir as resolve_results_dir

__all__ = ["section", "markdown_table", "mismatch_section", "MISMATCH_TITLES", "toggle_section", "toggle_figure",
           "TOGGLE_TITLES"]

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


TOGGLE_TITLES = {"off": "no length control", "always": "budget always on", "toggle": "Toggle"}
_TOGGLE_COLOURS = {"off": "tab:gray", "always": "tab:red", "toggle": "tab:blue"}


def toggle_figure(res: dict[str, Any], path: Path | None = None):
    """Greedy response tokens and accuracy on the frozen questions against RL iterations: one thin line per seed,
    the seed mean thick, one colour per mode. Saved to ``path`` if given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, per_seed in res["curves"].items():
        c = _TOGGLE_COLOURS.get(mode)
        xs = [e["it"] for e in next(iter(per_seed.values()))]
        for key, ax in zip(("tokens", "acc"), axes):
            k = 100.0 if key == "acc" else 1.0
            ys = np.asarray([[k * e[key] for e in curve] for curve in per_seed.values()])
            for y in ys:
                ax.plot(xs, y, color=c, lw=0.7, alpha=0.45)
            ax.plot(xs, ys.mean(axis=0), color=c, lw=2, marker="o", ms=3, label=TOGGLE_TITLES.get(mode, mode))
    axes[0].set_ylabel("response tokens (greedy, mean)")
    axes[1].set_ylabel("accuracy on held-out questions (%)")
    for ax in axes:
        ax.set_xlabel("RL iteration")
    axes[0].legend(fontsize=8)
    fig.suptitle("Toggle vs a rigid budget vs no length control (thin: seeds, thick: mean)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _toggle_table(table: dict[str, Any]) -> list[str]:
    lines = ["| mode | accuracy | tokens | token change | accuracy change (pts) | per seed (tokens %, acc pts) "
             "| sampled T=1: token change, acc change |",
             "|---|---|---|---|---|---|---|"]
    for mode, t in table.items():
        if "token_change_pct" in t:
            per = "; ".join(f"{tc:+.1f} %, {ac:+.1f}" for tc, ac in
                            zip(t["token_change_pct"]["values"], t["acc_change_pts"]["values"]))
            ch = (f"{_pm(t['token_change_pct'], 1.0, sign=True)} % | {_pm(t['acc_change_pts'], 1.0, sign=True)} | "
                  f"{per} | {_pm(t['sampled_token_change_pct'], 1.0, sign=True)} %, "
                  f"{_pm(t['sampled_acc_change_pts'], 1.0, sign=True)} |")
        else:
            ch = "– | – | – | – |"
        lines.append(f"| {TOGGLE_TITLES.get(mode, mode)} | {_pm(t['acc'])} | {_pm(t['tokens'], 1.0)} | {ch}")
    lines += ["", "Response styles at the end (greedy, seed mean): " + "; ".join(
        f"{TOGGLE_TITLES.get(m, m)}: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in t["styles"].items() if v > 0)
        for m, t in table.items()) + ".", ""]
    return lines


def toggle_section(results_dir: str | Path | None = None, docs_dir: str | Path | None = None,
                   scale: str = "cpu") -> list[str]:
    """The Toggle experiment's tables (one per budget scope) and figures (empty when it has not been run)."""
    res = read_json(resolve_results_dir(results_dir) / f"rl_toggle_{scale}.json")
    if res is None:
        return []
    lines = ["### Toggle: fewer response tokens at the same accuracy? (arXiv 2602.02276 §4.4)", ""]
    flag = staleness(res, "k25mini.experiments.ch07_clipped_rl.toggle")
    if flag:
        lines += [f"> **{flag}**", ""]
    cfg, b = res["config"], res["before"]["greedy"]
    mix = ", ".join(f"{s} {w:g}" for s, w in cfg["style_mix"])
    lines += [f"Paper: {res['paper']['claim']}.", "",
              f"Ours: chapter 06's zero-vision checkpoint, then {cfg['sft_steps']} SFT steps on worked solutions "
              f"of the world's arithmetic questions in three styles ({mix}); then {cfg['iterations']} RL iterations × "
              f"{cfg['items_per_iter']} questions × {cfg['k']} samples in each mode, the same prompts and seeds "
              f"(matched budgets). Budget: the {cfg['rho']:g}th percentile of correct response lengths, measured once "
              f"before RL; λ {cfg['lam']}, m {cfg['m']}. {cfg['eval_items']} held-out questions, frozen before any "
              f"run; greedy unless noted. Before RL: accuracy {100 * b['acc']:.1f} %, {b['tokens']:.1f} tokens. "
              f"Seeds {cfg['seeds']}; mean ± std; changes are against `off` of the same seed and scope.", ""]
    scopes = [("task", res, "**One budget per task type**, fresh train questions every iteration.")]
    if "prompt" in res:
        pb = res["prompt"].get("pool_budget", {})
        scopes.append(("prompt", res["prompt"],
                       f"**One budget per prompt** (the paper's budget(x)): RL draws from a fixed pool of "
                       f"{cfg.get('pool_size')} train questions; {pb.get('n_with_budget')} of {pb.get('n_prompts')} "
                       f"have a correct sample and so a budget (min {pb.get('budget_min')}, median "
                       f"{pb.get('budget_median')}, max {pb.get('budget_max')} tokens)."))
    for scope, part, text in scopes:
        lines += [text, ""]
        if docs_dir is not None:
            rel = f"figures/ch07_toggle_{scope}_{scale}.png"
            toggle_figure(part, Path(docs_dir) / rel)
            lines += [f"![Toggle ({scope} budgets): response tokens and accuracy against RL iterations]({rel})", ""]
        lines += _toggle_table(part["table"])
    return lines


def section(results_dir: str | Path | None = None, docs_dir: str | Path | None = None, scale: str = "cpu") -> str:
    """The registry's entry point."""
    res = read_json(resolve_results_dir(results_dir) / f"{EXPERIMENT}_{scale}.json")
    title = f"## Vision RL improves text? Table 2 (chapter 07, {PAPER['section']}, scale `{scale}`)"
    if res is None:
        return "\n".join([title, "", "No results yet: run `python -m k25mini.experiments.ch07_clipped_rl`.", "",
                          *mismatch_section(results_dir, scale), *toggle_section(results_dir, docs_dir, scale)])
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
    lines += toggle_section(results_dir, docs_dir, scale)
    return "\n".join(lines)
