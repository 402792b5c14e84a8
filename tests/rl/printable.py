"""A random ``nano`` VLM whose lm_head is scaled up over printable ASCII, ``<|eos|>`` and newline: its samples and
greedy answers are short, varied strings instead of runs of special or replacement tokens. Shared by the rollout,
RL-iteration and batched-greedy tests."""

from __future__ import annotations

import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.evaluate import NEWLINE


def printable_model(seed: int = 0, gain: float = 3.0) -> K25ForConditionalGeneration:
    torch.manual_seed(seed)
    m = K25ForConditionalGeneration(preset("nano"))
    w = m.language_model.lm_head.weight
    with torch.no_grad():
        keep = torch.zeros(w.shape[0], dtype=torch.bool)
        keep[32:127] = True
        keep[[NEWLINE, Tokenizer().eos_id]] = True
        w.mul_(keep[:, None] * gain)
    return m
