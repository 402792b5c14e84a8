"""Does a chapter-05 model read *where* an object is? Locate answers split into exact / transposed / other.

    K25_SCALE=cpu python tools/ch05_locate_confusion.py runs/fusion/cpu/<key>/joint/early-s0 [...] [--items 120]

Scores greedy answers to train-side dev locate items (never held-out ones; tag ``ch05-dev-locate``) of each
joint-run checkpoint: exact cell, the transposed cell (``col row`` for ``row col``: a coordinate-order confusion
with the box answers' ``x0 y0 x1 y1``), and how often the row and the column alone are right. Chance: 1/9 for a
cell, 1/3 for a row or column. Used in docs/vision_investigation.md §7.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import config_for
from k25mini.experiments.ch05_fusion.stages import new_model
from k25mini.pretrain.evaluate import greedy_answer
from k25mini.train import load_weights
from k25mini.world import World
from k25mini.world.rng import rng_for


def confusion(checkpoint: str, items: list, seed: int = 0) -> dict[str, float]:
    cfg = config_for()
    model = new_model(cfg, seed)
    load_weights(model, checkpoint)
    model.eval()
    tok, c = Tokenizer(), Counter()
    for it in items:
        gold, got = it.answer.split(), greedy_answer(model, tok, it, 8).split()
        c["exact" if got == gold else "transposed" if got == gold[::-1] else "other"] += 1
        c["row"] += len(got) == 2 and got[0] == gold[0]
        c["col"] += len(got) == 2 and got[1] == gold[1]
    return {k: 100 * c[k] / len(items) for k in ("exact", "transposed", "other", "row", "col")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--items", type=int, default=120)
    a = ap.parse_args()
    torch.set_num_threads(1)
    world = World(0, scale=config_for().scale)
    items = [world.sample("locate", "train", rng_for(world.seed, "ch05-dev-locate", i)) for i in range(a.items)]
    for ck in a.checkpoints:
        r = confusion(ck, items)
        print(f"{ck}: " + ", ".join(f"{k} {v:.1f} %" for k, v in r.items()))


if __name__ == "__main__":
    main()
