"""Routing metadata for grouped expert GEMMs: histogram, block-aligned offsets, and the sort.

The T*K (token, slot) assignments are numbered a = t*K + k. Grouped GEMM kernels work on tiles of
BLOCK_M rows that must all belong to one expert, so each expert's rows are padded up to a multiple
of BLOCK_M. The metadata, all int32 on the input's device:

* ``counts [E]``             assignments per expert (the histogram)
* ``padded_offsets [E+1]``   start of each expert's padded row range (exclusive cumsum of padded counts)
* ``sorted_ids [R]``         for each padded row, the assignment it holds, or N (= T*K) for padding
* ``block_expert [B]``       expert owning each BLOCK_M row block, -1 for blocks past the end

R = B * BLOCK_M with B = cdiv(N, BLOCK_M) + E, an upper bound on the number of blocks, so the host
never waits for the device to learn the real count (kernels exit early on block_expert == -1).
Within an expert, assignments keep their original order (a stable sort), which makes the Triton
result bit-identical to ``moe_align_reference``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class RoutingMeta(NamedTuple):
    """Output of ``moe_align`` / ``moe_align_reference`` (see module docstring for shapes)."""

    sorted_ids: torch.Tensor
    block_expert: torch.Tensor
    padded_offsets: torch.Tensor
    counts: torch.Tensor
    block_m: int
    num_assignments: int  # N = T*K; also the padding sentinel in sorted_ids
    top_k: int


def _check_align_args(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> None:
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or topk_ids.dtype != torch.int64:
        got = (topk_ids.dtype, tuple(topk_ids.shape)) if isinstance(topk_ids, torch.Tensor) else type(topk_ids)
        raise ValueError(f"topk_ids must be an int64 tensor of shape [T, K], got {got}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    if not isinstance(block_m, int) or block_m < 1:
        raise ValueError(f"block_m must be a positive int, got {block_m!r}")
    if topk_ids.numel() >= 2**31 - (num_experts + 1) * block_m:
        raise ValueError(f"topk_ids has {topk_ids.numel()} assignments; int32 routing metadata needs < 2**31")


def max_blocks(num_assignments: int, num_experts: int, block_m: int) -> int:
    """Upper bound on sum_e ceil(count_e / block_m) over any routing of N assignments to E experts."""
    return triton.cdiv(num_assignments, block_m) + num_experts


def moe_align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> RoutingMeta:
    """PyTorch version of ``moe_align``: the same tensors, built with bincount/argsort/cumsum."""
    _check_align_args(topk_ids, num_experts, block_m)
    dev = topk_ids.device
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    padded_offsets[1:] = torch.cumsum(padded, 0)
    nb = max_blocks(n, num_experts, block_m)
    sorted_ids = torch.full((nb * block_m,), n, dtype=torch.int32, device=dev)
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert, original order inside
    rank = torch.arange(n, device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    sorted_ids[padded_offsets[flat[order]] + rank] = order.to(torch.int32)
    block_expert = torch.full((nb,), -1, dtype=torch.int32, device=dev)
    n_blocks = (padded // block_m).to(torch.int64)
    block_expert[: int(n_blocks.sum())] = torch.repeat_interleave(
        torch.arange(num_experts, dtype=torch.int32, device=dev), n_blocks
    )
    return RoutingMeta(sorted_ids, block_expert, padded_offsets.to(torch.int32), counts.to(torch.int32), block_m,
                       n, topk_ids.shape[1])


@triton.jit
def _histogram_kernel(ids_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    """Program e counts how many of the N assignments chose expert e."""
    e = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ids = tl.load(ids_ptr + offs, mask=offs < N, other=-1)
        acc += (ids == e).to(tl.int32)
    tl.store(counts_ptr + e, tl.sum(acc, axis=0))


@triton.jit
def _padded_offsets_kernel(counts_ptr, padded_offsets_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """One program: round every count up to BLOCK_M and prefix-sum into start offsets."""
    e = tl.arange(0, BLOCK_E)
    c = tl.load(counts_ptr + e, mask=e < E, other=0)
    padded = (c + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    tl.store(padded_offsets_ptr + 1 + e, tl.cumsum(padded, axis=0), mask=e < E)
    tl.store(padded_offsets_ptr + e, tl.zeros([BLOCK_E], dtype=tl.int32), mask=e == 0)


@triton.jit
def _scatter_kernel(ids_ptr, padded_offsets_ptr, sorted_ids_ptr, block_expert_ptr, N,
                    BLOCK_M: tl.constexpr, BLOCK: tl.constexpr):
    """Program e writes the positions of its assignments (in order) and claims its row blocks."""
    e = tl.program_id(0)
    start = tl.load(padded_offsets_ptr + e)
    end = tl.load(padded_offsets_ptr + e + 1)
    for b in range(start // BLOCK_M, end // BLOCK_M):
        tl.store(block_expert_ptr + b, e)
    running = start
    for s in range(0, N, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        ids = tl.load(ids_ptr + offs, mask=offs < N, other=-1)
        hit = (ids == e).to(tl.int32)
        # inclusive prefix count of hits gives each hit its slot after the ones already placed
        pos = running + tl.cumsum(hit, axis=0) - 1
        tl.store(sorted_ids_ptr + pos, offs, mask=hit > 0)
        running += tl.sum(hit, axis=0)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *, scan_block: int = 128) -> RoutingMeta:
    """Routing metadata in Triton: histogram -> padded offsets -> stable scatter (three launches).

    topk_ids [T, K] int64 with values in [0, num_experts). Returns ``RoutingMeta`` (int32 tensors).
    """
    _check_align_args(topk_ids, num_experts, block_m)
    if scan_block < 1 or scan_block & (scan_block - 1):
        raise ValueError(f"scan_block must be a power of two, got {scan_block}")
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).contiguous()
    n = flat.numel()
    nb = max_blocks(n, num_experts, block_m)
    counts = torch.empty(num_experts, dtype=torch.int32, device=dev)
    padded_offsets = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
    sorted_ids = torch.full((nb * block_m,), n, dtype=torch.int32, device=dev)
    block_expert = torch.full((nb,), -1, dtype=torch.int32, device=dev)
    _histogram_kernel[(num_experts,)](flat, counts, n, BLOCK=scan_block)
    _padded_offsets_kernel[(1,)](counts, padded_offsets, num_experts, BLOCK_M=block_m,
                                 BLOCK_E=triton.next_power_of_2(num_experts))
    _scatter_kernel[(num_experts,)](flat, padded_offsets, sorted_ids, block_expert, n, BLOCK_M=block_m,
                                    BLOCK=scan_block)
    return RoutingMeta(sorted_ids, block_expert, padded_offsets, counts, block_m, n, topk_ids.shape[1])
