"""Development run of PARL RL on the model-written swarm (issue #18; docs/swarm_learned.md).

Starts from a probe's SFT model (``tools/ch08_written_probe.py``), trains it as the orchestrator with
:func:`k25mini.swarm.written.rl_written` on training worlds (subagents: a frozen copy of the start model,
greedy), and scores it on the development world before and after (``written_eval.budget_sweep``: swarm and
single agent, errors counted). Writes ``rl.json`` after every iteration and ``model.pt`` at every evaluation,
both atomically, so an interrupted run keeps what it had.

    PYTHONPATH=. python tools/ch08_written_rl.py --init runs/p8a/model.pt --tokenizer runs/p8a/bpe.json \
        --window 700 --max-new-tokens 256 --rows 16 24 --entities 64 --iterations 20 --out runs/rl1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from k25mini.data.bpe import BPETokenizer
from k25mini.experiments.ch08_swarm.learned_seeds import DEV_WORLD_SEEDS, TRAIN_WORLD_SEEDS
from k25mini.experiments.ch08_swarm.written_eval import budget_sweep, load_text_lm, world_tasks
from k25mini.rl import PARLConfig
from k25mini.swarm.train import frozen_copy
from k25mini.swarm.written import WrittenEnv, WrittenPolicy, WrittenRLConfig, rl_written


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _score(main_vlm, sub_vlm, sets, env, tok, budgets) -> dict:
    """The swarm (``main_vlm`` orchestrating, ``sub_vlm`` as every subagent, as in training) and ``main_vlm`` alone
    as the single agent, both greedy."""
    main = WrittenPolicy(main_vlm, max_new_tokens=env.max_new_tokens, tokenizer=tok)
    sub = WrittenPolicy(sub_vlm, max_new_tokens=env.max_new_tokens, tokenizer=tok)
    out = {}
    for swarm in (True, False):
        curve = budget_sweep(sets, main, sub, env, swarm=swarm, budgets=budgets, tokenizer=tok)
        out["swarm" if swarm else "single"] = curve
        for p in curve:
            print(f"  {'swarm ' if swarm else 'single'} budget {p['budget']}: item-F1 {p['wide']['item_f1']:.3f} "
                  f"crit {p['wide']['critical_steps']:.1f} errors {p['errors']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="the SFT model (state dict) to start from")
    ap.add_argument("--tokenizer", required=True, help="its BPE tokenizer file")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--window", type=int, default=700)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--rows", type=int, nargs=2, default=(16, 24), metavar=("MIN", "MAX"))
    ap.add_argument("--entities", type=int, default=64)
    ap.add_argument("--budget", type=int, default=None, help="critical-steps budget of training episodes")
    ap.add_argument("--worlds", type=int, default=200, help="training worlds that tasks are drawn from")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--tasks-per-iter", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--updates", type=int, default=1, help="optimiser steps per iteration")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--eval-tasks", type=int, default=8, help="wide tasks on the development world")
    ap.add_argument("--eval-budgets", nargs="+", default=["none"])
    ap.add_argument("--no-parallel", action="store_true", help="ablation: drop r_parallel (λ1 = 0)")
    ap.add_argument("--no-finish", action="store_true", help="ablation: drop r_finish (λ2 = 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rescore", action="store_true",
                    help="no RL: score --out's model.pt as the orchestrator with --init's model as the subagents "
                         "and replace the 'after' scores of --out/rl.json (runs scored before this option existed "
                         "used the RL'd model as subagents too; those scores are kept as 'after_rl_subagents')")
    a = ap.parse_args()
    if a.worlds < 1 or a.worlds > len(TRAIN_WORLD_SEEDS):
        sys.exit(f"--worlds must be in 1..{len(TRAIN_WORLD_SEEDS)}, got {a.worlds}")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = BPETokenizer.load(a.tokenizer)
    env = WrittenEnv(n_entities=a.entities, min_rows=a.rows[0], max_rows=a.rows[1], window=a.window,
                     max_new_tokens=a.max_new_tokens, max_positions=a.window + a.max_new_tokens + 2,
                     budget=a.budget)
    vlm = load_text_lm(a.init, a.hidden, a.layers, env.max_positions)
    lm = vlm.language_model.train()
    sub_vlm = type(vlm)(frozen_copy(lm))
    sub = WrittenPolicy(sub_vlm, max_new_tokens=env.max_new_tokens, tokenizer=tok)
    budgets = [None if b == "none" else int(b) for b in a.eval_budgets]
    dev = world_tasks(list(DEV_WORLD_SEEDS), env, a.eval_tasks)
    rng = random.Random(a.seed)
    train_worlds = rng.sample(list(TRAIN_WORLD_SEEDS), a.worlds)
    train = world_tasks(train_worlds, env, 1)
    rec: dict = {"args": vars(a), "env": env.__dict__, "train_worlds": train_worlds, "history": []}

    def save_rec() -> None:
        _atomic_write(out / "rl.json", lambda p: p.write_text(json.dumps(rec, indent=1)))

    if a.rescore:
        rec = json.loads((out / "rl.json").read_text())
        if "after_rl_subagents" not in rec and "after" in rec and "after_sub" not in rec:
            rec["after_rl_subagents"] = rec.pop("after")
        rl_vlm = load_text_lm(str(out / "model.pt"), a.hidden, a.layers, env.max_positions)
        print("after RL, frozen start-model subagents", flush=True)
        rec["after"], rec["after_sub"] = _score(rl_vlm, sub_vlm, dev, env, tok, budgets), "frozen start model"
        save_rec()
        return

    print("before RL (development worlds", DEV_WORLD_SEEDS, ")", flush=True)
    t0 = time.time()
    rec["before"] = _score(vlm, sub_vlm, dev, env, tok, budgets)
    rec["before_s"] = round(time.time() - t0, 1)
    save_rec()
    cfg = WrittenRLConfig(iterations=a.iterations, tasks_per_iter=a.tasks_per_iter, group_size=a.group_size,
                          lr=a.lr, updates_per_iter=a.updates, temperature=a.temperature,
                          parl=PARLConfig(use_parallel=not a.no_parallel, use_finish=not a.no_finish))
    t_it = [time.time()]

    def log(row: dict) -> None:
        row = {**row, "seconds": round(time.time() - t_it[0], 1)}
        t_it[0] = time.time()
        rec["history"].append(row)
        print(f"it {int(row['iteration'])}: reward {row['reward']:.3f} item-F1 {row['item_f1']:.3f} "
              f"assigned {row.get('n_assigned', 0):.1f} updated {row['updated']:.0f} ({row['seconds']} s)",
              flush=True)
        save_rec()

    rl_written(lm, train, sub, env, cfg, seed=a.seed, log=log, tokenizer=tok)
    _atomic_write(out / "model.pt", lambda p: torch.save(lm.state_dict(), p))
    print("after RL", flush=True)
    t0 = time.time()
    rec["after"], rec["after_sub"] = _score(vlm, sub_vlm, dev, env, tok, budgets), "frozen start model"
    rec["after_s"] = round(time.time() - t0, 1)
    save_rec()


if __name__ == "__main__":
    main()
