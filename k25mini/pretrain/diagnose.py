"""Does the model read the image? The loss of the text that follows an image, with its own image and with
another document's image of the same size.

A model that ignores its visual input scores both the same (gap 0); the gap (nats per token) is the
information the text takes from the picture. Used to check the ViT stage (does the caption loss actually
come from the image?) and the joint runs, where a suite can sit at chance because the image is never read.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import item_to_doc
from k25mini.world import Item

__all__ = ["image_reliance", "mismatched_pairs", "skill_scores", "best_constant", "blind_baseline", "caption_fields",
           "caption_spans", "CAPTION_FIELDS", "linear_probe", "vision_probe"]


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
    well-formed answers per item (:func:`k25mini.world.random_guess`); ``best_constant``: the best fixed answer
    (:func:`best_constant`); ``top_answer`` / ``top_share``: the model's most frequent answer and its share of
    the items (near 1: the model answers the same thing whatever the image)."""
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
        preds = [greedy_answer(model, tok, it, max_new_tokens) for it in items]
        got = sum(score(it, p) for it, p in zip(items, preds)) / len(items)
        top, top_n = Counter(preds).most_common(1)[0]
        out[skill] = {"score": float(got), "chance": float(chance), "n": n_per_skill,
                      "best_constant": best_constant(items), "top_answer": top, "top_share": top_n / len(items)}
    return out


def best_constant(items: Sequence[Item]) -> float:
    """The score of the best *constant* answer on ``items`` (tried: every item's reference answer), the ceiling of a
    model that ignores the input and answers from the answer prior alone (e.g. always "1" for a count). Above
    uniform chance whenever the answers are skewed, so a score between chance and this can still be blind."""
    from k25mini.world import score

    if not items:
        raise ValueError("items must not be empty")
    return float(max(sum(score(it, c) for it in items) for c in dict.fromkeys(it.answer for it in items))
                 / len(items))


def blind_baseline(items: Sequence[Item]) -> float:
    """The score of a model that reads the question but not the image: the best constant answer *per kind of
    question* (items grouped by ``meta["skill"]`` and, where present, the asked ``meta["attr"]``), averaged over
    all items. At least :func:`best_constant` of the whole set, which must serve every kind with one answer."""
    if not items:
        raise ValueError("items must not be empty")
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        groups.setdefault((it.meta.get("skill"), it.meta.get("attr")), []).append(it)
    return sum(best_constant(g) * len(g) for g in groups.values()) / len(items)


#: the facts a caption states, by caption skill: each named group is one field; its kind is the name without a
#: trailing digit (a box is four coordinate fields)
CAPTION_FIELDS: dict[str, str] = {
    "caption_entity": r"This is (?P<name>[A-Za-z]+), an? (?P<colour>[a-z]+) (?P<shape>[a-z]+)",
    "caption_scene": r"(?P<count>\d+) (?P<colour>[a-z]+) (?P<shape>[a-z]+)",
    "caption_ground": r"(?P<colour>[a-z]+) (?P<shape>[a-z]+) at (?P<cell>\d \d): "
                      r"(?P<box0>\d+) (?P<box1>\d+) (?P<box2>\d+) (?P<box3>\d+)",
    "chart_caption": r"(?P<colour>[a-z]+) (?P<value>\d+)",
    "video_caption": r"(?P<colour>[a-z]+) (?P<shape>[a-z]+) (?P<motion>sits still|moves [a-z]+)",
}


def caption_spans(item: Item) -> tuple[str, list[tuple[str, int, int]]]:
    """The caption text after the item's (last) media and its fields as (kind, start, end) character spans."""
    skill = item.meta.get("skill")
    if skill not in CAPTION_FIELDS:
        raise ValueError(f"item.meta['skill'] must be a caption skill {sorted(CAPTION_FIELDS)}, got {skill!r}")
    end_tag = "<|media_end|>"
    if end_tag not in item.prompt:
        raise ValueError("item must hold a media placeholder before its caption")
    text = item.prompt[item.prompt.rindex(end_tag) + len(end_tag):]
    spans = []
    for m in re.finditer(CAPTION_FIELDS[skill], text):
        for name, (a, b) in ((k, m.span(k)) for k in m.groupdict()):
            spans.append((name.rstrip("0123456789"), a, b))
    return text, sorted(spans, key=lambda s: s[1])


@torch.no_grad()
def _field_hits(model, tok: Tokenizer, item: Item, media: list) -> list[tuple[str, bool]]:
    """Teacher-forced: is every character of each field the model's argmax given the true text before it?"""
    text, spans = caption_spans(item)
    doc = item_to_doc(item, tok, model.media_token_counts)
    start = max(k for k, t in enumerate(doc.ids) if t == tok.media_end_id) + 1  # first caption token
    if tok.decode(doc.ids[start : start + len(text)]) != text:
        raise ValueError("caption_fields needs a tokenizer with one token per caption character")
    ids = torch.tensor([doc.ids], device=model.language_model.lm_head.weight.device)
    pred = model(ids, media=media)[0].argmax(-1)  # pred[t] is the guess for token t + 1
    ok = pred[start - 1 : start - 1 + len(text)] == ids[0, start : start + len(text)]
    return [(kind, bool(ok[a:b].all())) for kind, a, b in spans]


