"""``python -m k25mini.experiments.ch08_swarm [--recompute] [--workers N]``: single agent vs PARL swarm.

Writes ``results/swarm_<scale>.json``; ``python -m k25mini.report`` puts it into docs/reproduction.md.
"""

from __future__ import annotations

import argparse

from k25mini.experiments.ch08_swarm.report import reproduction_markdown
from k25mini.experiments.ch08_swarm.run import run_experiment

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Agent Swarm / PARL experiments (writes results/swarm_<scale>.json)")
    ap.add_argument("--recompute", action="store_true", help="rerun even when saved results match the config")
    ap.add_argument("--workers", type=int, default=1, help="seeds run in this many processes")
    a = ap.parse_args(argv)
    res = run_experiment(recompute=a.recompute, workers=a.workers)
    print(reproduction_markdown(res))
    print("docs/reproduction.md: run `python -m k25mini.report` to regenerate it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
