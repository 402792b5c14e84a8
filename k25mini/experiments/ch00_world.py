"""Chapter 00's part of the speedrun: the configs' parameter counts and the toy world's corpora and suites.

Nothing here trains; the stages check that the configs and the world build at the current scale, and put the
published K2 parameter count beside the one our config implies (a report-card finding).
"""

from __future__ import annotations

import time

from k25mini.experiments.stage import Stage, StageContext, StageResult

__all__ = ["PAPER_PARAMS", "speedrun_stages", "stage_configs", "stage_world", "card"]

#: K2's published size (K2 report; K2.5 keeps the backbone): 1T total, 32B activated parameters
PAPER_PARAMS = {"total": 1.0e12, "activated": 32e9}


def stage_configs(ctx: StageContext) -> StageResult:
    from k25mini.config import PRESETS, count_params, kv_cache_bytes_per_token, preset

    lines = {}
    for name in PRESETS:
        pc = count_params(preset(name))
        lines[name] = f"total {pc.total / 1e9:10.4f} B   activated {pc.activated / 1e9:10.4f} B"
    k2 = count_params(preset("k2"))
    t = preset("k2").text
    mla, mha = kv_cache_bytes_per_token(t, "mla"), kv_cache_bytes_per_token(t, "mha")
    lines["k2 KV-cache/token"] = f"MLA {mla / 1024:.1f} KiB vs MHA {mha / 1024:.1f} KiB ({mha / mla:.1f}x smaller)"
    return StageResult(lines=lines, metrics={"k2_total": k2.total, "k2_activated": k2.activated})


def stage_world(ctx: StageContext, seed: int = 0) -> StageResult:
    """Build (or reuse from data/cache/) every training corpus and eval suite at the current scale."""
    import datasets

    from k25mini.data import build_corpus, eval_dataset
    from k25mini.world import CORPORA, SUITES, chance_baseline

    datasets.disable_progress_bars()
    t0 = time.time()
    rows = media = 0
    for name in CORPORA:
        ds = build_corpus(name, seed, ctx.scale)
        rows += len(ds)
        media += sum(len(m) for m in ds["media"])
    n_eval = {s: len(eval_dataset(s, seed, ctx.scale)) for s in SUITES}
    return StageResult(lines={
        "training corpora": f"{len(CORPORA)} corpora, {rows:,} rows, {media:,} images/videos (seed {seed})",
        "eval suites": ", ".join(f"{s} {n}" for s, n in n_eval.items()),
        "chance baselines": ", ".join(f"{s} {chance_baseline(s):.3f}" for s in SUITES),
        "time (build or cache hit)": f"{time.time() - t0:.1f} s",
    }, metrics={"corpus_rows": rows})


def speedrun_stages(scale: str) -> list[Stage]:
    return [Stage("configs", "00 configs and parameter counts", stage_configs),
            Stage("world", "00b toy world: corpora and eval suites", stage_world)]


def card(metrics: dict[str, dict], results_dir, scale: str) -> list[dict[str, str]]:
    """Report-card rows: the K2 parameter count our config implies beside the published one."""
    m = metrics.get("configs")
    if not m:
        return []
    tot, act = m["k2_total"], m["k2_activated"]
    ok = abs(tot / PAPER_PARAMS["total"] - 1) < 0.05 and abs(act / PAPER_PARAMS["activated"] - 1) < 0.05
    return [{"finding": "K2 size from the published config (ch. 00)", "paper": "1T total / 32B activated",
             "committed": "—", "ours": f"{tot / 1e12:.3f}T / {act / 1e9:.1f}B",
             "verdict": "reproduces (within 5 %)" if ok else "does not reproduce"}]
