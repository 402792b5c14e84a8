"""The K2 text backbone: MLA attention, RoPE/YaRN, RMSNorm, MoE decoder.

``from k25mini.model import K2ForCausalLM, K2Model, MLAttention, MLACache, RMSNorm``
"""

from k25mini.model.cache import MLACache
from k25mini.model.decoder import DenseMLP, K2DecoderLayer, K2ForCausalLM, K2Model
from k25mini.model.masks import attention_mask, doc_ids_from_cu_seqlens, positions_from_doc_ids
from k25mini.model.mla import (
    MLAttention,
    capture_max_logits,
    collect_max_logits,
    reset_max_logits,
    set_max_logit_recording,
)
from k25mini.model.moe import MoELayer
from k25mini.model.norm import RMSNorm
from k25mini.model.rope import RotaryEmbedding, apply_rope, softmax_scale, yarn_inv_freq

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
    "DenseMLP",
    "K2DecoderLayer",
    "K2ForCausalLM",
    "K2Model",
    "MoELayer",
]
