"""Score a K2.5 model on the world's eval suites by greedy generation of short answers.

Each item's prompt (``<|bos|> prompt + " "``, media expanded) is prefilled once into an MLA cache with the
vision embeddings fused in, then tokens are decoded greedily until ``<|eos|>``, a newline or
``max_new_tokens``. The decoded text is scored by the world's exact scorer (:func:`k25mini.world.score`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.world import Item, score

__all__ = ["greedy_answer", "evaluate_items", "teacher_forced_exact", "NEWLINE"]

NEWLINE = 10  # byte id of "\n": answers are one line


@torch.no_grad()
def greedy_answer(model, tok: Tokenizer, item: Item, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to ``item`` (a ``K25ForConditionalGeneration``)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    try:
        lm = model.language_model
        dev = lm.lm_head.weight.device
        ids = torch.tensor([prompt_ids(item, tok, model.media_token_counts)], device=dev)
        cache = lm.new_kv_cache()
        logits = lm(inputs_embeds=model.embed(ids, item.images or None), kv_cache=cache)[:, -1]
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits.argmax(-1))
            if nxt in (tok.eos_id, NEWLINE):
                break
            out.append(nxt)
            logits = lm(torch.tensor([[nxt]], device=dev), kv_cache=cache)[:, -1]
        return tok.decode(out, skip_special=True).strip()
    finally:
        model.train(was_training)


def evaluate_items(model, tok: Tokenizer, items: Sequence[Item], max_new_tokens: int = 24) -> tuple[float, list[float]]:
    """Mean score over ``items`` and the per-item scores (in order)."""
    if not items:
        raise ValueError("items must be a non-empty sequence of eval items")
    scores = [float(score(it, greedy_answer(model, tok, it, max_new_tokens))) for it in items]
    return sum(scores) / len(scores), scores


@torch.no_grad()
def teacher_forced_exact(model, tok: Tokenizer, items: Sequence[Item], batch_size: int = 64) -> float:
    """Share of items whose gold answer *and* the closing ``<|eos|>`` are all argmax predictions when the
    model is fed the gold prefix - equal to greedy exact match, at the cost of one batched forward.

    Rows are right-padded: with causal attention, padding after a sequence never changes its logits.
    Used for the cheap text-score curves tracked during training.
    """
    if not items:
        raise ValueError("items must be a non-empty sequence of eval items")
    was_training = model.training
    model.eval()
    try:
        dev = model.language_model.lm_head.weight.device
        hits = 0
        for b in range(0, len(items), batch_size):
            chunk = items[b : b + batch_size]
            seqs, spans, media = [], [], []
            for it in chunk:
                p = prompt_ids(it, tok, model.media_token_counts)
                a = tok.encode(it.answer) + [tok.eos_id]
                seqs.append(p + a)
                spans.append((len(p), len(p) + len(a)))
                media += list(it.images)
            S = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), S), tok.pad_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
            ids = ids.to(dev)
            pred = model(ids, media=media or None).argmax(-1)
            for i, (lo, hi) in enumerate(spans):
                # position t predicts token t + 1
                hits += int(torch.equal(pred[i, lo - 1 : hi - 1], ids[i, lo:hi]))
        return hits / len(items)
    finally:
        model.train(was_training)
