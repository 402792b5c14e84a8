"""Chapter 06 design probes on the dev split (train-split items under the tag ``ch06-dev``; never held-out items).

    python tools/ch06_dev.py NAME [--arms no_sft zero_vision_blank] [--seeds 0 1 2] [--workers 2]
                             [--set replay_stream=true] [--per-skill 20] [--text-items 256] [--threads 1]

Each (arm, seed) trains from chapter 05's early seed-0 checkpoint (as the chapter does) in
``runs/zero_vision_dev/`` and writes ``results/zero_vision_sft/dev/NAME/<arm>[-s<seed>].json``; a table of
per-skill accuracy (per seed and the mean) is printed at the end. ``--set`` overrides any SFTConfig field
(``k=v``; bools ``true``/``false``, tuples comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from k25mini.experiments.ch06_zero_vision.config import ARMS, TEXT_SUITES, VISION_SKILLS, SFTConfig, config_for
from k25mini.experiments.ch06_zero_vision.run import _job, _jobs, base_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def parse_set(pairs: list[str]) -> dict:
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or k not in fields:
            raise SystemExit(f"--set expects FIELD=VALUE with FIELD one of {sorted(fields)}, got {p!r}")
        default = getattr(SFTConfig(scale="cpu"), k)
        if isinstance(default, bool):
            if v.lower() not in ("true", "false"):
                raise SystemExit(f"--set {k} expects true or false, got {v!r}")
            out[k] = v.lower() == "true"
        elif isinstance(default, int):
            out[k] = int(v)
        elif isinstance(default, float):
            out[k] = float(v)
        elif isinstance(default, tuple):
            out[k] = tuple(x for x in v.split(",") if x)
        else:
            out[k] = v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=["no_sft", "zero_vision_blank"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-skill", type=int, default=20)
    ap.add_argument("--text-items", type=int, default=256)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: as chapter 06's workers)")
    a = ap.parse_args()
    cfg = config_for("cpu", eval_split="dev", eval_per_skill=a.per_skill, text_eval_items=a.text_items,
                     arms=tuple(a.arms), seeds=tuple(a.seeds), **parse_set(a.set))
    res_dir = ROOT / "results" / "zero_vision_sft" / "dev" / a.name
    runs = ROOT / "runs" / "zero_vision_dev"
    base = base_checkpoint(cfg)
    jobs = _jobs(cfg)  # the chapter's own (arm, seed) list: trained arms per seed, (a)/(d) once
    if a.workers == 1:
        results = [_job(cfg, arm, s, runs, res_dir, a.force, a.threads, base) for arm, s in jobs]
    else:
        with ProcessPoolExecutor(max_workers=a.workers) as ex:
            futs = [ex.submit(_job, cfg, arm, s, runs, res_dir, a.force, a.threads, base) for arm, s in jobs]
            results = [f.result() for f in futs]
    names = [k for k in (*VISION_SKILLS, *TEXT_SUITES) if k in results[0]["per"]]
    print(f"dev probe {a.name} (config {cfg.key()}; {a.per_skill} items per vision skill, "
          f"{a.text_items} per text suite)")
    print("| arm | seed | " + " | ".join(names) + " | valid calls |")
    by_arm: dict[str, list] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
        calls = sum(v.get("calls") or 0 for v in r["per"].values())
        valid = sum((v.get("calls") or 0) * (v.get("valid_call_rate") or 0) for v in r["per"].values())
        vc = f"{100 * valid / calls:.1f}" if calls else "–"
        print(f"| {r['arm']} | {r['seed']} | " + " | ".join(f"{100 * r['per'][k]['acc']:.1f}" for k in names)
              + f" | {vc} |")
    for arm, rs in by_arm.items():
        if len(rs) > 1:
            print(f"| {arm} | mean | " + " | ".join(f"{100 * np.mean([r['per'][k]['acc'] for r in rs]):.1f}"
                                                for k in names) + " | |")
    (res_dir / "table.json").write_text(json.dumps({"name": a.name, "config": cfg.to_dict(), "rows": [
        {"arm": r["arm"], "seed": r["seed"], "acc": {k: r["per"][k]["acc"] for k in names}} for r in results]},
        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
