"""Chapter 05's evaluation and results: the held-out suites, per-skill scoring, and the aggregated Table 1.

Each joint run is scored greedily on every suite (``eval_items`` held-out items per suite, frozen by the world
seed); :func:`aggregate` joins the finished runs of a config into ``results/fusion_ablation.json`` (mean and
sample std over seeds, every replicate listed) with uniform chance per suite and per skill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import FusionConfig
from k25mini.experiments.results import read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.pretrain.diagnose import blind_baseline
from k25mini.pretrain.evaluate import evaluate_items
from k25mini.pretrain.fusion_schedule import SCHEDULES
from k25mini.scale import current_scale, validate_scale
from k25mini.world import SUITES, World, chance_baseline, chance_by_skill, make_eval_suite

__all__ = ["PACKAGE", "EXPERIMENT", "eval_sets", "score_suites", "blind_baselines", "run_file", "results_path",
           "aggregate", "load_results", "mean_std"]

#: the module whose code (and everything it imports) stamps chapter 05's results: the stages and their
#: evaluation, not the report or the checks
PACKAGE = "k25mini.experiments.ch05_fusion.stages"
EXPERIMENT = "fusion_ablation"


def eval_sets(cfg: FusionConfig) -> dict[str, list]:
    """suite -> the ``cfg.eval_items`` held-out items of that suite (a pure function of the world seed)."""
    world = World(cfg.world_seed, scale=cfg.scale)
    return {s: make_eval_suite(world, s, cfg.eval_items) for s in SUITES}


def score_suites(model, tok: Tokenizer, evals: dict[str, list], max_new_tokens: int,
                 suites: tuple[str, ...] | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Greedy scores per suite and per skill: ``({suite: mean}, {suite: {skill: mean}})``."""
    final: dict[str, float] = {}
    by_skill: dict[str, dict[str, float]] = {}
    for s in suites if suites is not None else tuple(evals):
        mean, per_item = evaluate_items(model, tok, evals[s], max_new_tokens)
        groups: dict[str, list[float]] = {}
        for it, v in zip(evals[s], per_item):
            groups.setdefault(it.meta["skill"], []).append(v)
        final[s] = mean
        by_skill[s] = {k: sum(v) / len(v) for k, v in groups.items()}
    return final, by_skill


def blind_baselines(cfg: FusionConfig) -> dict[str, float]:
    """Each suite's blind baseline on the config's eval items: the best constant answer per kind of question
    (what a model that reads the question but not the image reaches from the answer prior alone)."""
    return {s: blind_baseline(items) for s, items in eval_sets(cfg).items()}


def run_file(cfg: FusionConfig, schedule: str, seed: int, results_dir: Path | None = None) -> Path:
    """``results/fusion_ablation/<scale>/<schedule>-s<seed>.json``."""
    return resolve_results_dir(results_dir) / "fusion_ablation" / cfg.scale / f"{schedule}-s{seed}.json"


def results_path(scale: str, results_dir: Path | None = None) -> Path:
    """``results/fusion_ablation.json`` at cpu scale (the committed one), ``..._<scale>.json`` otherwise."""
    name = "fusion_ablation.json" if scale == "cpu" else f"fusion_ablation_{scale}.json"
    return resolve_results_dir(results_dir) / name


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(cfg: FusionConfig, results_dir: Path | None = None) -> dict[str, Any]:
    """Join the finished runs of ``cfg`` into one JSON (mean and sample std over seeds) and write it.

    A run made by other code than the current one is still joined, and listed under ``stale_runs``."""
    runs = []
    for sch in cfg.schedules:
        for seed in cfg.seeds:
            r = read_json(run_file(cfg, sch, seed, results_dir))
            if r is not None and r.get("config_key") == cfg.key():
                runs.append(r)
    table: dict[str, Any] = {}
    for sch in cfg.schedules:
        rs = [r for r in runs if r["schedule"] == sch]
        if not rs:
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "label": SCHEDULES[sch].label}
        for s in SUITES:
            m, sd = mean_std([r["final"][s] for r in rs])
            row[s] = {"mean": m, "std": sd, "values": [r["final"][s] for r in rs]}
        row["by_skill"] = {
            s: {k: dict(zip(("mean", "std"), mean_std([r["final_by_skill"][s][k] for r in rs])))
                for k in rs[0]["final_by_skill"][s]}
            for s in SUITES}
        row["tokens"] = rs[0]["tokens"]
        row["tokens_identical_across_seeds"] = all(r["tokens"] == rs[0]["tokens"] for r in rs)
        row["run_seconds"] = [r["timing_s"]["total"] for r in rs]
        table[sch] = row
    out = {
        "scale": cfg.scale, "config": cfg.to_dict(), "seeds": list(cfg.seeds), "config_key": cfg.key(),
        "complete": len(runs) == len(cfg.schedules) * len(cfg.seeds), "n_runs": len(runs),
        "chance": {s: chance_baseline(s, cfg.world_seed, cfg.scale, cfg.eval_items) for s in SUITES},
        "chance_by_skill": {s: chance_by_skill(s, cfg.world_seed, cfg.scale, cfg.eval_items) for s in SUITES},
        "blind": blind_baselines(cfg),
        "table": table,
        "runs": [{k: r[k] for k in ("schedule", "seed", "final", "tokens", "text_curve", "loss_curve", "timing_s",
                                    "torch_threads")} for r in runs],
        "stale_runs": [f"{r['schedule']}-s{r['seed']}" for r in runs if staleness(r, PACKAGE)],
    }
    wall = sum(r["timing_s"]["total"] for r in runs)
    return write_result(results_path(cfg.scale, results_dir), out, experiment=EXPERIMENT, package=PACKAGE,
                        wall_s=wall)


def load_results(scale: str | None = None, results_dir: Path | None = None) -> dict[str, Any] | None:
    """The aggregated results at ``scale`` if they exist (None otherwise); ``"stale"`` is set (not saved) when the
    code that made them differs from the current code."""
    p = results_path(current_scale() if scale is None else validate_scale(scale, "scale"), results_dir)
    res = read_json(p)
    if res is not None:
        flag = staleness(res, PACKAGE)
        if flag:
            res["stale"] = flag
    return res
