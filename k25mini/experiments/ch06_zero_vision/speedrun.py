"""Chapter 06's stage of the speedrun: zero-vision SFT (seed 0) from the joint stage's checkpoint, then the
per-skill eval with the sandboxed code tool, beside the joint checkpoint answering directly (arm (a)).

The stage leaves its SFT checkpoint in ``ctx.state["checkpoint"]``, so later stages build on the SFT model (one
model's life). The committed multi-seed result (``results/zero_vision_sft_<scale>.json``) starts from the
ablation's own early-fusion run; the card compares the two as different starts of the same recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k25mini.experiments.ch06_zero_vision.config import (
    EXPERIMENT,
    LIFT,
    PACKAGE,
    TEXT_SUITES,
    TEXT_TOLERANCE,
    VISION_SKILLS,
    config_for,
)
from k25mini.experiments.ch06_zero_vision.run import run_arm
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.stage import Stage, StageContext, StageResult

__all__ = ["SEED", "speedrun_stages", "card"]

SEED = 0


def _metrics(direct: dict[str, Any], sft: dict[str, Any]) -> dict[str, Any]:
    acc = {k: v["acc"] for k, v in sft["per"].items()}
    base = {k: v["acc"] for k, v in direct["per"].items()}
    calls = sum(v["calls"] for v in sft["per"].values())
    valid = sum(v["calls"] * v["valid_call_rate"] for v in sft["per"].values())
    return {"sft": acc, "direct": base, "tool_call_rate": {k: v["tool_call_rate"] for k, v in sft["per"].items()},
            "valid_call_rate": valid / calls if calls else 0.0, "sandbox": sft.get("sandbox")}


def _lines(m: dict[str, Any]) -> dict[str, str]:
    def row(d):
        return "  ".join(f"{k} {100 * d[k]:.0f}" for k in (*VISION_SKILLS, *TEXT_SUITES) if k in d)

    return {"direct (joint checkpoint)": row(m["direct"]), "zero-vision SFT + tool": row(m["sft"]),
            "tool-call rate": row(m["tool_call_rate"]),
            "valid calls": f"{100 * m['valid_call_rate']:.1f} %  (sandbox: {m['sandbox']})"}


def speedrun_stages(scale: str) -> list[Stage]:
    cfg = config_for(scale, seeds=(SEED,), arms=("no_sft", "zero_vision"))

    def sft(ctx: StageContext) -> StageResult:
        if ctx.mode == "reuse":
            from k25mini.experiments.ch06_zero_vision.run import run_file

            a, b = (read_json(run_file(cfg, "no_sft", None, ctx.results_dir)),
                    read_json(run_file(cfg, "zero_vision", SEED, ctx.results_dir)))
            if a is None or b is None:
                raise ValueError("--reuse: no committed chapter 06 results to replay; run without --reuse")
            m = _metrics(a, b)
            return StageResult(lines=_lines(m), metrics=m, reused=f"results/{EXPERIMENT}/{scale}",
                               stale=staleness(b, PACKAGE))
        ckpt = ctx.state.get("checkpoint")
        if ckpt is None:
            raise ValueError("the SFT stage starts from the joint stage's checkpoint, but no earlier stage left one")
        out = ctx.runs_dir / "results"
        from k25mini.experiments.ch06_zero_vision.run import _runs_root, run_file

        was_done = run_file(cfg, "zero_vision", SEED, out).is_file()
        a = run_arm(cfg, "no_sft", None, ctx.runs_dir, out, base=Path(ckpt), log=ctx.log)
        b = run_arm(cfg, "zero_vision", SEED, ctx.runs_dir, out, base=Path(ckpt), log=ctx.log, progress=ctx.progress)
        ctx.state["checkpoint"] = str(_runs_root(cfg, ctx.runs_dir) / f"zero_vision-s{SEED}")
        m = _metrics(a, b)
        return StageResult(lines=_lines(m), metrics=m, resumed=was_done, stale=b.get("stale"))

    return [Stage("sft", f"06 zero-vision SFT with the code tool, seed {SEED}", sft)]


def card(metrics: dict[str, dict], results_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Report-card rows: per vision skill, the SFT model with the tool vs the joint checkpoint answering
    directly, beside the committed multi-seed (b) - (a)."""
    m = metrics.get("sft")
    if not m:
        return []
    com = read_json(Path(results_dir) / f"{EXPERIMENT}_{scale}.json")
    old = " STALE" if staleness(com, PACKAGE) else ""
    rows = []
    for k in (*VISION_SKILLS, *TEXT_SUITES):
        if k not in m["sft"]:
            continue
        d = m["sft"][k] - m["direct"][k]
        c = "—"
        if com and "zero_vision" in com.get("table", {}) and "no_sft" in com["table"]:
            zc, nc = com["table"]["zero_vision"].get(k), com["table"]["no_sft"].get(k)
            if zc and nc:
                c = f"{100 * (zc['acc']['mean'] - nc['acc']['mean']):+.1f} (n={zc['acc']['n']}){old}"
        rows.append({"finding": f"zero-vision SFT + tool vs direct, {k} (ch. 06)",
                     "paper": "tool use activated without visual SFT data" if k in VISION_SKILLS else "text kept",
                     "committed": c, "ours": f"{100 * m['sft'][k]:.0f} vs {100 * m['direct'][k]:.0f} ({100 * d:+.0f})",
                     "verdict": _verdict(k, d)})
    return rows


def _verdict(k: str, d: float) -> str:
    """The acceptance's wording for one row: a vision skill lifted by >= LIFT, a text suite within TEXT_TOLERANCE."""
    if k in VISION_SKILLS:
        return f"lifted ≥ {100 * LIFT:.0f}" if d >= LIFT else f"not lifted ≥ {100 * LIFT:.0f}"
    return f"within {100 * TEXT_TOLERANCE:.0f}" if d >= -TEXT_TOLERANCE else f"dropped > {100 * TEXT_TOLERANCE:.0f}"
