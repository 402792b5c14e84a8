"""Attention masks and positions for causal and packed-document (varlen) sequences.

A packed row holds several documents back to back. Tokens attend causally *within* their
document only, and RoPE positions restart at 0 at every document start, so a packed row computes
exactly what the documents would compute one by one.

Documents are maximal runs of equal ``doc_ids`` along a row (so ``[0, 0, 1, 1, 0]`` is three
documents). ``cu_seqlens`` (the flash-attention varlen convention: cumulative lengths over the
flattened ``B * S`` tokens, starting at 0) is converted to ``doc_ids``.
"""

from __future__ import annotations

import torch

__all__ = ["doc_runs", "doc_ids_from_cu_seqlens", "positions_from_doc_ids", "attention_mask"]


def _check_doc_ids(doc_ids: torch.Tensor) -> None:
    if doc_ids.ndim != 2 or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool:
        raise ValueError(f"doc_ids must be an integer tensor [B, S], got {doc_ids.dtype} {tuple(doc_ids.shape)}")


def doc_runs(doc_ids: torch.Tensor) -> torch.Tensor:
    """Relabel [B, S] doc ids as run indices 0, 1, 2, ... (a new run wherever the id changes)."""
    _check_doc_ids(doc_ids)
    change = torch.zeros_like(doc_ids, dtype=torch.long)
    change[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).long()
    return change.cumsum(dim=1)


def doc_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """[n_docs + 1] cumulative lengths over B*S flattened tokens -> doc_ids [B, S].

    Every row boundary must also be a document boundary (a document may not wrap to the next row).
    """
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor of >= 2 offsets, got {tuple(cu_seqlens.shape)}")
    cu = cu_seqlens.to(torch.long).cpu()
    total = batch_size * seq_len
    if int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at B*S={total}, got {cu[0].item()}..{cu[-1].item()}")
    if bool((cu[1:] <= cu[:-1]).any()):
        raise ValueError("cu_seqlens must be strictly increasing (no empty documents)")
    rows = torch.arange(1, batch_size, dtype=torch.long) * seq_len
    if not bool(torch.isin(rows, cu).all()):
        raise ValueError(f"cu_seqlens must contain every row boundary (multiples of S={seq_len})")
    flat = torch.bucketize(torch.arange(total), cu[1:], right=True)
    return flat.view(batch_size, seq_len).to(cu_seqlens.device)


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Per-document positions [B, S]: 0 at each document start, counting up within it."""
    runs = doc_runs(doc_ids)
    B, S = runs.shape
    idx = torch.arange(S, device=runs.device).expand(B, S)
    is_start = torch.ones_like(runs, dtype=torch.bool)
    is_start[:, 1:] = runs[:, 1:] != runs[:, :-1]
    start = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    doc_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask, True = may attend. Queries are the last ``q_len`` of ``kv_len`` positions.

    Returns [1, 1, q_len, kv_len] (causal) or [B, 1, q_len, kv_len] (causal and same document;
    ``doc_ids`` [B, kv_len] covers the keys, the queries are its last ``q_len`` columns).
    """
    if q_len > kv_len:
        raise ValueError(f"q_len ({q_len}) must be <= kv_len ({kv_len})")
    if doc_ids is not None:
        device = doc_ids.device
    past = kv_len - q_len
    qi = torch.arange(q_len, device=device).unsqueeze(1) + past
    kj = torch.arange(kv_len, device=device).unsqueeze(0)
    mask = (kj <= qi)[None, None]
    if doc_ids is not None:
        if doc_ids.shape[1] != kv_len:
            raise ValueError(f"doc_ids must be [B, kv_len={kv_len}], got {tuple(doc_ids.shape)}")
        runs = doc_runs(doc_ids)
        same = runs[:, past:, None] == runs[:, None, :]  # [B, q, kv]
        mask = mask & same[:, None]
    return mask
