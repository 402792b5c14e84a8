"""Chapter 07 Toggle diagnostic (train split only, never the frozen held-out questions): RL without length control
from the worked-solution SFT base, greedy accuracy and tokens on 256 train-split questions every 10 iterations.

    python tools/ch07_toggle_dev.py --lr 3e-4 --optimizer muonclip --seed 0 [--mode off] [--runs-dir runs/ch07]

It asks why greedy accuracy falls below the SFT base in every mode of the committed Toggle run: is it the size of
the update (lr, Muon's normalised steps) or RL on this reward itself? docs/rl.md quotes it.
"""

from __future__ import annotations

import argparse
import json

import torch

from k25mini.experiments.ch07_clipped_rl.config import config_for as rl_config
from k25mini.experiments.ch07_clipped_rl.toggle import (
    _load,
    budget_for,
    measure,
    toggle_base,
    toggle_config,
    train_set,
)
from k25mini.optim import build_optimizer
from k25mini.rl.iteration import rl_iteration
from k25mini.rl.toggle import Toggle
from k25mini.sft.worked import worked_reward
from k25mini.world import World
from k25mini.world.rng import rng_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--optimizer", default="muonclip", choices=("muonclip", "adamw"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="off", choices=("off", "always", "toggle"))
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--runs-dir", default="runs/ch07")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = toggle_config("cpu")
    rl = rl_config("cpu")
    w = World(0, scale="cpu")
    dev = [w.sample("arith", "train", rng_for(0, "ch07-toggle-dev", j)) for j in range(256)]
    torch.manual_seed(a.seed)
    model = _load(toggle_base(cfg, a.runs_dir))
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    tg = Toggle(budget_for(cfg, model, a.seed)["budgets"], lam=cfg.lam, m=cfg.m, mode=a.mode)
    opt = build_optimizer(model, a.optimizer, lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    rows = [{"it": 0, **measure(model, dev, max_new_tokens=cfg.max_new_tokens)}]
    print(rows[-1], flush=True)
    for t in range(a.iterations):
        st = rl_iteration(model, opt, train_set(cfg, "ch07-toggle-rl", a.seed, t, cfg.items_per_iter), k=cfg.k,
                          reward_fn=worked_reward, shape=lambda key, r, n, t=t: tg.shape(t, key, r, n),
                          loss=rl.loss, loss_kwargs=rl.loss_kwargs(), max_new_tokens=cfg.max_new_tokens, generator=gen)
        if (t + 1) % 10 == 0:
            rows.append({"it": t + 1, "train_reward": st["reward"],
                         **measure(model, dev, max_new_tokens=cfg.max_new_tokens)})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items() if k != "styles"},
                  flush=True)
    out = {"args": vars(a), "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
