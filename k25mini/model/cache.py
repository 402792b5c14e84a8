"""The MLA KV-cache: per layer only the compressed latent and the shared RoPE key are kept.

Per token and layer MLA stores ``kv_lora_rank + qk_rope_head_dim`` numbers (K2: 512 + 64 = 576)
instead of the ``H * (qk_head_dim + v_head_dim)`` an MHA model of the same shape would keep
(K2: 64 * (192 + 128) = 20480), 35.6x less. Keys and values are rebuilt from the latent, or never
built at all on the absorbed decode path (see :mod:`k25mini.model.mla`).
"""

from __future__ import annotations

import torch

__all__ = ["MLACache"]


class MLACache:
    """Grows by concatenation; ``c_kv[l]`` is [B, T, kv_lora_rank] (after kv_a_norm), ``k_pe[l]`` is
    [B, T, qk_rope_head_dim] (after RoPE at its absolute position)."""

    def __init__(self, num_layers: int) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"num_layers must be an int > 0, got {num_layers!r}")
        self.num_layers = num_layers
        self.c_kv: list[torch.Tensor | None] = [None] * num_layers
        self.k_pe: list[torch.Tensor | None] = [None] * num_layers

    def seq_len(self, layer_idx: int = 0) -> int:
        """Tokens already cached for ``layer_idx`` (0 when empty)."""
        c = self.c_kv[layer_idx]
        return 0 if c is None else c.shape[1]

    def update(self, layer_idx: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new [B, S, *] entries for ``layer_idx``; return the full [B, T, *] tensors."""
        if not 0 <= layer_idx < self.num_layers:
            raise ValueError(f"layer_idx must be in [0, {self.num_layers}), got {layer_idx}")
        if c_kv.shape[:2] != k_pe.shape[:2]:
            raise ValueError(f"c_kv {tuple(c_kv.shape)} and k_pe {tuple(k_pe.shape)} must agree on [B, S]")
        old_c, old_k = self.c_kv[layer_idx], self.k_pe[layer_idx]
        if old_c is not None:
            if old_c.shape[0] != c_kv.shape[0]:
                raise ValueError(f"batch size {c_kv.shape[0]} differs from the cached batch size {old_c.shape[0]}")
            c_kv = torch.cat([old_c, c_kv], dim=1)
            k_pe = torch.cat([old_k, k_pe], dim=1)
        self.c_kv[layer_idx], self.k_pe[layer_idx] = c_kv, k_pe
        return c_kv, k_pe

    def nbytes(self) -> int:
        """Bytes held by the cache over all layers."""
        return sum(t.numel() * t.element_size() for t in self.c_kv + self.k_pe if t is not None)

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (e.g. for beam search): every cached tensor becomes ``t[index]``."""
        self.c_kv = [None if t is None else t.index_select(0, index) for t in self.c_kv]
        self.k_pe = [None if t is None else t.index_select(0, index) for t in self.k_pe]
