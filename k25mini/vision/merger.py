"""After the encoder: temporal mean-pool + 2x2 spatial merge (``tpool_patch_merger``), then the MLP projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tpool_patch_merger", "PatchMergerProjector"]


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


class PatchMergerProjector(nn.Module):
    """``LayerNorm(D)`` on each of the 4 merged patches -> concat ``[4D]`` -> Linear(4D, 4D) -> GELU ->
    Linear(4D, text_hidden). Input ``[M, 4, D]`` -> ``[M, text_hidden]``."""

    def __init__(self, hidden_size: int, merge_area: int, text_hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        mm = hidden_size * merge_area
        self.pre_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.linear_1 = nn.Linear(mm, mm)
        self.linear_2 = nn.Linear(mm, text_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x).flatten(1)
        return self.linear_2(F.gelu(self.linear_1(x)))
