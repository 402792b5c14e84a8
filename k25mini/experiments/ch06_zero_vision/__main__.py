"""``python -m k25mini.experiments.ch06_zero_vision [--workers N] [--force] [--arms ...] [--seeds ...]``.

Writes ``results/zero_vision_sft/<scale>/*.json`` (one per arm and seed) and ``results/zero_vision_sft_<scale>.json``
(the summary); ``python -m k25mini.report`` puts the table into docs/reproduction.md.
"""

from __future__ import annotations

import argparse

from k25mini.experiments.ch06_zero_vision.config import ARMS, config_for
from k25mini.experiments.ch06_zero_vision.report import section
from k25mini.experiments.ch06_zero_vision.run import run_experiment

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Chapter 06: zero-vision SFT with a sandboxed code tool")
    ap.add_argument("--workers", type=int, default=1, help="arm/seed runs in this many processes (1 thread each)")
    ap.add_argument("--nproc", type=int, default=1,
                    help="each SFT data parallel on this many processes (torchrun -m k25mini.train --job)")
    ap.add_argument("--force", action="store_true", help="rerun even when saved results match the config")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: K25_SCALE)")
    a = ap.parse_args(argv)
    over = {"arms": tuple(a.arms)}
    if a.seeds:
        over["seeds"] = tuple(a.seeds)
    cfg = config_for(a.scale, **over)
    run_experiment(cfg, workers=a.workers, force=a.force, nproc=a.nproc)
    print(section(scale=cfg.scale))
    print("docs/reproduction.md: run `python -m k25mini.report` to regenerate it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
