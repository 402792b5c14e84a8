"""Time to build every training corpus (and the six eval suites) of the toy world from scratch.

    K25_SCALE=cpu python benchmarks/bench_world.py        # acceptance: < 120 s on a 2-core machine

Builds into a temporary cache directory (the real data/cache/ is left alone) and prints one line per
corpus plus the total.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from k25mini.data import build_corpus, eval_dataset
from k25mini.scale import current_scale
from k25mini.world import CORPORA, SUITES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: K25_SCALE, else cpu)")
    args = ap.parse_args()
    scale = args.scale or current_scale()
    import datasets

    datasets.disable_progress_bars()
    rows = images = 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for name in CORPORA:
            t = time.perf_counter()
            ds = build_corpus(name, args.seed, scale, cache_dir=tmp, force=True)
            n_media = sum(len(m) for m in ds["media"])
            rows, images = rows + len(ds), images + n_media
            print(f"{name:16s} {len(ds):6d} rows {n_media:6d} media  {time.perf_counter() - t:6.2f} s", flush=True)
        t_corpora = time.perf_counter() - t0
        t = time.perf_counter()
        n_eval = sum(len(eval_dataset(s, args.seed, scale, cache_dir=tmp, force=True)) for s in SUITES)
        t_eval = time.perf_counter() - t
    print(f"scale={scale} seed={args.seed}: {rows} rows, {images} images/videos")
    print(
        f"all training corpora: {t_corpora:.1f} s   eval suites ({n_eval} items): {t_eval:.1f} s   "
        f"total: {t_corpora + t_eval:.1f} s  (budget 120 s)"
    )


if __name__ == "__main__":
    main()
