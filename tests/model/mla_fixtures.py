"""Shared builders for the MLA tests: a tiny TextConfig and an MLA layer with non-trivial random weights."""

from __future__ import annotations

import torch

from k25mini.config import TextConfig
from k25mini.model.mla import MLAttention
from k25mini.model.rope import RotaryEmbedding


def tiny_cfg(**kw) -> TextConfig:
    base = dict(
        vocab_size=64, hidden_size=24, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=3, q_lora_rank=12, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4,
        v_head_dim=5, n_routed_experts=4, num_experts_per_tok=2, rope_theta=100.0, max_position_embeddings=64,
    )
    base.update(kw)
    return TextConfig(**base)


def make_mla(cfg: TextConfig, seed: int = 0, dtype=torch.float64) -> tuple[MLAttention, RotaryEmbedding]:
    torch.manual_seed(seed)
    attn = MLAttention(cfg).to(dtype)
    with torch.no_grad():
        for p in attn.parameters():  # non-trivial norm weights too
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 2 else 1.0) + (1.0 if p.ndim == 1 else 0.0))
    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
    return attn, rope
