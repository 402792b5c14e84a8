"""Development probe for docs/swarm_learned.md: continue a copy warm-up with filler entity pages (0-800 characters,
drawn per example) before each copy example, so copies happen at the positions of the swarm's traces; then
report exact copy accuracy behind 0 / 300 / 700 characters of filler (as tools/ch08_long_copy_check.py).

    python tools/ch08_filler_copy_probe.py INIT_STATE_DICT OUT_STATE_DICT STEPS [ZERO_SHARE] [THREADS]

ZERO_SHARE (default 0): the share of examples with no filler at all, so that copying at the start of a context
is trained too (the first run, without it, lost copying there). THREADS (default 2): torch threads.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import replace

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.model import K2ForCausalLM
from k25mini.swarm.train import lm_config
from k25mini.swarm.written import copy_example, pad_written

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ch08_long_copy_check import BOS, filler  # noqa: E402

TOK = Tokenizer()


def example(rng: random.Random, zero_share: float = 0.0) -> tuple[list[int], list[bool]]:
    p, t, _ = copy_example(rng)
    n = 0 if zero_share and rng.random() < zero_share else rng.randint(0, 800)  # no extra draw at share 0
    text = BOS + filler(rng, n) + TOK.decode(p)[len(BOS):] if n else TOK.decode(p)
    ids = TOK.encode(text)
    return ids + t, [False] * len(ids) + [True] * len(t)


def main() -> None:
    init, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    zero_share = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if not 0.0 <= zero_share <= 1.0:
        raise SystemExit(f"ZERO_SHARE must be in [0, 1], got {zero_share}")
    torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 2)
    lm = K2ForCausalLM(replace(lm_config(64, 4), max_position_embeddings=1280))
    lm.load_state_dict(torch.load(init))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3, weight_decay=0.0)
    rng = random.Random(7)
    t0 = time.time()
    for step in range(steps):
        ids, labels = pad_written([example(rng, zero_share) for _ in range(16)])
        loss = lm.loss(ids, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(step, round(loss.item(), 4), round(time.time() - t0), flush=True)
    torch.save(lm.state_dict(), out)


if __name__ == "__main__":
    main()
