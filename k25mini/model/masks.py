"""Attention masks and positions for causal and packed-document (varlen) sequences.

A packed row holds several documents back to back. Tokens attend causally *within* their
document only, and RoPE positions restart at 0 at every document start, so a packed row computes
exactly what the documents would compute one by one.

Documents are maximal runs of equal ``doc_ids`` along a row (so ``[0, 0, 1, 1, 0]`` is three
documents). ``cu_seqlens`` (the flash-attention varlen convention: cumulative lengths over the
flattened ``B * S`` tokens, starting at 0) is converted to ``doc_ids``.

:func:`doc_packing` lays the documents of a packed batch out for block-diagonal ("varlen") attention:
documents of similar length are stacked into padded ``[n_docs, L]`` buckets, so attention costs about
``sum(len_i^2)`` instead of ``B * S^2`` (see :meth:`k25mini.model.mla.MLAttention._attend_varlen`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["doc_runs", "doc_ids_from_cu_seqlens", "positions_from_doc_ids", "attention_mask", "DocBucket",
           "DocPacking", "doc_packing"]


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


# ------------------------------------------------------------------------------------------ varlen layout
# Bucketing cost model, in units of one query-key score entry per head: a bucket of n documents padded to
# length L costs BUCKET_OVERHEAD (its own kernel launches and autograd nodes, forward and backward)
# + n * L * (L + TOKEN_COST) (the scores, and per-row work: softmax rows, gathers, small matmuls).
# Measured on the 2-core CPU box, 1 thread, nano head sizes, recording on: an isolated bucket costs ~0.09 ms
# + 0.6 us per token + 26 ns per n*L^2 (fwd+bwd), i.e. overhead ~3,500 entries, token cost ~24; inside the
# layer (split/cat backward per bucket) the layer time is flat for overheads 4,096..32,768 on nano joint
# batches and worse below (benchmarks/bench_varlen_attention.py, second table), so the middle is used.
BUCKET_OVERHEAD = 8192
TOKEN_COST = 24


@dataclass(frozen=True)
class DocBucket:
    """``n`` documents padded to ``length`` tokens: slots ``start .. start + n * length`` of the layout."""

    start: int
    n: int
    length: int
    valid: torch.Tensor  # bool [n, length]: slot j of document i holds a real token (j < len_i)

    @property
    def stop(self) -> int:
        return self.start + self.n * self.length


@dataclass
class DocPacking:
    """Padded per-document layout of a packed ``[B, S]`` batch, computed once per forward and shared by layers.

    * ``perm`` [P]: for every slot of the layout, the flattened token index ``b * S + s`` it holds. Documents
      are left-aligned in their slots; a padding slot repeats the document's first token (its result is thrown
      away, and under causal attention real queries never see it, so it changes nothing, gradients included).
    * ``inv`` [B * S]: the slot of every token (``perm[inv] == arange(B * S)``).
    * ``buckets``: consecutive slot ranges, each ``[n, L]`` (documents of similar length, see
      :func:`doc_packing`).
    """

    batch_size: int
    seq_len: int
    perm: torch.Tensor
    inv: torch.Tensor
    buckets: tuple[DocBucket, ...]
    lengths: tuple[int, ...]  # every document's length, in row order
    _cache: dict = field(default_factory=dict, repr=False)  # causal biases, head-major indices

    @property
    def num_slots(self) -> int:
        return int(self.perm.numel())

    def head_major(self, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices for a head-major layout of ``[B * S * H, C]`` per-(token, head) rows (cached per H).

        ``gather`` [H * P]: bucket after bucket, each as ``[H, n, L]`` (so one bucket is a contiguous
        ``[H * n, L, C]`` block); ``scatter`` [B * S * H]: where row ``t * H + h`` landed, to bring results back.
        """
        key = ("heads", num_heads)
        if key not in self._cache:
            H = num_heads
            dev = self.perm.device
            gather, base, stride = [], torch.empty(self.num_slots, dtype=torch.long, device=dev), []
            for bk in self.buckets:
                m = bk.n * bk.length
                perm = self.perm[bk.start : bk.stop]
                gather.append((perm[None, :] * H + torch.arange(H, device=dev)[:, None]).reshape(-1))
                base[bk.start : bk.stop] = torch.arange(m, device=dev) + bk.start * H
                stride.append(torch.full((m,), m, dtype=torch.long, device=dev))
            slot = self.inv  # [B * S] slot of every token
            scatter = base[slot][:, None] + torch.cat(stride)[slot][:, None] * torch.arange(H, device=dev)[None, :]
            self._cache[key] = (torch.cat(gather), scatter.reshape(-1))
        return self._cache[key]

    def causal_bias(self, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[length, length] additive causal mask: 0 where key <= query, -inf above (cached per dtype/device)."""
        key = (length, dtype, device)
        if key not in self._cache:
            up = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
            self._cache[key] = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(up, float("-inf"))
        return self._cache[key]


def _group_lengths(values: list[int], counts: list[int], overhead: float, token_cost: float) -> list[tuple[int, int]]:
    """Split sorted distinct lengths into contiguous groups minimising
    ``sum(overhead + n_docs * L * (L + token_cost))`` with L the group's longest length.

    Returns [(first, last)] index ranges into ``values``. O(u^2) dynamic programme over the u distinct lengths.
    """
    u = len(values)
    best = [0.0] * (u + 1)
    cut = [0] * (u + 1)
    for j in range(1, u + 1):
        L2 = values[j - 1] * (values[j - 1] + token_cost)
        n, b = 0, float("inf")
        for i in range(j, 0, -1):  # group = values[i-1 .. j-1]
            n += counts[i - 1]
            c = best[i - 1] + overhead + n * L2
            if c < b:
                b, cut[j] = c, i - 1
        best[j] = b
    groups, j = [], u
    while j > 0:
        groups.append((cut[j], j - 1))
        j = cut[j]
    return groups[::-1]


def doc_packing(doc_ids: torch.Tensor, bucket_overhead: float = BUCKET_OVERHEAD,
                token_cost: float = TOKEN_COST) -> DocPacking:
    """The block-diagonal layout of packed documents (maximal runs of equal ``doc_ids`` along a row).

    Documents are sorted by length and split into buckets of similar length by a small dynamic programme that
    minimises ``sum(bucket_overhead + n_docs * L * (L + token_cost))``, L the bucket's longest document:
    padding waste against the per-bucket launch cost (see ``BUCKET_OVERHEAD``).
    ``bucket_overhead=0`` gives one bucket per distinct length; a huge value gives one bucket of all documents.
    Planning runs on the CPU (one host sync for CUDA inputs); the index tensors live on ``doc_ids.device``.
    """
    runs = doc_runs(doc_ids)
    device = doc_ids.device
    B, S = runs.shape
    if S == 0:
        raise ValueError("doc_ids must hold at least one token per row")
    runs_cpu = runs.cpu()
    is_start = torch.ones(B, S, dtype=torch.bool)
    is_start[:, 1:] = runs_cpu[:, 1:] != runs_cpu[:, :-1]
    starts = is_start.reshape(-1).nonzero().squeeze(1)  # flattened start of every document, row order
    lengths = torch.diff(starts, append=torch.tensor([B * S]))
    order = torch.argsort(lengths, stable=True)
    len_sorted = lengths[order]
    values, counts = torch.unique_consecutive(len_sorted, return_counts=True)
    groups = _group_lengths(values.tolist(), counts.tolist(), float(bucket_overhead), float(token_cost))
    first_doc = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # per distinct value
    perms, buckets, slot = [], [], 0
    for lo, hi in groups:
        d0, d1 = int(first_doc[lo]), int(first_doc[hi + 1])
        L = int(values[hi])
        st, ln = starts[order[d0:d1]], len_sorted[d0:d1]
        j = torch.arange(L)
        valid = j[None, :] < ln[:, None]  # [n, L]
        perms.append(torch.where(valid, st[:, None] + j[None, :], st[:, None]).reshape(-1))
        buckets.append(DocBucket(slot, d1 - d0, L, valid.to(device)))
        slot += (d1 - d0) * L
    perm = torch.cat(perms)
    valid_all = torch.cat([b.valid.reshape(-1).cpu() for b in buckets])  # [P]
    inv = torch.empty(B * S, dtype=torch.long)
    inv[perm[valid_all]] = valid_all.nonzero().squeeze(1)
    return DocPacking(B, S, perm.to(device), inv.to(device), tuple(buckets), tuple(lengths.tolist()))
