"""The generic RL update of a causal LM on sampled completions, with any loss of the registry.

    batch = pack_completions(seqs, pad_id)        # seqs: (prompt_ids, completion_ids, old_logp, advantage)
    stats = policy_update(model, optimizer, batch, loss="kimi_k25", updates=2, alpha=0.5, beta=2.0, tau=0.01)

* :func:`completion_logp`: log π_θ of every completion token, [B, S] (position t is predicted at t-1).
* :func:`pack_completions`: right-padded ids, completion mask, π_old log-probs [B, S] and advantages [B].
* :func:`policy_update`: ``updates`` optimiser steps of ``get_loss(loss)`` on one batch (grad-norm clipped).
  The optimiser's step post-hooks run as usual; if it has no MoE router-bias hook yet (an optimiser not built
  by :func:`k25mini.optim.build_optimizer`), one is attached, so an MoE policy's bias keeps balancing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from k25mini.model.moe import attach_moe_bias_update
from k25mini.rl.losses import get_loss

__all__ = ["CompletionBatch", "completion_logp", "pad_completions", "pack_completions", "policy_update"]


@dataclass(frozen=True)
class CompletionBatch:
    """One RL batch: ``ids`` [B, S] int64 (prompt + completion, right-padded), ``mask`` [B, S] bool (completion
    positions), ``old_logp`` [B, S] float32 (π_old of completion tokens, 0 elsewhere), ``advantages`` [B]."""

    ids: Tensor
    mask: Tensor
    old_logp: Tensor
    advantages: Tensor


def completion_logp(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """log π(token) at every position where ``mask`` is True, 0 elsewhere; [B, S] float32.

    ``model(ids)`` must return logits [B, S, V]; the token at position t is predicted by the logits at t-1, so
    position 0 (never a completion token) gets 0."""
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.long:
        raise ValueError(f"ids must be an int64 tensor [B, S], got {getattr(ids, 'shape', type(ids))}")
    if not isinstance(mask, Tensor) or mask.shape != ids.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of the shape of ids {tuple(ids.shape)}")
    logits = model(ids)[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return torch.where(mask, lp, torch.zeros_like(lp))


def pad_completions(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(prompt_ids, completion_ids) pairs -> ids [B, S] right-padded with ``pad_id``, completion mask [B, S]."""
    if not pairs:
        raise ValueError("pairs must be non-empty")
    S = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), S), pad_id, dtype=torch.long)
    comp = torch.zeros((len(pairs), S), dtype=torch.bool)
    for i, (p, c) in enumerate(pairs):
        ids[i, : len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        comp[i, len(p) : len(p) + len(c)] = True
    return ids, comp


def pack_completions(seqs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[float], float]],
                     pad_id: int) -> CompletionBatch:
    """(prompt_ids, completion_ids, old_logp per completion token, advantage) tuples -> a :class:`CompletionBatch`."""
    if not seqs:
        raise ValueError("seqs must be non-empty")
    for i, (_, c, lp, _) in enumerate(seqs):
        if len(lp) != len(c):
            raise ValueError(f"sequence {i}: {len(lp)} old log-probs for {len(c)} completion tokens")
    ids, comp = pad_completions([(p, c) for p, c, _, _ in seqs], pad_id)
    old = torch.zeros(ids.shape)
    for i, (p, c, lp, _) in enumerate(seqs):
        old[i, len(p) : len(p) + len(c)] = torch.tensor(lp)
    adv = torch.tensor([a for *_, a in seqs], dtype=torch.float32)
    return CompletionBatch(ids, comp, old, adv)


def policy_update(model: nn.Module, optimizer: torch.optim.Optimizer, batch: CompletionBatch, *,
                  loss: str = "kimi_k25", updates: int = 1, grad_clip: float | None = 1.0,
                  **hparams: Any) -> dict[str, float]:
    """``updates`` optimiser steps of ``get_loss(loss)(logp, batch.old_logp, batch.advantages, batch.mask,
    **hparams)`` on one batch, the gradient norm of ``model``'s parameters clipped to ``grad_clip`` (None: off).

    Returns the loss's stats of the last update plus ``loss`` (its value). The model is left in train mode.
    """
    if not isinstance(batch, CompletionBatch):
        raise ValueError(f"batch must be a CompletionBatch (see pack_completions), got {type(batch).__name__}")
    if not (isinstance(updates, int) and not isinstance(updates, bool) and updates >= 1):
        raise ValueError(f"updates must be an int >= 1, got {updates!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a number > 0, got {grad_clip!r}")
    loss_fn = get_loss(loss)
    if getattr(optimizer, "moe_bias_update", None) is None:
        attach_moe_bias_update(optimizer, model)  # no-op without MoE layers
    device = next(model.parameters()).device
    ids, mask = batch.ids.to(device), batch.mask.to(device)
    old, adv = batch.old_logp.to(device), batch.advantages.to(device)
    stats: dict[str, float] = {}
    model.train()
    for _ in range(updates):
        logp = completion_logp(model, ids, mask)
        value, stats = loss_fn(logp, old, adv, mask, **hparams)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        stats["loss"] = float(value.detach())
    return stats
