"""Chapter 07's stage of the speedrun: vision-only RL (seed 0) from the SFT stage's checkpoint, then all six suites
before and after, greedy, on chapter 05's held-out items (Table 2's recipe, one seed).

The stage leaves nothing new in ``ctx.state["checkpoint"]`` (the RL run keeps no checkpoint yet), so a later
stage still starts from the SFT model. The committed multi-seed result (``results/vision_rl_<scale>.json``)
starts from chapter 06's own zero-vision run; the card sets the two side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch07_clipped_rl.config import EXPERIMENT, PACKAGE, SUITES, TEXT_SUITES, config_for
from k25mini.experiments.ch07_clipped_rl.run import run_before, run_file, run_seed
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.stage import Stage, StageContext, StageResult
from k25mini.train.checkpoint import resolve_checkpoint

__all__ = ["SEED", "speedrun_stages", "card"]

SEED = 0


def _metrics(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    curve = after.get("curve") or []
    w = max(1, min(10, len(curve) // 4))
    return {"before": {k: v["acc"] for k, v in before["per"].items()},
            "after": {k: v["acc"] for k, v in after["per"].items()},
            "reward_first": sum(c["reward"] for c in curve[:w]) / w if curve else None,
            "reward_last": sum(c["reward"] for c in curve[-w:]) / w if curve else None}


def _lines(m: dict[str, Any]) -> dict[str, str]:
    def row(d):
        return "  ".join(f"{k} {100 * d[k]:.0f}" for k in SUITES if k in d)

    out = {"before RL (SFT checkpoint)": row(m["before"]), "after vision RL": row(m["after"])}
    if m["reward_first"] is not None:
        out["train reward"] = f"{m['reward_first']:.3f} -> {m['reward_last']:.3f}"
    return out


def speedrun_stages(scale: str) -> list[Stage]:
    cfg = config_for(scale, seeds=(SEED,))

    def rl(ctx: StageContext) -> StageResult:
        if ctx.mode == "reuse":
            a, b = read_json(run_file(cfg, "before", ctx.results_dir)), read_json(run_file(cfg, f"s{SEED}",
                                                                                           ctx.results_dir))
            if a is None or b is None:
                raise ValueError("--reuse: no committed chapter 07 results to replay; run without --reuse")
            m = _metrics(a, b)
            return StageResult(lines=_lines(m), metrics=m, reused=f"results/{EXPERIMENT}/{scale}",
                               stale=staleness(b, PACKAGE))
        ckpt = ctx.state.get("checkpoint")
        if ckpt is None:
            raise ValueError("the RL stage starts from the SFT stage's checkpoint, but no earlier stage left one")
        base = resolve_checkpoint(ckpt)
        out = ctx.runs_dir / "results"
        was_done = run_file(cfg, f"s{SEED}", out).is_file()
        a = run_before(cfg, base, out, log=ctx.log)
        b = run_seed(cfg, SEED, base, out, log=ctx.log)
        m = _metrics(a, b)
        return StageResult(lines=_lines(m), metrics=m, resumed=was_done, stale=b.get("stale"))

    return [Stage("rl", f"07 vision-only RL with the K2.5 loss, seed {SEED}", rl)]


def card(metrics: dict[str, dict], results_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Report-card rows: each text suite after vision RL vs before, beside the committed multi-seed change."""
    m = metrics.get("rl")
    if not m:
        return []
    com = read_json(Path(results_dir) / f"{EXPERIMENT}_{scale}.json")
    old = " STALE" if staleness(com, PACKAGE) else ""
    rows = []
    for k in TEXT_SUITES:
        if k not in m["after"]:
            continue
        d = m["after"][k] - m["before"][k]
        c = "—"
        if com and k in com.get("table", {}):
            dd = com["table"][k]["delta"]
            c = f"{100 * dd['mean']:+.1f} ± {100 * dd['std']:.1f} (n={dd['n']}){old}"
        ours = f"{100 * m['before'][k]:.0f} -> {100 * m['after'][k]:.0f} ({100 * d:+.0f})"
        rows.append({"finding": f"vision RL moves text: {k} (ch. 07, Table 2)", "paper": "+1.7 to +2.2 points",
                     "committed": c, "ours": ours,
                     "verdict": "up" if d > 0 else "down" if d < 0 else "flat"})
    return rows
