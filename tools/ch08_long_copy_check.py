"""Diagnostic for docs/swarm_learned.md: exact copy accuracy of warm-started models when the copy examples are
preceded by filler pages (0 / 300 / 700 tokens), i.e. at the context lengths of the swarm's traces.
Models are the probes' state dicts (64 wide, 4 layers); paths are the probes' --out folders.

    python tools/ch08_long_copy_check.py /tmp/probe/p5/model.pt ...
"""
import sys

import random

import torch
from dataclasses import replace
torch.set_num_threads(2)
from k25mini.model import K2ForCausalLM
from k25mini.swarm.train import lm_config
from k25mini.swarm.written import _TOK, TextOnlyVLM, _fresh_name, copy_example
from k25mini.rl.rollout import sample
BOS="<|bos|>"
def filler(rng, n_tokens):
    out=""
    while len(out) < n_tokens:
        out += f"<|tool_result_begin|>name {_fresh_name(rng)}; colour red; shape star; region east; weight {rng.randint(1,50)}; speed 3; friend {_fresh_name(rng)}<|tool_result_end|>"
    return out
for path in sys.argv[1:]:
    lm=K2ForCausalLM(replace(lm_config(64,4), max_position_embeddings=1280)); lm.load_state_dict(torch.load(path)); lm.eval()
    for pad in (0, 300, 700):
        rng=random.Random(5); ok={}
        pairs=[]
        for _ in range(90):
            p,t,k=copy_example(rng)
            text=_TOK.decode(p)
            if pad: text=BOS+filler(rng,pad)+text[len(BOS):]
            pairs.append((_TOK.encode(text),t,k))
        got=sample(TextOnlyVLM(lm),[p for p,_,_ in pairs],max_new_tokens=90,temperature=0.0,stops=[_TOK.im_end_id])
        for g,(p,t,k) in zip(got,pairs): ok.setdefault(k,[]).append(g[0].tokens==t)
        print(path.split('/')[-2:], 'pad', pad, {k: round(sum(v)/len(v),2) for k,v in ok.items()}, flush=True)
