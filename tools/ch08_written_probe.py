"""Development probe for the model-written swarm (issue #18; docs/swarm_learned.md).

Warm-starts a text-only nano K2 in up to two stages and then runs it greedily, as the orchestrator and as the
subagents, on a development world. The stages are: (1) a copy warm-up on synthetic name lists
(``copy_warmup``), which can be skipped or loaded from ``--init``; (2) SFT on ``WrittenTeacher`` traces from
training worlds 100.. (``sft_written``). The development world (seed 7 by default) is never a final
evaluation seed.

    python tools/ch08_written_probe.py --layers 3 --copy-steps 3000 --sft-steps 700 --worlds 480 --out /tmp/p
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from k25mini.data.bpe import BPETokenizer
from k25mini.model import K2ForCausalLM
from k25mini.swarm import make_swarm_tasks, score_answer
from k25mini.swarm.train import lm_config
from k25mini.swarm.written import (
    TextOnlyVLM,
    WrittenEnv,
    WrittenPolicy,
    copy_accuracy,
    copy_example,
    copy_warmup,
    run_written,
    sft_sequences,
    sft_written,
    teacher_episodes,
    train_trace_tokenizer,
)
from k25mini.world import World

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ch08_long_copy_check import BOS, TOK, filler  # noqa: E402


def filler_example(rng: random.Random, n: int, tok=TOK) -> tuple[list[int], list[bool]]:
    """A copy example behind ``n`` characters of filler entity pages (none when ``n`` is 0)."""
    p, t, _ = copy_example(rng, tok)
    text = BOS + filler(rng, n) + tok.decode(p)[len(BOS):] if n else tok.decode(p)
    ids = tok.encode(text)
    return ids + t, [False] * len(ids) + [True] * len(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--init", default=None, help="a state dict to start from (e.g. a copy warm-up)")
    ap.add_argument("--copy-steps", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=700)
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--copy-mix", type=int, default=0, help="copy examples added to the SFT pool (keeps the skill)")
    ap.add_argument("--copy-filler", type=int, default=0,
                    help="copy-mix examples follow 0..N characters of filler pages (a third none), as in "
                         "tools/ch08_filler_copy_probe.py; 0: no filler")
    ap.add_argument("--scratchpad", action="store_true", help="teacher notes what is left before each browse")
    ap.add_argument("--worlds", type=int, default=480, help="training worlds 100, 101, ...")
    ap.add_argument("--tasks-per-world", type=int, default=1)
    ap.add_argument("--deep-per-world", type=int, default=0)
    ap.add_argument("--eval-world", type=int, default=7)
    ap.add_argument("--eval-tasks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (two probes side by side: 1 each)")
    ap.add_argument("--window", type=int, default=None, help="context window in tokens (default: WrittenEnv's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per step (default: WrittenEnv's)")
    ap.add_argument("--min-rows", type=int, default=None, help="rows of the smallest wide task")
    ap.add_argument("--max-rows", type=int, default=None, help="rows of the largest wide task")
    ap.add_argument("--entities", type=int, default=None, help="entities per world (default: WrittenEnv's)")
    ap.add_argument("--bpe", type=int, default=0,
                    help="train a BPE tokenizer of this vocabulary size on the SFT worlds' teacher traces (saved as "
                         "bpe.json) and use it everywhere; windows then count BPE tokens; 0: bytes")
    ap.add_argument("--tokenizer", default=None,
                    help="a BPE tokenizer file to use instead of training one (e.g. the bpe.json of the probe that "
                         "--init continues: token ids must match the model's)")
    ap.add_argument("--out", required=True, help="folder for model.pt and probe.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {k: v for k, v in (("window", a.window), ("max_new_tokens", a.max_new_tokens), ("min_rows", a.min_rows),
                                ("max_rows", a.max_rows), ("n_entities", a.entities)) if v is not None}
    if "window" in sizes or "max_new_tokens" in sizes:  # positions: exactly what the window and one step need
        base = WrittenEnv()
        sizes["max_positions"] = (sizes.get("window", base.window) + sizes.get("max_new_tokens", base.max_new_tokens)
                                  + 2)
    env = WrittenEnv(**sizes)
    tok = None
    if a.tokenizer:
        tok = BPETokenizer.load(a.tokenizer)
        tok.save(out / "bpe.json")
    elif a.bpe:
        tok = train_trace_tokenizer(env, range(100, 100 + a.worlds), a.bpe, tasks_per_world=a.tasks_per_world,
                                    deep_per_world=a.deep_per_world, scratchpad=a.scratchpad)
        tok.save(out / "bpe.json")
        print("bpe", len(tok.merges), "merges", flush=True)
    torch.manual_seed(a.seed)
    lm = K2ForCausalLM(replace(lm_config(a.hidden, a.layers), max_position_embeddings=env.max_positions,
                               vocab_size=max(512, tok.vocab_size if tok else 0)))
    if a.init:
        lm.load_state_dict(torch.load(a.init))
    rec: dict = {"args": vars(a), "env": env.__dict__}
    t0 = time.time()
    if a.copy_steps:
        losses = copy_warmup(lm, a.copy_steps, seed=a.seed, tokenizer=tok,
                             log=lambda s, v: print("copy", s, round(v, 4), flush=True) if s % 100 == 0 else None)
        rec["copy_loss_last"] = losses[-1]
    rec["copy_accuracy"] = copy_accuracy(TextOnlyVLM(lm), tokenizer=tok)
    rec["copy_s"] = round(time.time() - t0, 1)
    print("copy accuracy", rec["copy_accuracy"], flush=True)
    seqs = []
    for eps in teacher_episodes(env, range(100, 100 + a.worlds), tasks_per_world=a.tasks_per_world,
                                deep_per_world=a.deep_per_world, scratchpad=a.scratchpad, tokenizer=tok):
        seqs += sft_sequences(eps, max_len=env.max_positions)
    rng = random.Random(a.seed + 1)
    for _ in range(a.copy_mix):
        if a.copy_filler:
            n = 0 if rng.random() < 1 / 3 else rng.randint(1, a.copy_filler)
            ids, lab = filler_example(rng, n, tok or TOK)
            seqs.append((ids, lab))
            continue
        p, t, _ = copy_example(rng, tok)
        seqs.append((p + t, [False] * len(p) + [True] * len(t)))
    rec["sft_sequences"], rec["sft_tokens"] = len(seqs), sum(len(i) for i, _ in seqs)
    t0 = time.time()
    if a.sft_steps:
        losses = sft_written(lm, seqs, a.sft_steps, seed=a.seed, lr=a.sft_lr,
                             log=lambda s, v: print("sft", s, round(v, 4), flush=True) if s % 25 == 0 else None)
        rec["sft_loss_last50"] = sum(losses[-50:]) / len(losses[-50:])
    rec["sft_s"] = round(time.time() - t0, 1)
    rec["copy_accuracy_after_sft"] = copy_accuracy(TextOnlyVLM(lm), tokenizer=tok)
    torch.save(lm.state_dict(), out / "model.pt")
    lm.eval()
    w = World(seed=a.eval_world, n_entities=env.n_entities)
    tasks = make_swarm_tasks(w, a.eval_tasks, 0, min_rows=env.min_rows, max_rows=env.max_rows)
    for swarm in (True, False):
        pol = WrittenPolicy(TextOnlyVLM(lm), max_new_tokens=env.max_new_tokens, tokenizer=tok)
        eps, _ = run_written(w, tasks, pol, pol, env, swarm=swarm, tokenizer=tok)
        f1 = [score_answer(t, e.answer)["item_f1"] for t, e in zip(tasks, eps)]
        errs: dict[str, int] = {}
        for e in eps:
            for k, v in e.errors.items():
                errs[k] = errs.get(k, 0) + v
        key = "swarm" if swarm else "single"
        rec[key] = {"item_f1": f1, "mean_f1": sum(f1) / len(f1), "critical_steps": [e.critical_steps for e in eps],
                    "assigned": [e.n_assigned for e in eps], "errors": errs,
                    "steps": sum(len(e.steps) for e in eps),
                    "example": [(s.role, s.text[:200], (s.observations or [""])[0][:100]) for s in eps[0].steps[:14]],
                    "answer": eps[0].answer}
        print(key, "F1", round(rec[key]["mean_f1"], 3), "crit", rec[key]["critical_steps"], "assigned",
              rec[key]["assigned"], "errors", errs, flush=True)
    (out / "probe.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
