"""``python -m k25mini.experiments.ch07_clipped_rl [--workers N] [--force] [--seeds ...] [--scale ...] [--part ...]``.

Table 2 writes ``results/vision_rl/<scale>/{before,s<seed>}.json`` and ``results/vision_rl_<scale>.json``; the
mismatch ablation ``results/rl_mismatch/<scale>/<arm>-s<seed>.json`` and ``results/rl_mismatch_<scale>.json``; the
Toggle experiment ``results/rl_toggle/<scale>/{before,<mode>-s<seed>}.json`` and ``results/rl_toggle_<scale>.json``.
``python -m k25mini.report`` puts both into docs/reproduction.md.
"""

from __future__ import annotations

import argparse

from k25mini.experiments.ch07_clipped_rl.config import config_for
from k25mini.experiments.ch07_clipped_rl.mismatch import mismatch_config, run_mismatch
from k25mini.experiments.ch07_clipped_rl.report import section
from k25mini.experiments.ch07_clipped_rl.run import run_experiment
from k25mini.experiments.ch07_clipped_rl.toggle import run_toggle, toggle_config

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Chapter 07: vision-only RL from chapter 06's checkpoint (Table 2)")
    ap.add_argument("--workers", type=int, default=1, help="seed runs in this many processes (1 thread each)")
    ap.add_argument("--force", action="store_true", help="rerun even when saved results match the config")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: K25_SCALE)")
    ap.add_argument("--runs-dir", default=None, help="where base checkpoints live or are trained (default runs/)")
    ap.add_argument("--nproc", type=int, default=1,
                    help="the toggle part's SFT base data parallel on this many processes (torchrun -m k25mini.train)")
    ap.add_argument("--part", choices=("all", "table2", "mismatch", "toggle"), default="all")
    a = ap.parse_args(argv)
    over = {"seeds": tuple(a.seeds)} if a.seeds else {}
    cfg = config_for(a.scale, **over)
    if a.part in ("all", "table2"):
        run_experiment(cfg, runs_dir=a.runs_dir, workers=a.workers, force=a.force)
    if a.part in ("all", "mismatch"):
        run_mismatch(mismatch_config(a.scale, **over), runs_dir=a.runs_dir, workers=a.workers, force=a.force)
    if a.part in ("all", "toggle"):
        run_toggle(toggle_config(a.scale, **over), runs_dir=a.runs_dir, workers=a.workers, force=a.force,
                   nproc=a.nproc)
    print(section(scale=cfg.scale))
    print("docs/reproduction.md: run `python -m k25mini.report` to regenerate it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
