"""After the encoder: temporal mean-pool + 2x2 spatial merge (``tpool_patch_merger``), then the MLP projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tpool_patch_merger", "PatchMergerProjector", "GridPosition"]


def tpool_patch_merger(x: torch.Tensor, grid_thw: list[list[int]], merge_kernel_size: tuple[int, int] = (2, 2)
                       ) -> torch.Tensor:
    """Packed encoder output ``[sum t*h*w, D]`` -> ``[sum (h/kh)*(w/kw), kh*kw, D]``.

    Per chunk: mean over its ``t`` frames at each (row, col), then group each ``kh x kw`` block of true
    neighbours (rows ``2i, 2i+1`` x cols ``2j, 2j+1``) in (row, col) order. Output is in packing order.
    """
    kh, kw = merge_kernel_size
    D = x.shape[-1]
    out, start = [], 0
    for t, h, w in grid_thw:
        if h % kh or w % kw:
            raise ValueError(f"grid_thw: h={h}, w={w} must be multiples of the merge kernel {merge_kernel_size}")
        n = t * h * w
        xi = x[start : start + n].view(t, h // kh, kh, w // kw, kw, D).mean(0)  # temporal pooling
        out.append(xi.permute(0, 2, 1, 3, 4).reshape((h // kh) * (w // kw), kh * kw, D))
        start += n
    if start != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but grid_thw covers {start}")
    return torch.cat(out, dim=0)


class GridPosition(nn.Module):
    """A learned row table ``[rows, H]`` and column table ``[cols, H]``, each linearly resampled to a picture's
    merged grid ``(h', w')`` and summed: token ``(i, j)`` gets ``row[i] + col[j]``. Not in the paper: k25mini's
    ``VisionConfig.grid_pos_emb`` (issue #15), so the language model can read where a vision token sits."""

    def __init__(self, rows: int, cols: int, hidden: int, std: float = 0.25) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.randn(rows, hidden) * std)
        self.col = nn.Parameter(torch.randn(cols, hidden) * std)

    @staticmethod
    def _resample(table: torch.Tensor, n: int) -> torch.Tensor:
        if n == table.shape[0]:
            return table
        return F.interpolate(table.t()[None], size=n, mode="linear", align_corners=False)[0].t()

    def forward(self, grids: list[tuple[int, int]]) -> torch.Tensor:
        """``grids``: merged ``(h', w')`` per chunk, in packing order -> ``[sum h'*w', H]`` (row-major per chunk)."""
        out = []
        for h, w in grids:
            r, c = self._resample(self.row, h), self._resample(self.col, w)
            out.append((r[:, None, :] + c[None, :, :]).reshape(h * w, -1))
        return torch.cat(out, dim=0) if out else self.row.new_zeros(0, self.row.shape[1])


class PatchMergerProjector(nn.Module):
    """``LayerNorm(D)`` on each of the 4 merged patches -> concat ``[4D]`` -> Linear(4D, 4D) -> GELU ->
    Linear(4D, text_hidden). Input ``[M, 4, D]`` -> ``[M, text_hidden]``.

    With ``grid_table=(rows, cols)`` (k25mini's ``grid_pos_emb``, not the paper's) a :class:`GridPosition` is
    added to the output, and ``forward`` needs each chunk's merged grid."""

    def __init__(self, hidden_size: int, merge_area: int, text_hidden_size: int, eps: float = 1e-5,
                 grid_table: tuple[int, int] | None = None) -> None:
        super().__init__()
        mm = hidden_size * merge_area
        self.pre_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.linear_1 = nn.Linear(mm, mm)
        self.linear_2 = nn.Linear(mm, text_hidden_size)
        self.grid_pos = None if grid_table is None else GridPosition(*grid_table, text_hidden_size)

    def forward(self, x: torch.Tensor, grids: list[tuple[int, int]] | None = None) -> torch.Tensor:
        y = self.linear_2(F.gelu(self.linear_1(self.pre_norm(x).flatten(1))))
        if self.grid_pos is None:
            return y
        if grids is None:
            raise ValueError("grids (each chunk's merged (h, w)) is required when the projector has grid_pos")
        if sum(h * w for h, w in grids) != y.shape[0]:
            raise ValueError(f"grids {grids} cover {sum(h * w for h, w in grids)} tokens, x has {y.shape[0]}")
        return y + self.grid_pos(grids).to(y.dtype)
