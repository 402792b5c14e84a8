"""The K2 text backbone: MLA attention, RoPE/YaRN, RMSNorm, MoE decoder.

``from k25mini.model import K2ForCausalLM, K2Model, MLAttention, MLACache, RMSNorm``
(the decoder and MoE layer are imported lazily, on first use).
"""

from __future__ import annotations

from typing import Any

from k25mini.model.cache import MLACache
from k25mini.model.masks import attention_mask, doc_ids_from_cu_seqlens, positions_from_doc_ids
from k25mini.model.mla import (
    MLAttention,
    capture_max_logits,
    collect_max_logits,
    reset_max_logits,
    set_max_logit_recording,
)
from k25mini.model.norm import RMSNorm
from k25mini.model.rope import RotaryEmbedding, apply_rope, softmax_scale, yarn_inv_freq

# name -> submodule; imported on first use
_LAZY = {
    "K2Model": "decoder",
    "K2ForCausalLM": "decoder",
    "K2DecoderLayer": "decoder",
    "DenseMLP": "decoder",
    "MoELayer": "moe",
}

__all__ = [
    "MLACache",
    "MLAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rope",
    "softmax_scale",
    "yarn_inv_freq",
    "attention_mask",
    "doc_ids_from_cu_seqlens",
    "positions_from_doc_ids",
    "capture_max_logits",
    "collect_max_logits",
    "reset_max_logits",
    "set_max_logit_recording",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"k25mini.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'k25mini.model' has no attribute {name!r}")
