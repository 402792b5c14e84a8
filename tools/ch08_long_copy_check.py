"""Diagnostic for docs/swarm_learned.md: exact copy accuracy of warm-started models when the copy examples are
preceded by filler entity pages (0 / 300 / 700 tokens), i.e. at the context lengths of the swarm's traces.
Models are the probes' state dicts (64 wide, 4 layers), e.g. ``model.pt`` in a probe's ``--out`` folder.

    python tools/ch08_long_copy_check.py /tmp/probe/p5/model.pt ... [--tokenizer bpe.json] [--fillers 0 300 700]
"""

from __future__ import annotations

import argparse
import random

import torch

from k25mini.data.bpe import BPETokenizer
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch08_swarm.written_eval import load_text_lm
from k25mini.rl.rollout import sample
from k25mini.swarm.written import copy_example

TOK = Tokenizer()
BOS = "<|bos|>"


def _name(rng: random.Random) -> str:
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(2)).capitalize()


def filler(rng: random.Random, n_chars: int) -> str:
    """Entity pages as tool results until at least ``n_chars`` characters (one token per character here)."""
    out = ""
    while len(out) < n_chars:
        page = f"name {_name(rng)}; colour red; shape star; weight {rng.randint(1, 50)}; friend {_name(rng)}"
        out += f"<|tool_result_begin|>{page}<|tool_result_end|>"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="state dicts (a probe's model.pt)")
    ap.add_argument("--tokenizer", default=None, help="the probe's bpe.json (default: bytes)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--fillers", type=int, nargs="+", default=[0, 300, 700],
                    help="filler lengths in tokens of the tokenizer (bytes: characters)")
    ap.add_argument("--n", type=int, default=90)
    a = ap.parse_args()
    tok = BPETokenizer.load(a.tokenizer) if a.tokenizer else TOK
    torch.set_num_threads(2)
    for path in a.models:
        vlm = load_text_lm(path, a.hidden, a.layers, max(a.fillers) + 400)
        for pad in a.fillers:
            rng = random.Random(5)
            pairs = []
            for _ in range(a.n):
                p, t, kind = copy_example(rng, tok)
                text = tok.decode(p)
                if pad:
                    fill = ""
                    while len(tok.encode(fill)) < pad:
                        fill += filler(rng, 40)
                    text = BOS + fill + text[len(BOS):]
                pairs.append((tok.encode(text), t, kind))
            got = sample(vlm, [p for p, _, _ in pairs], max_new_tokens=90, temperature=0.0,
                         stops=[tok.im_end_id])
            ok: dict[str, list[bool]] = {}
            for g, (_, t, kind) in zip(got, pairs):
                ok.setdefault(kind, []).append(g[0].tokens == t)
            print(path, "filler", pad, {k: round(sum(v) / len(v), 2) for k, v in sorted(ok.items())}, flush=True)


if __name__ == "__main__":
    main()
