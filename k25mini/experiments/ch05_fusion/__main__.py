"""``python -m k25mini.experiments.ch05_fusion``: the fusion ablation (Table 1) and its checks.

    python -m k25mini.experiments.ch05_fusion                  # the whole ablation at K25_SCALE
    python -m k25mini.experiments.ch05_fusion --workers 2      # joint runs in 2 processes (one thread each)
    python -m k25mini.experiments.ch05_fusion --nproc 2        # every stage data parallel on 2 torchrun processes
    python -m k25mini.experiments.ch05_fusion --runs early:0 mid:1 --threads 1
    python -m k25mini.experiments.ch05_fusion --probe NAME early 0 --set proj_steps=1000 proj_lr=0.01
    python -m k25mini.experiments.ch05_fusion --diagnose 1500     # does each model read the image? (loss gap)
    python -m k25mini.experiments.ch05_fusion --skills 60         # VisReason + text twins skill by skill
    python -m k25mini.experiments.ch05_fusion --fields 100        # which caption facts are read off the pixels
    python -m k25mini.experiments.ch05_fusion --vision-probe 1600 # which facts are linearly in the vision tokens
    python -m k25mini.experiments.ch05_fusion --vision-budget 25 50 100 400  # vision-only training
    python -m k25mini.experiments.ch05_fusion --blind             # blind baseline per kind of question

Design work scores on train-side dev items instead of the held-out suites (no held-out item scored or tracked):
    python -m k25mini.experiments.ch05_fusion.dev NAME early 0 --set grid_pos=true --mix vis_reasoning=3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from k25mini.experiments.ch05_fusion.checks import (
    BUDGET_MIXES,
    blind_check,
    diagnose,
    diagnostics_path,
    perception_check,
    skill_check,
    vision_budget_check,
    vision_check,
)
from k25mini.experiments.ch05_fusion.config import FusionConfig, config_for
from k25mini.experiments.ch05_fusion.stages import run_ablation, run_probe, stage_vit
from k25mini.world import SUITES

__all__ = ["main", "parse_override", "check_args"]


def parse_override(cfg: FusionConfig, kv: str) -> tuple[str, Any]:
    """``"name=value"`` -> (name, value typed like the config field; ``None`` fields take ``none`` or a float)."""
    if "=" not in kv:
        raise ValueError(f"--set expects name=value, got {kv!r}")
    k, v = kv.split("=", 1)
    if k not in {f.name for f in dataclasses.fields(cfg)} or k == "scale":
        raise ValueError(f"--set: no config field {k!r} (fields: {', '.join(cfg.to_dict())})")
    cur = getattr(cfg, k)
    if cur is None or v.lower() == "none":
        return k, None if v.lower() == "none" else float(v)
    if isinstance(cur, tuple):
        return k, tuple(type(cur[0])(x) if cur else x for x in v.split(","))
    if isinstance(cur, bool):
        return k, v.lower() in ("1", "true", "yes")
    return k, type(cur)(v)


def check_args(spec: list[str], runs: list[str] | None) -> tuple[int, list[tuple[str, int]] | None, dict[str, Path]]:
    """A check's CLI arguments: ``N [NAME=RUN_DIR ...]`` and ``--runs schedule:seed ...`` -> (N, runs, extra)."""
    extra = {k: Path(v) for k, v in (kv.split("=", 1) for kv in spec[1:])}
    sel = [(r.split(":")[0], int(r.split(":")[1])) for r in runs] if runs else None
    return int(spec[0]), sel, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the fusion ablation (Table 1) and its checks")
    ap.add_argument("--runs", nargs="*", help="schedule:seed pairs (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1, help="joint runs in this many processes (one thread each)")
    ap.add_argument("--nproc", type=int, default=1,
                    help="train every stage data parallel on this many processes (torchrun -m k25mini.train --job)")
    ap.add_argument("--force", action="store_true", help="recompute runs even when results match")
    ap.add_argument("--stages-only", action="store_true", help="only train the shared stages A and B")
    ap.add_argument("--probe", nargs=3, metavar=("NAME", "SCHEDULE", "SEED"), help="an investigation run")
    ap.add_argument("--set", nargs="*", default=[],
                    help="config overrides for --probe and the checks, e.g. joint_steps=800")
    ap.add_argument("--diagnose", nargs="*", type=int, metavar="VIT_STEPS",
                    help="image-reliance check of the ViT stages with these vit_steps and of the finished joint runs")
    ap.add_argument("--skills", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="per-skill VisReason and TextReason (the text twins) scores with N items per skill for "
                         "the finished joint runs (select with --runs) and any NAME=RUN_DIR checkpoints")
    ap.add_argument("--fields", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="perception check: caption facts (colour, shape, count, cell, box, value, motion) read off "
                         "the image, on N unseen rows per ViT corpus, for the ViT stage, the finished joint runs "
                         "(select with --runs) and any NAME=RUN_DIR checkpoints")
    ap.add_argument("--vision-probe", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="linear probes of the vision tokens for an object's cell, shape and colour on N single-object "
                         "scenes: untrained tower, ViT stage, finished joint runs (--runs), NAME=RUN_DIR checkpoints")
    ap.add_argument("--vision-budget", nargs="+", type=int, metavar="STEPS",
                    help="vision-only training from the ViT stage for these step counts, scored on the vision suites "
                         "(how much vision data the model needs; see --budget-mixes, --budget-seeds)")
    ap.add_argument("--budget-mixes", nargs="+", default=["all", "reason"], choices=sorted(BUDGET_MIXES))
    ap.add_argument("--budget-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--blind", action="store_true",
                    help="each suite's blind baseline (best constant answer per kind of question) into the diagnostics")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    over = dict(parse_override(config_for(), kv) for kv in a.set)
    cfg = config_for(**over)  # --set applies to the checks too (e.g. --skills of a probe's config)
    print(f"fusion ablation at {cfg.scale}: key {cfg.key()}", flush=True)
    t0 = time.perf_counter()
    if a.stages_only:
        stage_vit(cfg, nproc=a.nproc)
        print(f"stages A+B done in {time.perf_counter() - t0:.0f} s", flush=True)
        return 0
    if a.diagnose is not None:
        d = diagnose(cfg, tuple(a.diagnose))
        for name, row in {**{f"B vit_steps={k}": v for k, v in d.get("stage_B", {}).items()},
                          **d.get("joint", {})}.items():
            print(name + ": " + "  ".join(f"{k} {r['matched']:.2f}/{r['mismatched']:.2f}" for k, r in row.items()
                                          if isinstance(r, dict)) + "  (nats/token, own/other image)", flush=True)
        print(f"wrote {diagnostics_path(cfg.scale)}", flush=True)
        return 0
    if a.blind:
        d = blind_check(cfg)["best_constant"]
        print("blind baseline: " + "  ".join(f"{s} {100 * d[s]:.1f}" for s in SUITES), flush=True)
        return 0
    if a.vision_budget:
        d = vision_budget_check(cfg, tuple(a.vision_budget), tuple(a.budget_mixes), tuple(a.budget_seeds))
        for name, row in d["vision_budget"].items():
            print(f"{name} ({row['tokens']} tokens): "
                  + "  ".join(f"{s} {100 * v:.1f}" for s, v in row["final"].items()), flush=True)
        return 0
    if a.vision_probe:
        n, sel, extra = check_args(a.vision_probe, a.runs)
        d = vision_check(cfg, n, sel, extra)
        for name, row in d["vision_probe"].items():
            print(name + ": " + "  ".join(f"{t} {r['flat']:.2f}/{r['pooled']:.2f}" for t, r in row.items()
                                          if isinstance(r, dict)) + "  (flat/pooled accuracy)", flush=True)
        return 0
    if a.fields:
        n, sel, extra = check_args(a.fields, a.runs)
        d = perception_check(cfg, n, sel, extra)
        for name, row in d["fields"].items():
            print(name + ": " + "  ".join(f"{sk}.{k} {v['acc']:.2f}/{v['blind']:.2f}" for sk, r in row.items()
                                          if isinstance(r, dict) for k, v in r.items()) + "  (own/other image)",
                  flush=True)
        return 0
    if a.skills:
        n, sel, extra = check_args(a.skills, a.runs)
        for suite in ("VisReason", "TextReason"):  # the visual skills and their text twins
            d = skill_check(cfg, n, sel, extra, suite=suite)
        for suite, rows in d["skills"].items():
            for name, row in rows.items():
                print(f"{suite} {name}: " + "  ".join(f"{k} {v['score']:.2f}/{v['chance']:.2f}"
                                                      for k, v in row.items() if isinstance(v, dict))
                      + "  (score/chance)", flush=True)
        return 0
    if a.probe:
        r = run_probe(a.probe[0], a.probe[1], int(a.probe[2]), **over)
        print(f"probe {a.probe[0]}: " + " ".join(f"{s}={v:.3f}" for s, v in r["final"].items())
              + f"  ({r['timing_s']['total']:.0f} s)", flush=True)
        return 0
    if over:
        ap.error("--set applies to --probe and the checks only: the ablation's config lives in config.py (its "
                 "results are the committed Table 1)")
    todo = [(r.split(":")[0], int(r.split(":")[1])) for r in a.runs] if a.runs else None

    def show(sch: str, seed: int, r: dict[str, Any]) -> None:
        print(f"{sch} seed {seed}: " + " ".join(f"{s}={v:.3f}" for s, v in r["final"].items())
              + f"  ({r['timing_s']['total']:.0f} s)" + (f"  [{r['stale']}]" if r.get("stale") else ""), flush=True)

    # writes the aggregated results too
    run_ablation(cfg, todo, force=a.force, workers=a.workers, log=show, nproc=a.nproc)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
