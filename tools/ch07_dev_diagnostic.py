"""Chapter 07 diagnostic (train split only, never held-out items): the six suites every 25 RL iterations.

    python tools/ch07_dev_diagnostic.py --lr 3e-4 --seed 0 [--runs-dir runs/ch07] [--out /tmp/diag.json]

Runs the Table 2 recipe (chapter 07's cpu config, one seed) and scores 64 train-split items per suite, tagged
``ch07-dev``, greedily under the same tool-call ban, before RL and every 25 iterations. docs/rl.md quotes it.
"""

from __future__ import annotations

import argparse
import json

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch07_clipped_rl.config import SUITES, config_for
from k25mini.experiments.ch07_clipped_rl.run import _ban, _load, base_checkpoint, evaluate, train_items
from k25mini.optim import build_optimizer
from k25mini.rl.iteration import rl_iteration
from k25mini.world import World
from k25mini.world.rng import rng_for
from k25mini.world.skills import SUITE_SKILLS


def dev_items(n: int = 64) -> dict[str, list]:
    w = World(0, scale="cpu")
    return {s: [w.sample(SUITE_SKILLS[s][i % len(SUITE_SKILLS[s])], "train", rng_for(0, "ch07-dev", s, i))
                for i in range(n)] for s in SUITES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--runs-dir", default="runs/ch07")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config_for("cpu", lr=a.lr)
    dev = dev_items()
    torch.manual_seed(a.seed)
    model = _load(base_checkpoint(cfg, a.runs_dir))
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, cfg.optimizer, lr=cfg.lr)
    gen, tok, rows = torch.Generator().manual_seed(a.seed), Tokenizer(), []

    def score(it: int) -> None:
        model.eval()
        e = evaluate(cfg, model, dev)
        model.train()
        rows.append({"it": it, **{s: round(100 * e[s]["acc"], 1) for s in SUITES}})
        print(rows[-1], flush=True)

    score(0)
    for it in range(cfg.iterations):
        rl_iteration(model, opt, train_items(cfg, a.seed, it), k=cfg.k, loss=cfg.loss, loss_kwargs=cfg.loss_kwargs(),
                     max_new_tokens=cfg.max_new_tokens, generator=gen, ban=_ban(cfg, tok))
        if (it + 1) % a.every == 0:
            score(it + 1)
    out = a.out or f"/tmp/diag07_lr{a.lr}_s{a.seed}.json"
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