def caption_fields(model, tok: Tokenizer, items: Sequence[Item]) -> dict[str, dict[str, float]]:
    """What the vision side perceives, fact by fact: for caption documents (``CAPTION_FIELDS``), the share of fields
    (colour, shape, count, cell, box coordinate, bar value, motion, name) the model gets exactly right,
    teacher-forced, with its own image (``acc``) and with a same-sized other item's image (``blind``: what the
    text before the field gives away, e.g. a grounding caption lists objects in reading order). ``acc`` well above
    ``blind`` = the fact is read off the pixels. Items without a same-sized partner are left out."""
    pairs = mismatched_pairs(items, model.media_token_counts)
    if not pairs:
        raise ValueError("items must hold at least two caption documents whose media have the same token counts")
    was_training = model.training
    model.eval()
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    try:
        for i, j in pairs:
            own = _field_hits(model, tok, items[i], list(items[i].images))
            other = _field_hits(model, tok, items[i], list(items[j].images))
            for (kind, a), (_, b) in zip(own, other):
                t = tally[kind]
                t[0], t[1], t[2] = t[0] + a, t[1] + b, t[2] + 1
    finally:
        model.train(was_training)
    return {k: {"acc": a / n, "blind": b / n, "n": n} for k, (a, b, n) in sorted(tally.items())}


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 steps: int = 300, lr: float = 1e-2, l2: float = 1e-3, seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic regression (full-batch Adam, L2 ``l2``) on standardised features:
    how much of a label is *linearly* readable from the features."""
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"x_train, x_test must be [n, d] with the same d, got {tuple(x_train.shape)} and "
                         f"{tuple(x_test.shape)}")
    if len(y_train) != len(x_train) or len(y_test) != len(x_test) or len(x_train) < 2 or len(x_test) < 1:
        raise ValueError("y_train / y_test must label every row of x_train / x_test (>= 2 train rows, >= 1 test)")
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = ((x_train - mu) / sd).double(), ((x_test - mu) / sd).double()
    k = int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(xtr.shape[1], k, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():  # callers may be inside no_grad
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(xtr @ w + b, y_train) + l2 * (w**2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == y_test).double().mean())


@torch.no_grad()
def vision_probe(model, n: int = 1600, side: int = 96, seed: int = 0, test_share: float = 0.25
                 ) -> dict[str, dict[str, float]]:
    """Is an object's grid cell, shape and colour *in the vision tokens*? ``n`` single-object scenes of
    ``side`` x ``side`` px (fresh draws, not the training rows) go through the model's vision tower (ViT, merger,
    projector); a :func:`linear_probe` reads each label from the tokens laid out in order (``flat``: position is
    which token lights up) and from their mean / max / min over the tokens (``pooled``: what the content of the
    tokens says, wherever they are). Separates "the tower does not see it" from "the language model cannot use
    it" (compare :func:`caption_fields`)."""
    from k25mini.world.render import COLOURS, SHAPES, render_scene, sample_scene_spec
    from k25mini.world.rng import rng_for

    if isinstance(n, bool) or not isinstance(n, int) or n < 8:
        raise ValueError(f"n must be an int >= 8, got {n!r}")
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must be in (0, 1), got {test_share!r}")
    was_training = model.training
    model.eval()
    try:
        toks, labels = [], {"cell": [], "shape": [], "colour": []}
        for i in range(n):
            rng = rng_for(seed, "vision-probe", i)
            look = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
            img, truth = render_scene(sample_scene_spec(rng, [look], (side, side)))
            o = truth["objects"][0]
            toks.append(model.encode_media([img]).float().cpu())
            labels["cell"].append(3 * o["cell"][0] + o["cell"][1])
            labels["shape"].append(SHAPES.index(o["shape"]))
            labels["colour"].append(list(COLOURS).index(o["colour"]))
    finally:
        model.train(was_training)
    feats = {"flat": torch.stack([t.reshape(-1) for t in toks]),
             "pooled": torch.stack([torch.cat([t.mean(0), t.amax(0), t.amin(0)]) for t in toks])}
    cut = n - max(1, int(round(test_share * n)))
    out = {}
    for task, ys in labels.items():
        y = torch.tensor(ys)
        out[task] = {kind: linear_probe(x[:cut], y[:cut], x[cut:], y[cut:]) for kind, x in feats.items()}
        out[task]["chance"] = 1.0 / (9 if task == "cell" else len(SHAPES) if task == "shape" else len(COLOURS))
    return out
