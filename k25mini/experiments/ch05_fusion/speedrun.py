"""Chapter 05's stages of the speedrun: text pre-training -> ViT stage -> joint early fusion (one seed).

The stages use the ablation's own config (so the speedrun's run is the ablation's ``early`` seed-0 run, made
again from scratch) and keep their checkpoints and result under the speedrun's ``runs_dir``, never in the
committed results/. :func:`card` sets the speedrun's scores beside the paper's Table 1 and the committed
multi-seed means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from k25mini.experiments.ch05_fusion.config import FusionConfig, config_for
from k25mini.experiments.ch05_fusion.evaluation import PACKAGE, eval_sets, load_results, run_file
from k25mini.experiments.ch05_fusion.report import PAPER_TABLE1
from k25mini.experiments.ch05_fusion.stages import (
    b_steps,
    finished,
    joint_root,
    run_joint,
    stage_dir,
    stage_text,
    stage_vit,
)
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.stage import Stage, StageContext, StageResult
from k25mini.world import SUITES

__all__ = ["SCHEDULE", "SEED", "speedrun_stages", "card"]

SCHEDULE, SEED = "early", 0


def _last_loss(out: Path) -> float | None:
    f = out / "metrics.jsonl"
    if not f.is_file():
        return None
    loss = None
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "train" and "lm_loss" in r:
            loss = r["lm_loss"]
    return loss


def _reuse(ctx: StageContext, cfg: FusionConfig, what: str) -> StageResult:
    path = run_file(cfg, SCHEDULE, SEED, ctx.results_dir)
    old = read_json(path)
    if old is None:
        raise ValueError(f"--reuse: no committed result to replay at {path}; run without --reuse")
    rel = path.relative_to(ctx.results_dir.parent) if ctx.results_dir.parent in path.parents else path
    lines = {what: f"replayed from the committed {SCHEDULE} seed-{SEED} run"}
    metrics = {"final": old["final"], "config_key": old.get("config_key")} if what == "joint" else {}
    if what == "joint":
        lines["scores"] = "  ".join(f"{s} {100 * v:.1f}" for s, v in old["final"].items())
    return StageResult(lines=lines, metrics=metrics, reused=str(rel), stale=staleness(old, PACKAGE))


def speedrun_stages(scale: str) -> list[Stage]:
    cfg = config_for(scale)

    def text(ctx: StageContext) -> StageResult:
        if ctx.mode == "reuse":
            return _reuse(ctx, cfg, "text")
        runs = ctx.runs_dir / "fusion"
        done = finished(stage_dir(cfg, "A", runs), cfg.text_steps)
        out = stage_text(cfg, runs, progress=ctx.progress)
        loss = _last_loss(out)
        return StageResult(lines={"stage A": f"{cfg.text_steps} steps of text ({cfg.tokens_per_step} tokens/step), "
                                             f"final lm loss {loss:.3f}" if loss is not None else "no loss logged"},
                           metrics={"lm_loss": loss}, resumed=done)

    def vit(ctx: StageContext) -> StageResult:
        if ctx.mode == "reuse":
            return _reuse(ctx, cfg, "vit")
        runs = ctx.runs_dir / "fusion"
        done = finished(stage_dir(cfg, "B", runs), b_steps(cfg))
        out = stage_vit(cfg, runs, progress=ctx.progress)
        loss = _last_loss(out)
        b1 = _last_loss(stage_dir(cfg, "B1", runs)) if cfg.vit_align == "decoder" else None
        line = f"B1 {cfg.vit_steps} steps (caption loss {b1:.3f}), " if b1 is not None else ""
        line += f"B2 {b_steps(cfg)} projector steps, caption loss {loss:.3f}" if loss is not None else ""
        return StageResult(lines={"stage B": line}, metrics={"caption_loss": loss, "b1_caption_loss": b1},
                           resumed=done)

    def joint(ctx: StageContext) -> StageResult:
        from k25mini.pretrain.diagnose import blind_baseline

        if ctx.mode == "reuse":
            r = _reuse(ctx, cfg, "joint")
        else:
            runs = ctx.runs_dir / "fusion"
            was_done = run_file(cfg, SCHEDULE, SEED, ctx.runs_dir / "results").is_file()
            res = run_joint(cfg, SCHEDULE, SEED, runs, ctx.runs_dir / "results", progress=ctx.progress)
            ctx.state["checkpoint"] = str(joint_root(cfg, runs) / "joint" / f"{SCHEDULE}-s{SEED}")
            ctx.state["preset"] = cfg.preset
            r = StageResult(lines={"scores": "  ".join(f"{s} {100 * v:.1f}" for s, v in res["final"].items())},
                            metrics={"final": res["final"], "config_key": res["config_key"]},
                            resumed=was_done, stale=res.get("stale"))
        blind = {s: blind_baseline(items) for s, items in eval_sets(cfg).items()}
        r.metrics["blind"] = blind
        r.lines["blind baseline"] = "  ".join(f"{s} {100 * v:.1f}" for s, v in blind.items())
        return r

    return [Stage("text", "05 text pre-training (stage A)", text),
            Stage("vit", "05 ViT stage (B1 caption decoder, B2 projector)", vit),
            Stage("joint", f"05 joint pre-training, {SCHEDULE} fusion, seed {SEED}", joint)]


def _verdict(x: float, mean: float, std: float, n: int) -> str:
    if n < 2:
        return "one committed run: no spread to compare with"
    lo, hi = mean - 2 * std, mean + 2 * std
    return "within the committed spread (±2 sd)" if lo - 1e-9 <= x <= hi + 1e-9 else "outside the committed ±2 sd"


def card(metrics: dict[str, dict], results_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Report-card rows: each suite's score beside the paper's early-fusion Table 1 entry, the committed
    multi-seed early-fusion mean and the blind baseline, with a verdict."""
    m = metrics.get("joint")
    if not m:
        return []
    committed = load_results(scale, results_dir)
    row = (committed or {}).get("table", {}).get(SCHEDULE)
    rows = []
    for s in SUITES:
        x, blind = m["final"][s], m["blind"][s]
        if row:
            c = row[s]
            com = f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f} (n={len(c['values'])})"
            com += " STALE" if committed.get("stale") else ""
            v = _verdict(x, c["mean"], c["std"], len(c["values"]))
        else:
            com, v = "—", "no committed result"
        sees = "above" if x > blind + 1e-9 else "not above"
        rows.append({"finding": f"Table 1, early fusion, {s} (ch. 05)", "paper": f"{PAPER_TABLE1[SCHEDULE][s]}",
                     "committed": com, "ours": f"{100 * x:.1f} (blind {100 * blind:.1f})",
                     "verdict": f"{v}; {sees} the blind baseline"})
    if committed and committed.get("table", {}).get("late"):
        t = committed["table"]
        wins = sum(t["early"][s]["mean"] > t["late"][s]["mean"] for s in SUITES)
        rows.append({"finding": "early fusion beats late fusion at a fixed budget (ch. 05)",
                     "paper": "6 of 6 suites", "committed": f"{wins} of 6 suites (means over seeds)",
                     "ours": "not measured (the speedrun trains one schedule)",
                     "verdict": "reproduces in the committed ablation" if wins == 6 else
                     f"partly: {wins} of 6 in the committed ablation"})
    return rows
