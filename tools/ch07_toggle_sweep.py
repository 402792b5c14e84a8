"""Chapter 07 Toggle design sweep on TRAIN-split questions only (never the frozen held-out ones).

    python tools/ch07_toggle_sweep.py --out /tmp/toggle-sweep task:off:50:4:0.25:0:60 task:toggle:35:10:0.25:0:60 ...
    python tools/ch07_toggle_sweep.py --out /tmp/toggle-sweep --summary

Each spec is ``scope:mode:rho:m:lam:seed[:iterations]``. A run is :func:`run_mode` of the experiment with the
experiment's own code, except that its evaluation set is swapped for 256 train-split questions (rng tag
``ch07-toggle-dev2``): the module's ``eval_set`` is replaced before any run, so the frozen questions are never
generated. ``--summary`` prints, per design, each seed's change of greedy response tokens and accuracy at the
last iteration against ``off`` of the same scope, seed and iteration count. Session 16 chose rho / m /
iterations with it (docs/rl.md, "How the design was chosen").
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

import k25mini.experiments.ch07_clipped_rl.toggle as T
from k25mini.world import World
from k25mini.world.rng import rng_for

DEV_TAG = "ch07-toggle-dev2"


def dev_set(cfg: T.ToggleConfig) -> list:
    w = World(0, scale=cfg.scale)
    return [w.sample(T.SKILL, "train", rng_for(w.seed, DEV_TAG, j)) for j in range(cfg.eval_items)]


def parse_spec(spec: str) -> dict:
    parts = spec.split(":")
    if len(parts) not in (6, 7):
        raise SystemExit(f"spec must be scope:mode:rho:m:lam:seed[:iterations], got {spec!r}")
    scope, mode, rho, m, lam, seed = parts[:6]
    return {"scope": scope, "mode": mode, "rho": float(rho), "m": int(m), "lam": float(lam), "seed": int(seed),
            "iterations": int(parts[6]) if len(parts) == 7 else 40}


def run(specs: list[str], out: Path, runs_dir: Path) -> None:
    torch.set_num_threads(1)
    T.eval_set = dev_set  # every run below evaluates on train-split questions only
    base = T.toggle_base(T.toggle_config("cpu"), runs_dir)
    prompt_budgets: dict[float, dict] = {}
    with (out / "runs.jsonl").open("a") as log:
        for spec in specs:
            s = parse_spec(spec)
            cfg = T.toggle_config("cpu", rho=s["rho"], m=s["m"], lam=s["lam"], iterations=s["iterations"],
                                  eval_every=10)
            budgets = None
            if s["scope"] == "prompt":
                if s["rho"] not in prompt_budgets:
                    prompt_budgets[s["rho"]] = T.prompt_budgets(cfg, T._load(base))
                budgets = prompt_budgets[s["rho"]]
            r = T.run_mode(cfg, s["mode"], s["seed"], base, results_dir=out / spec.replace(":", "_"), force=True,
                           scope=s["scope"], budgets=budgets, log=lambda *_: None)
            row = {"spec": spec, **s, "evals": [(e["it"], e["acc"], e["tokens"]) for e in r["evals"]]}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps({k: row[k] for k in ("spec", "evals")}), flush=True)


def summary(out: Path) -> None:
    rows = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["scope"], r["mode"], r["rho"], r["m"], r["lam"], r["seed"], r["iterations"])] = r["evals"][-1]
    table = defaultdict(list)
    for (scope, mode, rho, m, lam, seed, its), (_, acc, tok) in sorted(rows.items()):
        off = next((v for k, v in rows.items() if k[0] == scope and k[1] == "off" and k[5] == seed and k[6] == its),
                   None)
        if mode == "off" or off is None:
            continue
        table[(scope, mode, rho, m, lam, its)].append((seed, 100 * (tok / off[2] - 1), 100 * (acc - off[1])))
    for k, v in sorted(table.items()):
        per = ", ".join(f"s{s} {t:+.1f} % {a:+.1f}" for s, t, a in v)
        mt, ma = sum(x[1] for x in v) / len(v), sum(x[2] for x in v) / len(v)
        print(f"{k[0]:6s} {k[1]:6s} rho {k[2]:g} m {k[3]} lam {k[4]:g} it {k[5]}: {per} | mean {mt:+.1f} % {ma:+.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--runs-dir", default="runs", type=Path)
    ap.add_argument("--summary", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.specs:
        run(a.specs, a.out, a.runs_dir)
    if a.summary:
        summary(a.out)


if __name__ == "__main__":
    main()
