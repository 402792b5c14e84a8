"""NaViT patch n' pack: many images / video chunks in one sequence, no padding tokens.

The one packed format is ``(tokens [L, ...], grid_thw [N, 3], cu_seqlens [N+1] int32)`` where item ``i``
owns rows ``cu_seqlens[i]:cu_seqlens[i+1]`` and ``cu_seqlens = [0, cumsum(t*h*w)]``. Everything else
(segment ids, the block-diagonal mask, RoPE (row, col) ids, merged-token offsets) is derived from it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "PackedBatch",
    "as_grid_thw",
    "cu_seqlens_from_grid",
    "pack",
    "unpack",
    "segment_ids",
    "block_diagonal_mask",
    "rope_position_ids",
    "pad_to_max",
    "padding_stats",
]


@dataclass(frozen=True)
class PackedBatch:
    """Packed tokens: ``patches [L, 3*p*p]``, ``grid_thw [N, 3]`` (int64), ``cu_seqlens [N+1]`` (int32)."""

    patches: torch.Tensor
    grid_thw: torch.Tensor
    cu_seqlens: torch.Tensor

    @property
    def num_items(self) -> int:
        return int(self.grid_thw.shape[0])

    @property
    def seqlens(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()


def as_grid_thw(grid_thw: torch.Tensor | Sequence[Sequence[int]], name: str = "grid_thw") -> torch.Tensor:
    """Validate and return ``grid_thw`` as an int64 CPU tensor ``[N, 3]`` with every entry >= 1."""
    if not isinstance(grid_thw, torch.Tensor):
        try:
            grid_thw = torch.tensor(grid_thw)  # no dtype=: a float or bool list must fail the check below, not truncate
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # RuntimeError: an int beyond int64
            raise ValueError(f"{name} must be an int tensor [N, 3], got {grid_thw!r}") from e
    if grid_thw.dtype.is_floating_point or grid_thw.dtype.is_complex or grid_thw.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {grid_thw.dtype}")
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3] (t, h, w), got {tuple(grid_thw.shape)}")
    if grid_thw.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one item, got shape {tuple(grid_thw.shape)}")
    g = grid_thw.detach().to("cpu", torch.int64)
    if (g < 1).any():
        raise ValueError(f"{name} entries must all be >= 1, got {g.tolist()}")
    return g


def cu_seqlens_from_grid(grid_thw: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """``[0, cumsum(t*h*w)]`` as int32 ``[N+1]`` (the flash-attn varlen convention)."""
    g = as_grid_thw(grid_thw)
    total = sum(t * h * w for t, h, w in g.tolist())  # Python ints: neither int64 nor int32 can wrap here
    if total >= 2**31:
        raise ValueError(f"grid_thw holds {total} patches in all; int32 cu_seqlens hold at most 2**31 - 1")
    lens = g.prod(dim=1)
    cu = torch.zeros(g.shape[0] + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0).to(torch.int32)
    return cu if device is None else cu.to(device)


def pack(items: Sequence[torch.Tensor], grids: Sequence[Sequence[int]]) -> PackedBatch:
    """Concatenate per-item token tensors ``[t_i*h_i*w_i, ...]`` into one :class:`PackedBatch`."""
    if len(items) == 0:
        raise ValueError("items must hold at least one tensor")
    if len(items) != len(grids):
        raise ValueError(f"items and grids must have the same length, got {len(items)} and {len(grids)}")
    g = as_grid_thw([list(x) for x in grids], "grids")
    for i, (x, n) in enumerate(zip(items, g.prod(1).tolist())):
        if x.shape[0] != n:
            raise ValueError(f"items[{i}] has {x.shape[0]} rows but its grid {g[i].tolist()} needs t*h*w = {n}")
    return PackedBatch(torch.cat(list(items), dim=0), g, cu_seqlens_from_grid(g))


def unpack(x: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Split packed rows ``[L, ...]`` back into per-item tensors (views)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if sum(lens) != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but cu_seqlens covers {sum(lens)}")
    return list(torch.split(x, lens, dim=0))


def segment_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Item index of every packed row, ``[L]`` int64: ``[0,0,..,1,1,..]``."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lens.numel(), device=cu_seqlens.device), lens)


def block_diagonal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Boolean ``[L, L]``: True where query and key belong to the same item (attention allowed)."""
    seg = segment_ids(cu_seqlens)
    return seg[:, None] == seg[None, :]


def rope_position_ids(grid_thw: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """(row, col) of every packed patch, ``[L, 2]`` int64, repeated over the t frames of a chunk."""
    g = as_grid_thw(grid_thw)
    out = []
    for t, h, w in g.tolist():
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        out.append(torch.stack([rows, cols], dim=1).repeat(t, 1))
    pos = torch.cat(out, dim=0)
    return pos if device is None else pos.to(device)


def pad_to_max(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline layout: packed ``[L, ...]`` -> padded ``[N, Lmax, ...]`` and a validity mask ``[N, Lmax]``."""
    parts = unpack(x, cu_seqlens)
    lmax = max(p.shape[0] for p in parts)
    out = x.new_zeros((len(parts), lmax, *x.shape[1:]))
    valid = torch.zeros(len(parts), lmax, dtype=torch.bool, device=x.device)
    for i, p in enumerate(parts):
        out[i, : p.shape[0]] = p
        valid[i, : p.shape[0]] = True
    return out, valid


def padding_stats(seqlens: Sequence[int]) -> dict[str, float]:
    """Tokens a packed batch computes vs a pad-to-max batch, and the wasted fraction of the latter."""
    if len(seqlens) == 0:
        raise ValueError("seqlens must be non-empty")
    real = int(sum(seqlens))
    padded = len(seqlens) * int(max(seqlens))
    return {"real_tokens": real, "padded_tokens": padded, "pad_tokens": padded - real,
            "wasted_fraction": (padded - real) / padded}
