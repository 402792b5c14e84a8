"""Score a K2.5 model on the world's eval suites by greedy generation of short answers.

Each item's prompt (``<|bos|> prompt + " "``, media expanded) is prefilled once into an MLA cache with the
vision embeddings fused in, then tokens are decoded greedily until ``<|eos|>``, a newline or
``max_new_tokens``. The decoded text is scored by the world's exact scorer (:func:`k25mini.world.score`).

:func:`greedy_answer` decodes one item (the simple reference); :func:`greedy_answers` decodes many at once
(used by :func:`evaluate_items`): prompts are left-padded to a common length, a bool attention mask hides the
pads and per-row position ids keep every row's RoPE positions at ``0 .. len - 1`` for the prompt and
``len, len + 1, ...`` for the answer, exactly as the one-item path, so both give the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.world import Item, score

__all__ = ["greedy_answer", "greedy_answers", "greedy_generate", "evaluate_items", "teacher_forced_exact", "NEWLINE"]

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


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


@torch.no_grad()
def greedy_answers(model, tok: Tokenizer, items: Sequence[Item], max_new_tokens: int = 24,
                   batch_size: int = 32) -> list[str]:
    """:func:`greedy_answer` for every item of ``items`` (in order), ``batch_size`` items decoded at once.

    Items are grouped by prompt length (less padding) and each group is prefilled in one forward into an
    :class:`~k25mini.model.cache.MLACache`, media of the whole group encoded together. Prompts are left-padded
    with ``<|pad|>``; the mask lets a row's tokens see only its own (causal) tokens and every pad only itself
    (a fully masked softmax row would turn the pad's cached latent into NaN). Rows stop independently at
    ``<|eos|>``, a newline or ``max_new_tokens``; finished rows leave the batch (and the cache).
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items must be a non-empty sequence of eval items")
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    try:
        prompts = [prompt_ids(it, tok, model.media_token_counts) for it in items]
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # stable: ties keep item order
        answers: list[str] = [""] * len(items)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            outs = _greedy_batch(model, tok, [prompts[i] for i in idx], [items[i] for i in idx], max_new_tokens)
            for i, out in zip(idx, outs):
                answers[i] = tok.decode(out, skip_special=True).strip()
        return answers
    finally:
        model.train(was_training)


def _decoder_step(lm, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
    """Logits of the last position, with an explicit bool ``mask`` [B, 1, S, T] and per-row ``positions``."""
    h = lm.model(inputs_embeds=x, position_ids=positions, attn_mask=mask, kv_cache=cache)
    return lm.lm_head(h[:, -1:])[:, -1]


def _prefill(model, tok: Tokenizer, prompts: list[list[int]], media: list) -> tuple[torch.Tensor, dict]:
    """Left-padded prefill of ``prompts`` (``media`` in row-major order): the next-token logits [B, vocab] and
    the decode state (cache, ``valid`` [B, T] real cached columns, prompt ``lens`` [B])."""
    lm = model.language_model
    max_pos = lm.config.max_position_embeddings
    dev = lm.lm_head.weight.device
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    B, P = len(prompts), int(lens.max())
    if P > max_pos:
        raise ValueError(f"sequence length {P} exceeds max_position_embeddings={max_pos}")
    ids = torch.full((B, P), tok.pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, P - len(p) :] = torch.tensor(p)
    ids = ids.to(dev)
    cols = torch.arange(P, device=dev)
    start = P - lens  # first real column of each row
    valid = cols[None, :] >= start[:, None]  # [B, T]: cached columns that hold real tokens
    causal = cols[None, :] <= cols[:, None]  # [S, T]
    mask = (causal[None] & valid[:, None, :]) | torch.eye(P, dtype=torch.bool, device=dev)[None]
    positions = (cols[None, :] - start[:, None]).clamp(min=0)  # pads sit at 0; they are never attended
    cache = lm.new_kv_cache()
    logits = _decoder_step(lm, model.embed(ids, media or None), positions, mask[:, None], cache)
    return logits, {"cache": cache, "valid": valid, "lens": lens}


def _decode(lm, nxt: torch.Tensor, step: int, state: dict) -> torch.Tensor:
    """Feed ``nxt`` [B] (the answer token ``step``, 0-based) of every row; the next logits [B, vocab]."""
    pos = state["lens"] + step  # prompt 0 .. len - 1, answer len, len + 1, ...
    max_pos = lm.config.max_position_embeddings
    if int(pos.max()) >= max_pos:
        raise ValueError(f"sequence length {int(pos.max()) + 1} exceeds max_position_embeddings={max_pos}")
    valid = state["valid"] = torch.cat([state["valid"], state["valid"].new_ones(len(nxt), 1)], dim=1)
    return _decoder_step(lm, lm.model.embed_tokens(nxt[:, None]), pos[:, None], valid[:, None, None, :],
                         state["cache"])


def _keep_rows(state: dict, sel: torch.Tensor) -> None:
    """Drop finished rows: keep batch rows ``sel`` of the cache and the row state."""
    state["cache"].reorder(sel)
    state["valid"], state["lens"] = state["valid"][sel], state["lens"][sel]


def _greedy_batch(model, tok: Tokenizer, prompts: list[list[int]], items: Sequence[Item],
                  max_new_tokens: int) -> list[list[int]]:
    """Generated token ids (stop token excluded) of one batch of prompts."""
    media = [m for it in items for m in it.images]  # row-major, as the media pads appear in the prompts
    return _generate(model, tok, prompts, media, max_new_tokens, {tok.eos_id: False, NEWLINE: False})


def _generate(model, tok: Tokenizer, prompts: list[list[int]], media: list, max_new_tokens: int,
              stops: dict[int, bool]) -> list[list[int]]:
    """Greedy continuation of a batch of token-id prompts: a row ends at a token of ``stops`` (kept in its output
    when ``stops[token]`` is True), after ``max_new_tokens``, or when it fills the model's positions (its last
    token sits at position ``max_position_embeddings``, which is never fed back)."""
    logits, state = _prefill(model, tok, prompts, media)
    max_pos = model.language_model.config.max_position_embeddings
    outs: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # batch row -> prompt index, for the rows still decoding
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        keep = []
        room = (state["lens"] + step < max_pos).tolist()  # can this row's new token still be fed back?
        for r, t in enumerate(nxt.tolist()):
            if t in stops:
                if stops[t]:
                    outs[rows[r]].append(t)
                continue
            outs[rows[r]].append(t)
            if room[r]:
                keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            sel = torch.tensor(keep, device=nxt.device)
            _keep_rows(state, sel)
            nxt, rows = nxt[sel], [rows[r] for r in keep]
        logits = _decode(model.language_model, nxt, step, state)
    return outs


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[list[int]], media: Sequence[Sequence] | None = None,
                    max_new_tokens: int = 24, stops: dict[int, bool] | None = None,
                    batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts`` (each already expanded: one ``<|media_pad|>`` per vision
    token), ``media[i]`` the images/videos of prompt ``i`` in order. A row stops at a token of ``stops``
    (``{token_id: keep_it_in_the_output}``; default ``<|eos|>`` and newline, not kept), after
    ``max_new_tokens``, or when prompt + output fill ``max_position_embeddings`` + 1 tokens (the context is
    full; a prompt longer than the model's positions raises ValueError). Batched and left-padded as
    :func:`greedy_answers` (same answers as one at a time)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty sequence of token-id lists")
    if any(not p for p in prompts):
        raise ValueError("prompts must not contain an empty token list")
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    media = [[] for _ in prompts] if media is None else list(media)
    if len(media) != len(prompts):
        raise ValueError(f"media must hold one list per prompt ({len(prompts)}), got {len(media)}")
    tok = Tokenizer()
    stops = {tok.eos_id: False, NEWLINE: False} if stops is None else dict(stops)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        outs: list[list[int]] = [[] for _ in prompts]
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            got = _generate(model, tok, [list(prompts[i]) for i in idx], [m for i in idx for m in media[i]],
                            max_new_tokens, stops)
            for i, o in zip(idx, got):
                outs[i] = o
        return outs
    finally:
        model.train(was_training)


def evaluate_items(model, tok: Tokenizer, items: Sequence[Item], max_new_tokens: int = 24,
                   batch_size: int = 32) -> tuple[float, list[float]]:
    """Mean score over ``items`` and the per-item scores (in order); answers from :func:`greedy_answers`."""
    if not items:
        raise ValueError("items must be a non-empty sequence of eval items")
    answers = greedy_answers(model, tok, items, max_new_tokens, batch_size)
    scores = [float(score(it, a)) for it, a in zip(items, answers)]
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
