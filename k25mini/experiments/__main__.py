"""``python -m k25mini.experiments``: list the registered experiments, or reproduce them all.

    python -m k25mini.experiments list
    python -m k25mini.experiments reproduce --workers 2 [--only fusion_ablation swarm]

``reproduce`` runs each experiment's full multi-seed command (``python -m <package> ...``) one after the other,
then regenerates docs/reproduction.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from k25mini.experiments.registry import EXPERIMENTS, get


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the experiments registry")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    rp = sub.add_parser("reproduce")
    rp.add_argument("--workers", type=int, default=2)
    rp.add_argument("--only", nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for e in EXPERIMENTS:
            cmd = (f"python -m {e.package} " + " ".join(e.reproduce).format(workers=2)) if e.reproduce else "—"
            print(f"{e.chapter}  {e.name:<16} {e.title:<45} {cmd}")
        return 0
    if a.workers < 1:
        ap.error(f"--workers must be >= 1, got {a.workers}")
    try:
        todo = [get(n) for n in a.only] if a.only else [e for e in EXPERIMENTS if e.reproduce]
    except ValueError as err:
        ap.error(f"--only: {err}")
    for e in todo:
        if e.reproduce is None:
            ap.error(f"experiment {e.name!r} has no multi-seed run")
        cmd = [sys.executable, "-m", e.package, *(x.format(workers=a.workers) for x in e.reproduce)]
        print(f"[reproduce] {e.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd)
        print(f"[reproduce] {e.name}: exit {rc} after {(time.time() - t0) / 60:.1f} min", flush=True)
        if rc != 0:
            return rc
    return subprocess.call([sys.executable, "-m", "k25mini.report"])


if __name__ == "__main__":
    raise SystemExit(main())
