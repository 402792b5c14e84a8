"""Does the model read the image? The loss of the text that follows an image, with its own image and with
another document's image of the same size.

A model that ignores its visual input scores both the same (gap 0); the gap (nats per token) is the
information the text takes from the picture. Used to check the ViT stage (does the caption loss actually
come from the image?) and the joint runs, where a suite can sit at chance because the image is never read.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import item_to_doc
from k25mini.world import Item

__all__ = ["image_reliance", "mismatched_pairs", "skill_scores"]


def mismatched_pairs(items: Sequence[Item], counts_fn) -> list[tuple[int, int]]:
    """(i, j) pairs, j != i: item ``j``'s media gives item ``i``'s placeholders exactly the same token counts
    (items are grouped by their per-chunk counts and each group is rotated by one). Items without media or alone
    in their group are left out."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.images:
            groups[tuple(int(c) for img in it.images for c in counts_fn(img))].append(i)
    pairs = []
    for idx in groups.values():
        if len(idx) > 1:
            pairs += [(a, idx[(k + 1) % len(idx)]) for k, a in enumerate(idx)]
    return sorted(pairs)


@torch.no_grad()
def _text_after_media_nll(model, tok: Tokenizer, item: Item) -> tuple[float, int]:
    doc = item_to_doc(item, tok, model.media_token_counts)
    ids = torch.tensor([doc.ids], device=model.language_model.lm_head.weight.device)
    start = max(k for k, t in enumerate(doc.ids) if t == tok.media_end_id) + 1  # first text token after the media
    if start >= len(doc.ids):
        return 0.0, 0
    logits = model(ids, media=list(item.images))[0].float()
    nll = F.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="sum")  # position t predicts t + 1
    return float(nll), len(doc.ids) - start


def image_reliance(model, tok: Tokenizer, items: Sequence[Item]) -> dict[str, Any]:
    """Mean NLL (nats/token) of the text after the media, with the item's own media (``matched``) and with a
    same-sized other item's (``mismatched``); ``gap`` = mismatched - matched. ``model`` is a
    ``K25ForConditionalGeneration``; eval mode is used and the previous mode restored."""
    pairs = mismatched_pairs(items, model.media_token_counts)
    if not pairs:
        raise ValueError("items must hold at least two media documents whose media have the same token counts")
    was_training = model.training
    model.eval()
    try:
        tot = {"matched": 0.0, "mismatched": 0.0}
        n_tok = 0
        for i, j in pairs:
            own, n = _text_after_media_nll(model, tok, items[i])
            other, _ = _text_after_media_nll(model, tok, dataclasses.replace(items[i], images=list(items[j].images)))
            tot["matched"] += own
            tot["mismatched"] += other
            n_tok += n
    finally:
        model.train(was_training)
    if n_tok == 0:
        raise ValueError("items have no text after their media")
    m, mm = tot["matched"] / n_tok, tot["mismatched"] / n_tok
    return {"matched": m, "mismatched": mm, "gap": mm - m, "n_items": len(pairs), "n_tokens": n_tok}


def skill_scores(model, tok: Tokenizer, world, suite: str, n_per_skill: int, max_new_tokens: int = 28,
                 tag: str = "skill-check") -> dict[str, dict[str, float]]:
    """Greedy score and chance per skill of ``suite`` on ``n_per_skill`` fresh held-out items of each skill
    (drawn from ``rng_for(world.seed, tag, skill, i)``): a suite of 64-128 items holds only ~10-20 per skill,
    too few to tell a skill at chance from one slightly above it. Chance: the mean score of 16 random
    well-formed answers per item (:func:`k25mini.world.random_guess`)."""
    from k25mini.pretrain.evaluate import greedy_answer
    from k25mini.world import SUITE_SKILLS, random_guess, score
    from k25mini.world.rng import rng_for

    if suite not in SUITE_SKILLS:
        raise ValueError(f"suite must be one of {sorted(SUITE_SKILLS)}, got {suite!r}")
    if isinstance(n_per_skill, bool) or not isinstance(n_per_skill, int) or n_per_skill < 1:
        raise ValueError(f"n_per_skill must be an int >= 1, got {n_per_skill!r}")
    out = {}
    for skill in SUITE_SKILLS[suite]:
        items = [world.sample(skill, "eval", rng_for(world.seed, tag, skill, i)) for i in range(n_per_skill)]
        rng = rng_for(world.seed, tag, "chance", skill)
        chance = sum(score(it, random_guess(it, rng)) for it in items for _ in range(16)) / (16 * len(items))
        got = sum(score(it, greedy_answer(model, tok, it, max_new_tokens)) for it in items) / len(items)
        out[skill] = {"score": float(got), "chance": float(chance), "n": n_per_skill}
    return out
