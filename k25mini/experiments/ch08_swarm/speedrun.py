"""Chapter 08's stage of the speedrun: the PARL swarm, one seed, its LMs started from the previous stage's checkpoint
(chapter 06's SFT model in the full speedrun).

The worker (single agent and every subagent) and the orchestrator both start from the language model of the
previous stage's checkpoint (``ctx.state["checkpoint"]``) instead of from scratch, and only the ``full`` PARL
variant is trained. The committed multi-seed result (``results/swarm_<scale>.json``) starts from scratch and
trains four variants, so the report card compares the two as different recipes, not as replicates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from k25mini.experiments.ch08_swarm.config import PACKAGE, PAPER, default_config
from k25mini.experiments.ch08_swarm.evaluation import seed_checks
from k25mini.experiments.ch08_swarm.run import results_path, run_experiment
from k25mini.experiments.results import read_json, staleness
from k25mini.experiments.stage import Stage, StageContext, StageResult

__all__ = ["SEED", "speedrun_stages", "card", "seed_metrics"]

SEED = 0


def seed_metrics(per_seed: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one seed's result (see :func:`~.evaluation.seed_checks`)."""
    c = seed_checks(per_seed)
    si, sw = per_seed["single_unbounded"]["wide"], per_seed["variants"]["full"]["eval"]["wide"]
    return {"ratio": c["ratio"], "single_f1": si["item_f1"], "swarm_f1": sw["item_f1"],
            "single_steps": si["critical_steps"], "swarm_steps": sw["critical_steps"],
            "swarm_parallel": sw["avg_parallel"], "ratio_counts": c["ratio_counts"]}


def _lines(m: dict[str, float]) -> dict[str, str]:
    return {"single agent (wide, held out)": f"item-F1 {100 * m['single_f1']:.1f}, critical steps "
                                             f"{m['single_steps']:.1f}",
            "swarm after PARL": f"item-F1 {100 * m['swarm_f1']:.1f}, critical steps {m['swarm_steps']:.1f}, "
                                f"avg parallelism {m['swarm_parallel']:.2f}",
            "critical-steps ratio": f"{m['ratio']:.2f}x (counts: {m['ratio_counts']})"}


def speedrun_stages(scale: str) -> list[Stage]:
    def swarm(ctx: StageContext) -> StageResult:
        if ctx.mode == "reuse":
            path = results_path(scale, ctx.results_dir)
            old = read_json(path)
            if old is None or str(SEED) not in old.get("per_seed", {}):
                raise ValueError(f"--reuse: no committed seed-{SEED} result to replay at {path}; run without --reuse")
            m = seed_metrics(old["per_seed"][str(SEED)])
            rel = path.relative_to(ctx.results_dir.parent) if ctx.results_dir.parent in path.parents else path
            return StageResult(lines=_lines(m), metrics=m, reused=str(rel), stale=staleness(old, PACKAGE))
        ckpt = ctx.state.get("checkpoint")
        if ckpt is None:
            raise ValueError("the swarm stage starts from an earlier stage's checkpoint, but no earlier stage left one")
        cfg = replace(default_config(scale), seeds=[SEED], variants=["full"], init_from=str(ckpt),
                      init_preset=ctx.state.get("preset", "nano"))
        out = ctx.runs_dir / "results"
        was_done = results_path(scale, out).is_file()
        res = run_experiment(cfg, out_dir=out, log=ctx.log)
        m = seed_metrics(res["per_seed"][str(SEED)])
        return StageResult(lines=_lines(m), metrics=m, resumed=was_done, stale=res.get("stale"))

    return [Stage("swarm", f"08 Agent Swarm, PARL from the previous stage's checkpoint, seed {SEED}", swarm)]


def card(metrics: dict[str, dict], results_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Report-card rows: critical-steps ratio and item-F1, paper beside the committed multi-seed result."""
    m = metrics.get("swarm")
    if not m:
        return []
    com = read_json(results_path(scale, results_dir))
    s = (com or {}).get("summary")

    old = " STALE" if staleness(com, PACKAGE) else ""

    def ms(d: dict[str, float], k: float = 1.0, nd: int = 1, unit: str = "") -> str:
        return f"{d['mean'] * k:.{nd}f}{unit} ± {d['std'] * k:.{nd}f}{unit} (n={d.get('n', '?')}){old}"

    ratio_ok = m["ratio_counts"] and 3.0 <= m["ratio"]
    rows = [{"finding": "swarm: fewer critical steps than a single agent (ch. 08)", "paper": PAPER["latency_speedup"],
             "committed": ms(s["critical_steps_ratio"], 1, 2, "x") if s else "—", "ours": f"{m['ratio']:.2f}x",
             "verdict": "reproduces (≥ 3x, single agent finishes, swarm F1 ≥ single)" if ratio_ok else
             "does not reproduce at this seed"},
            {"finding": "swarm: item-F1 single → swarm (ch. 08)",
             "paper": f"{PAPER['widesearch_item_f1_single']} → {PAPER['widesearch_item_f1_swarm']}",
             "committed": (ms(s["single"]["wide"]["item_f1"], 100) + " → " + ms(s["swarm"]["wide"]["item_f1"], 100))
             if s else "—", "ours": f"{100 * m['single_f1']:.1f} → {100 * m['swarm_f1']:.1f}",
             "verdict": "swarm ≥ single (as in the paper)" if m["swarm_f1"] >= m["single_f1"] else
             "swarm below single (paper: above)"}]
    return rows
