"""MoonViT-3D encoder: patch embedding + position tables, pre-LN transformer blocks with 2D RoPE, final LN.

Shapes: packed patches ``[L, 3*p*p]`` -> tokens ``[L, D]``; every block keeps ``[L, D]``; attention is
block-diagonal over ``cu_seqlens`` (joint space-time attention inside a video chunk, nothing across items).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from k25mini.config import VisionConfig
from k25mini.vision.attention import varlen_attention
from k25mini.vision.rope import apply_rope_2d

__all__ = ["sincos_time_table", "PositionEmbedding", "PatchEmbed", "MLP2", "EncoderBlock", "MoonViT3dEncoder"]


def sincos_time_table(num_frames: int, dim: int) -> torch.Tensor:
    """Fixed 1D sin-cos table ``[num_frames, dim]``: ``[sin(t*w_i), cos(t*w_i)]``, ``w_i = 10000^(-2i/dim)``."""
    if dim % 2:
        raise ValueError(f"dim must be even for a sin-cos table, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    ang = torch.arange(num_frames, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1).float()


class PositionEmbedding(nn.Module):
    """Learnable 2D table ``[H0, W0, D]`` bicubically resized to ``(h, w)``, plus the fixed sin-cos time
    table for chunks with ``t > 1`` (``Learnable2DInterpPosEmbDivided_fixed``)."""

    def __init__(self, height: int, width: int, num_frames: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(height, width, dim))
        self.register_buffer("time_weight", sincos_time_table(num_frames, dim), persistent=False)
        nn.init.normal_(self.weight, std=dim**-0.5)

    def grid_table(self, h: int, w: int) -> torch.Tensor:
        """``[h*w, D]`` spatial table for a grid of ``h x w`` patches."""
        if (h, w) == tuple(self.weight.shape[:2]):
            return self.weight.flatten(0, 1)
        table = F.interpolate(self.weight.permute(2, 0, 1)[None], size=(h, w), mode="bicubic", align_corners=False)
        return table[0].permute(1, 2, 0).flatten(0, 1)

    def forward(self, grid_thw: list[list[int]]) -> torch.Tensor:
        """``[sum t*h*w, D]`` position embeddings in packing order."""
        cache: dict[tuple[int, int], torch.Tensor] = {}
        out = []
        for t, h, w in grid_thw:
            if (h, w) not in cache:
                cache[(h, w)] = self.grid_table(h, w)
            pe = cache[(h, w)]
            if t > 1:
                pe = (pe[None] + self.time_weight[:t, None, :].to(pe.dtype)).flatten(0, 1)
            out.append(pe)
        return torch.cat(out, dim=0)


class PatchEmbed(nn.Module):
    """``Conv2d(3, D, p, stride=p)`` applied to pre-cut patches (a linear map), plus position embeddings."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_emb = PositionEmbedding(cfg.init_pos_emb_height, cfg.init_pos_emb_width, cfg.init_pos_emb_time,
                                         cfg.hidden_size)

    def forward(self, patches: torch.Tensor, grid_thw: list[list[int]]) -> torch.Tensor:
        """``patches [L, 3*p*p]`` -> ``[L, D]``; a conv with kernel = stride = p over one patch is a matmul."""
        x = F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)
        return x + self.pos_emb(grid_thw).to(x.dtype)


class MLP2(nn.Module):
    """``fc1(GELU_tanh(fc0(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(dim, hidden)
        self.fc1 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x += wo(attn(rope(wqkv(norm0(x)))))``; ``x += mlp(norm1(x))``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.norm0 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.norm1 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.wqkv = nn.Linear(D, 3 * D)
        self.wo = nn.Linear(D, D)
        self.mlp = MLP2(D, cfg.intermediate_size)

    def attention(self, x: torch.Tensor, cu_seqlens: torch.Tensor, angles: torch.Tensor,
                  backend: str | None = None) -> torch.Tensor:
        """``x [L, D]`` -> ``[L, D]``: RoPE'd q, k; attention within each packed item only."""
        L = x.shape[0]
        q, k, v = self.wqkv(x).view(L, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_rope_2d(q, angles), apply_rope_2d(k, angles)
        o = varlen_attention(q, k, v, cu_seqlens, backend=backend)
        return self.wo(o.reshape(L, -1))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, angles: torch.Tensor,
                backend: str | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm0(x), cu_seqlens, angles, backend)
        return x + self.mlp(self.norm1(x))


class MoonViT3dEncoder(nn.Module):
    """``num_hidden_layers`` blocks and a final LayerNorm over packed tokens ``[L, D]``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # a plain scaled init; the real model starts from SigLIP weights we do not have
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, angles: torch.Tensor,
                backend: str | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, cu_seqlens, angles, backend)
        return self.final_layernorm(x)
