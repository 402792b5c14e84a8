"""2D RoPE on (row, col) for the vision tower (MoonViT's ``Rope2DPosEmbRepeated``).

A head of width ``d`` is seen as ``d/2`` adjacent pairs (dims ``2j, 2j+1``). There are ``d/4`` frequencies
``f_k = theta^(-4k/d)``; pair ``2k`` turns by ``col * f_k`` (the x / width axis) and pair ``2k+1`` by
``row * f_k`` (the y / height axis), so x and y interleave. The same spatial angles are repeated over the
frames of a video chunk: there is no temporal RoPE (time is carried by the fixed sin-cos table instead).
"""

from __future__ import annotations

import torch

__all__ = ["rope_frequencies", "rope_angles", "apply_rope_2d"]


def rope_frequencies(head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The ``head_dim/4`` per-axis frequencies ``theta^(-4k/head_dim)``, ``[head_dim/4]``."""
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 for 2D RoPE, got {head_dim}")
    k = torch.arange(0, head_dim, 4, dtype=torch.float64, device=device)
    return (1.0 / theta ** (k / head_dim)).to(dtype)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotation angle of every pair: ``pos [L, 2]`` (row, col) -> ``[L, head_dim/2]``, x and y interleaved."""
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"pos must have shape [L, 2] (row, col), got {tuple(pos.shape)}")
    f = rope_frequencies(head_dim, theta, torch.float64, pos.device)
    row = pos[:, 0:1].to(torch.float64) * f  # [L, d/4]
    col = pos[:, 1:2].to(torch.float64) * f
    # compute in float64 then cast: large positions x high frequencies lose precision in float32 products
    return torch.stack([col, row], dim=-1).flatten(1).to(dtype)


def apply_rope_2d(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x [L, H, d]`` by ``angles [L, d/2]`` (broadcast over heads)."""
    if x.shape[-1] != 2 * angles.shape[-1] or x.shape[0] != angles.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and angles {tuple(angles.shape)} do not match ([L, H, d] vs [L, d/2])")
    cos = angles.cos().to(x.dtype)[:, None, :]
    sin = angles.sin().to(x.dtype)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
