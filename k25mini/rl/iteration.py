"""One RL iteration of a K2.5 vision-language model on world items: sample a group, reward, advantage, update.

    stats = rl_iteration(model, optimizer, items, k=4, generator=g)                        # plain outcome RL
    stats = rl_iteration(model, optimizer, items, k=4, shape=lambda key, r, n: tg.shape(t, key, r, n))  # Toggle
    stats = rl_iteration(model, optimizer, items, k=4, tool=CodeTool())                    # with the code tool

The steps (K2.5, arXiv 2602.02276 §4.4):

1. **Sample** ``k`` responses per item with :func:`k25mini.rl.rollout.sample` (or
   :func:`~k25mini.rl.rollout.rollout_with_tool`); the sampler's per-token log-probs are pi_old.
2. **Reward** each response's answer with ``reward_fn`` (default :func:`k25mini.rl.rewards.reward`), then let
   ``shape`` rewrite a group's rewards from its response lengths (Toggle's budget; None: unshaped).
3. **Advantage** ``A_j = r_j - mean(r of the group)`` (no std, no critic).
4. **Update**: ``updates`` optimiser steps of the registry's loss (default ``kimi_k25``) on teacher-forced
   log-probs of the sampled tokens (tool-result tokens masked out), gradient norm clipped.

Groups whose rewards are all equal have zero advantage: they add only the tau term (and cost compute); the
stats report their share (``zero_std_frac``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.model.moe import attach_moe_bias_update
from k25mini.pretrain.docs import prompt_ids
from k25mini.rl.advantages import group_advantages
from k25mini.rl.losses import get_loss
from k25mini.rl.rewards import reward
from k25mini.rl.rollout import default_stops, rollout_with_tool, sample, sequence_logprobs
from k25mini.world import Item

__all__ = ["rl_iteration", "answer_text"]


def answer_text(tok: Tokenizer, tokens: Sequence[int]) -> str:
    """A sampled response as the reward reads it: special tokens and stop tokens dropped, stripped."""
    stops = default_stops(tok)
    return tok.decode([t for t in tokens if t not in stops], skip_special=True).strip()


def rl_iteration(model, optimizer: torch.optim.Optimizer, items: Sequence[Item], *, k: int = 4,
                 reward_fn: Callable[[Item, str], float] = reward,
                 shape: Callable[[Hashable, list[float], list[int]], list[float]] | None = None,
                 key_fn: Callable[[Item], Hashable] = lambda it: it.meta.get("skill"),
                 loss: str = "kimi_k25", loss_kwargs: dict[str, Any] | None = None, updates: int = 1,
                 grad_clip: float | None = 1.0, max_new_tokens: int = 24, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, tool=None, max_calls: int = 1,
                 batch_size: int = 32, ban: Sequence[int] = (), sampler=None) -> dict[str, float]:
    """One iteration (see the module docstring). Returns the loss's stats of the last update plus ``reward``
    (mean raw reward), ``shaped_reward``, ``response_tokens`` (mean policy tokens per response),
    ``zero_std_frac``, ``loss`` and ``grad_norm`` (before clipping, last update), and of the first update
    ``first_log_ratio_std`` / ``first_log_ratio_absmax`` (log pi_theta - log pi_old over the policy tokens: the
    train-inference mismatch before any learning) and ``first_grad_norm``. The model is left in train mode.
    ``ban``: tokens never sampled (without a tool, e.g. the tool-call marker). ``sampler``: a model to sample
    from instead of ``model`` (an "inference engine" whose numbers differ; its log-probs are pi_old)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items must be a non-empty sequence of world items")
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
        raise ValueError(f"updates must be an int >= 1, got {updates!r}")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or not grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a number > 0, got {grad_clip!r}")
    loss_fn = get_loss(loss)
    tok = Tokenizer()
    actor = model if sampler is None else sampler
    prompts = [prompt_ids(it, tok, model.media_token_counts) for it in items]
    media = [it.images for it in items]
    # 1. sample
    if tool is None:
        groups = sample(actor, prompts, media, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, generator=generator, batch_size=batch_size, ban=ban)
        flat = [(s.tokens, [1] * len(s.tokens), s.logprobs, answer_text(tok, s.tokens)) for g in groups for s in g]
    else:
        if ban:
            raise ValueError("ban is for rollouts without a tool")
        trajs = rollout_with_tool(actor, tok, items, tool, k=k, max_calls=max_calls, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, generator=generator, batch_size=batch_size)
        flat = [(t.tokens, t.model_mask, t.logprobs, t.answer) for g in trajs for t in g]
    # 2. reward (and shape)
    raw = [float(reward_fn(items[i // k], ans)) for i, (*_, ans) in enumerate(flat)]
    lengths = [sum(m) for _, m, _, _ in flat]
    shaped = list(raw)
    if shape is not None:
        for i, it in enumerate(items):
            got = shape(key_fn(it), raw[i * k : (i + 1) * k], lengths[i * k : (i + 1) * k])
            if len(got) != k:
                raise ValueError(f"shape must return one reward per sample ({k}), got {len(got)}")
            shaped[i * k : (i + 1) * k] = [float(x) for x in got]
    # 3. advantages
    rewards_t = torch.tensor(shaped, dtype=torch.float32)
    adv = group_advantages(rewards_t, group_size=k)
    zero_std = float((rewards_t.view(-1, k).std(dim=1, unbiased=False) == 0).float().mean())
    # 4. update
    dev = next(model.parameters()).device
    L = max(1, max(len(t) for t, *_ in flat))
    old = torch.zeros(len(flat), L)
    pmask = torch.zeros(len(flat), L, dtype=torch.bool)
    for r, (toks, m, lp, _) in enumerate(flat):
        old[r, : len(toks)] = torch.tensor(lp, dtype=torch.float32)
        pmask[r, : len(toks)] = torch.tensor(m, dtype=torch.bool)
    old, pmask, adv = old.to(dev), pmask.to(dev), adv.to(dev)
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_media = [m for m in media for _ in range(k)]
    conts = [t for t, *_ in flat]
    if getattr(optimizer, "moe_bias_update", None) is None:
        attach_moe_bias_update(optimizer, model)  # no-op without MoE layers
    model.train()
    stats: dict[str, float] = {}
    first: dict[str, float] = {}
    gn = 0.0
    for u in range(updates):
        logp, real = sequence_logprobs(model, flat_prompts, flat_media, conts)
        logp = torch.nn.functional.pad(logp, (0, L - logp.shape[1])) if logp.shape[1] < L else logp
        mask = pmask & torch.nn.functional.pad(real, (0, L - real.shape[1])) if real.shape[1] < L else pmask & real
        if not bool(mask.any()):
            raise ValueError("no policy tokens to train on (every response is empty)")
        value, stats = loss_fn(logp, old, adv, mask, **(loss_kwargs or {}))
        if u == 0:
            with torch.no_grad():
                lr0 = (logp.detach() - old)[mask]
            first = {"first_log_ratio_std": float(lr0.std()) if lr0.numel() > 1 else 0.0,
                     "first_log_ratio_absmax": float(lr0.abs().max())}
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        gn = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if u == 0:
            first["first_grad_norm"] = gn
        if grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, torch.tensor(gn))
        optimizer.step()
        stats["loss"] = float(value.detach())
    stats.update(first)
    stats.update(reward=sum(raw) / len(raw), shaped_reward=sum(shaped) / len(shaped),
                 response_tokens=sum(lengths) / len(lengths), zero_std_frac=zero_std, grad_norm=gn)
    return stats
