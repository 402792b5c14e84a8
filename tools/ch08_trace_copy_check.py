"""Diagnostic for docs/swarm_learned.md: teacher-forced accuracy of a written-swarm probe's model on teacher traces,
on training worlds against fresh worlds, for all of the agents' own tokens and for the name tokens alone.

A name token is one whose text starts with a capital letter or that follows ``entity/`` (a page id). Equal
accuracy on training and fresh worlds means the model has not memorised its traces; low accuracy on name tokens
means it does not copy names inside a trace.

    python tools/ch08_trace_copy_check.py /work/land/runs/ch08_bpe/p7c --window 350 --new 128 [--scratchpad]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from k25mini.data.bpe import BPETokenizer
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch08_swarm.written_eval import load_text_lm
from k25mini.swarm import make_swarm_tasks
from k25mini.swarm.written import WrittenEnv, WrittenTeacher, pad_written, run_written, sft_sequences
from k25mini.world import World


def accuracy(lm: torch.nn.Module, tok: Tokenizer, env: WrittenEnv, seeds: range, scratchpad: bool
             ) -> tuple[float, float, int]:
    """(accuracy on own tokens, accuracy on name tokens, number of name tokens) over one wide task per world,
    swarm and single."""
    seqs = []
    for ws in seeds:
        w = World(seed=ws, n_entities=env.n_entities)
        t = WrittenTeacher(seed=ws, scratchpad=scratchpad, tokenizer=tok)
        for swarm in (True, False):
            eps, _ = run_written(w, make_swarm_tasks(w, 1, 0, min_rows=env.min_rows, max_rows=env.max_rows), t, t,
                                 env, swarm=swarm, tokenizer=tok)
            seqs += sft_sequences(eps)
    ok = tot = name_ok = name_tot = 0
    for i in range(0, len(seqs), 8):
        ids, lab = pad_written(seqs[i:i + 8])
        with torch.no_grad():
            pred = lm(ids)[:, :-1].argmax(-1)
        tgt = lab[:, 1:]
        own = tgt != -100
        ok += int(((pred == tgt) & own).sum())
        tot += int(own.sum())
        for b, j in own.nonzero().tolist():
            text = tok.decode([int(tgt[b, j])])
            if text.strip()[:1].isupper() or tok.decode([int(ids[b, j])]).endswith("entity/"):
                name_tot += 1
                name_ok += int(pred[b, j] == tgt[b, j])
    return ok / tot, name_ok / max(name_tot, 1), name_tot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", help="a tools/ch08_written_probe.py --out folder (model.pt, bpe.json if any)")
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--new", type=int, required=True, help="max new tokens per step")
    ap.add_argument("--scratchpad", action="store_true")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--rows", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="rows of the wide tasks (default: WrittenEnv's)")
    ap.add_argument("--entities", type=int, default=None, help="entities per world (default: WrittenEnv's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = Path(a.probe)
    tok = BPETokenizer.load(d / "bpe.json") if (d / "bpe.json").exists() else Tokenizer()
    sizes = {} if a.rows is None else {"min_rows": a.rows[0], "max_rows": a.rows[1]}
    if a.entities is not None:
        sizes["n_entities"] = a.entities
    env = WrittenEnv(window=a.window, max_new_tokens=a.new, max_positions=a.window + a.new + 2, **sizes)
    lm = load_text_lm(str(d / "model.pt"), a.hidden, a.layers,
                      4 * env.max_positions).language_model  # chains may outlast one window
    for name, seeds in (("training worlds", range(100, 100 + a.worlds)),
                        ("fresh worlds", range(3000, 3000 + a.worlds))):
        acc, name_acc, n = accuracy(lm, tok, env, seeds, a.scratchpad)
        print(f"{name} {seeds.start}-{seeds.stop - 1}: own tokens {acc:.3f}, name tokens {name_acc:.3f} ({n})",
              flush=True)


if __name__ == "__main__":
    main()
