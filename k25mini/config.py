"""Model configurations: MoonViT-3D vision tower, K2 text backbone (MLA + MoE), whole K2.5.

Field names follow the published Hugging Face ``config.json`` files (DeepSeek-V3 names for the
text backbone, ``KimiK25VisionConfig`` names for the vision tower) so that
:func:`from_hf_config` is a near 1:1 mapping. Presets are plain functions: :func:`nano`,
:func:`small` (toy sizes for CPU), :func:`k2` and :func:`k25` (the published shapes; build them
on the meta device). :func:`count_params` counts parameters analytically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VisionConfig",
    "TextConfig",
    "ModelConfig",
    "ParamCount",
    "PRESETS",
    "nano",
    "small",
    "k2",
    "k25",
    "preset",
    "from_hf_config",
    "to_hf_config",
    "hf_rope_interleave",
    "HF_LATENT_NORM_EPS",
    "count_params",
    "kv_cache_bytes_per_token",
]


def _check_pos_int(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{type(obj).__name__}.{n} must be an int, got {v!r}")
        if v < 0 or (v == 0 and not allow_zero):
            want = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{type(obj).__name__}.{n} must be {want}, got {v}")


# the model computes in float32 (or narrower): a scalar beyond this would be inf there
_FLOAT32_MAX = 3.4028234663852886e38


def _check_pos_float(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad or v < 0 or (v == 0 and not allow_zero) or v > _FLOAT32_MAX:
            want = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{type(obj).__name__}.{n} must be a finite number {want} (at most float32's max "
                             f"{_FLOAT32_MAX:.4g}), got {v!r}")


def _check_bool(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, bool):  # "yes", 1 or None would be taken as a truth value without a word
            raise ValueError(f"{type(obj).__name__}.{n} must be True or False, got {v!r}")


def _check_rope_theta(obj: Any) -> None:
    if obj.rope_theta <= 1:  # RoPE frequencies base**(-2i/d) decay with i only for a base > 1
        raise ValueError(f"{type(obj).__name__}.rope_theta must be > 1, got {obj.rope_theta!r}")


_YARN_KEYS = {"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
              "mscale_all_dim"}


def _check_yarn(rs: Any) -> None:
    """TextConfig.rope_scaling: None or a YaRN dict whose every value k25mini.model.rope reads is usable."""
    if not isinstance(rs, dict) or rs.get("type", rs.get("rope_type")) not in ("yarn",):
        raise ValueError(f"TextConfig.rope_scaling must be None or a YaRN dict, got {rs!r}")
    unknown = sorted(set(rs) - _YARN_KEYS)
    if unknown:  # k25mini.model.rope would ignore them without a word
        raise ValueError(f"TextConfig.rope_scaling has keys {unknown} that k25mini does not read; "
                         f"expected some of {sorted(_YARN_KEYS)}")

    def num(key: str) -> bool:
        v = rs.get(key)
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    if not num("factor") or rs["factor"] < 1:
        raise ValueError(f"TextConfig.rope_scaling['factor'] must be a finite number >= 1, got {rs.get('factor')!r}")
    orig = rs.get("original_max_position_embeddings")
    if orig is not None and (isinstance(orig, bool) or not isinstance(orig, int) or orig < 1):
        raise ValueError(f"TextConfig.rope_scaling['original_max_position_embeddings'] must be an int >= 1, "
                         f"got {orig!r}")
    for key in ("beta_fast", "beta_slow"):
        if key in rs and (not num(key) or rs[key] <= 0):
            raise ValueError(f"TextConfig.rope_scaling['{key}'] must be a finite number > 0, got {rs[key]!r}")
    for key in ("mscale", "mscale_all_dim"):
        if key in rs and not num(key):
            raise ValueError(f"TextConfig.rope_scaling['{key}'] must be a finite number, got {rs[key]!r}")


# --------------------------------------------------------------------------------------------
# Vision tower (MoonViT-3D) + projector
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisionConfig:
    """MoonViT-3D. Published values (K2.5): patch 14, width 1152, 27 layers, 16 heads, MLP 4304."""

    patch_size: int = 14
    hidden_size: int = 1152
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    init_pos_emb_height: int = 64  # learnable 2D position table, interpolated to (h, w)
    init_pos_emb_width: int = 64
    init_pos_emb_time: int = 4  # frames per video chunk covered by the fixed temporal table
    merge_kernel_size: tuple[int, int] = (2, 2)  # spatial 2x2 merge before the projector
    temporal_chunk_size: int = 4  # "up to four consecutive frames" form one chunk
    rope_theta: float = 10000.0
    rope_max_height: int = 512
    rope_max_width: int = 512
    # the published tower builds its block and final norms as nn.LayerNorm(hidden) (PyTorch's default eps 1e-5);
    # its config.json has no layer_norm_eps key (docs/interop.md)
    layer_norm_eps: float = 1e-5
    projector_ln_eps: float = 1e-5
    pos_emb_type: str = "divided_fixed"
    merge_type: str = "sd2_tpool"
    video_attn_type: str = "spatial_temporal"
    mm_projector_type: str = "patchmerger"
    projector_hidden_act: str = "gelu"
    min_patches: int = 4  # preprocessing budget (patches per image/frame, before merging)
    max_patches: int = 4096
    # k25mini's own departure from the paper (issue #15), off in every preset: a learned row + column embedding of
    # the *merged* grid added to the projector's output, so that each vision token says where it sits in the
    # picture (the published projector has none; interop refuses to export it). Tables of init_pos_emb_height /
    # init_pos_emb_width entries, linearly resampled to each picture's merged grid.
    grid_pos_emb: bool = False

    def __post_init__(self) -> None:
        _check_pos_int(
            self,
            "patch_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "init_pos_emb_height",
            "init_pos_emb_width",
            "init_pos_emb_time",
            "temporal_chunk_size",
            "rope_max_height",
            "rope_max_width",
            "min_patches",
            "max_patches",
        )
        _check_pos_float(self, "rope_theta", "layer_norm_eps", "projector_ln_eps")
        if not isinstance(self.grid_pos_emb, bool):
            raise ValueError(f"VisionConfig.grid_pos_emb must be True or False, got {self.grid_pos_emb!r}")
        _check_rope_theta(self)
        mk = self.merge_kernel_size
        if (
            not isinstance(mk, tuple)
            or len(mk) != 2
            or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in mk)
        ):
            raise ValueError(f"VisionConfig.merge_kernel_size must be a pair of ints > 0, got {mk!r}")
        if self.temporal_chunk_size > self.init_pos_emb_time:
            raise ValueError(f"VisionConfig.temporal_chunk_size ({self.temporal_chunk_size}) must be <= "
                             f"init_pos_emb_time ({self.init_pos_emb_time}): every chunk frame needs a temporal "
                             "embedding")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"VisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"VisionConfig head_dim = hidden_size/num_attention_heads = {self.head_dim} must be a "
                "multiple of 4 (2D RoPE rotates pairs on two axes)"
            )
        if self.min_patches > self.max_patches:
            raise ValueError(
                f"VisionConfig.min_patches ({self.min_patches}) must be <= max_patches ({self.max_patches})"
            )
        # preprocessing resizes every picture to a grid of whole merge units inside the budget and the RoPE table:
        # at least one such grid must exist (k25mini.vision.preprocess.target_grid)
        mh, mw = mk
        if self.rope_max_height < mh or self.rope_max_width < mw:
            raise ValueError(f"VisionConfig.rope_max_height x rope_max_width ({self.rope_max_height} x "
                             f"{self.rope_max_width}) must hold one merge_kernel_size unit {mk}")
        area = mh * mw
        min_units, max_units = -(-self.min_patches // area), self.max_patches // area
        if max_units < 1 or min_units > max_units:
            raise ValueError(f"VisionConfig.min_patches..max_patches ({self.min_patches}..{self.max_patches}) must "
                             f"contain a multiple of the merge area {area} (whole {mh}x{mw} merge units)")
        table_units = (self.rope_max_height // mh) * (self.rope_max_width // mw)
        if min_units > table_units:
            raise ValueError(f"VisionConfig.min_patches ({self.min_patches}) needs {min_units} merge units but the "
                             f"RoPE table rope_max_height x rope_max_width holds {table_units}")
        for name, allowed in (
            ("pos_emb_type", ("divided_fixed",)),
            ("merge_type", ("sd2_tpool",)),
            ("video_attn_type", ("spatial_temporal",)),
            ("mm_projector_type", ("patchmerger",)),
            ("projector_hidden_act", ("gelu",)),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"VisionConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def merge_area(self) -> int:
        return self.merge_kernel_size[0] * self.merge_kernel_size[1]

    @property
    def mm_hidden_size(self) -> int:
        """Projector width: merged 2x2 patch = 4 * hidden."""
        return self.merge_area * self.hidden_size


# --------------------------------------------------------------------------------------------
# Text backbone (K2 = DeepSeek-V3 architecture: MLA + MoE)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextConfig:
    """K2 text backbone. Defaults are the published Kimi-K2 values."""

    vocab_size: int = 163840
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense FFN of the first_k_dense_replace layers
    moe_intermediate_size: int = 2048  # per-expert FFN width
    num_hidden_layers: int = 61
    num_attention_heads: int = 64
    # MLA
    q_lora_rank: int | None = 1536  # None: plain q projection (no low-rank q)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # MoE
    n_routed_experts: int = 384
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 2.827
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    aux_loss_alpha: float = 1e-3  # sequence-level balance loss weight (0 disables)
    bias_update_rate: float = 1e-3  # aux-loss-free selection-bias update rate
    # positions / norms
    rope_theta: float = 50000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        _check_pos_int(
            self,
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "moe_intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "kv_lora_rank",
            "qk_rope_head_dim",
            "v_head_dim",
            "n_routed_experts",
            "num_experts_per_tok",
            "n_group",
            "topk_group",
            "max_position_embeddings",
        )
        _check_pos_int(self, "qk_nope_head_dim", "n_shared_experts", "first_k_dense_replace", allow_zero=True)
        if self.q_lora_rank is not None:
            _check_pos_int(self, "q_lora_rank")
        _check_pos_float(self, "routed_scaling_factor", "rope_theta", "rms_norm_eps")
        _check_pos_float(self, "aux_loss_alpha", "bias_update_rate", allow_zero=True)
        _check_rope_theta(self)
        _check_bool(self, "norm_topk_prob", "tie_word_embeddings")
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(
                f"TextConfig.num_experts_per_tok ({self.num_experts_per_tok}) must be <= "
                f"n_routed_experts ({self.n_routed_experts})"
            )
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError(
                f"TextConfig.first_k_dense_replace ({self.first_k_dense_replace}) must be <= "
                f"num_hidden_layers ({self.num_hidden_layers})"
            )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"TextConfig.qk_rope_head_dim must be even (RoPE pairs), got {self.qk_rope_head_dim}")
        if self.n_routed_experts % self.n_group:
            raise ValueError(
                f"TextConfig.n_group ({self.n_group}) must divide n_routed_experts ({self.n_routed_experts})"
            )
        if self.topk_group > self.n_group:
            raise ValueError(f"TextConfig.topk_group ({self.topk_group}) must be <= n_group ({self.n_group})")
        eligible = self.topk_group * (self.n_routed_experts // self.n_group)
        if self.num_experts_per_tok > eligible:  # the router could only fail at the first forward
            raise ValueError(
                f"TextConfig.num_experts_per_tok ({self.num_experts_per_tok}) must be <= the experts of the "
                f"topk_group={self.topk_group} groups a token may use ({eligible} = topk_group * n_routed_experts"
                f" / n_group)"
            )
        if self.topk_method not in ("noaux_tc",):
            raise ValueError(f"TextConfig.topk_method must be 'noaux_tc', got {self.topk_method!r}")
        if self.scoring_func not in ("sigmoid",):
            raise ValueError(f"TextConfig.scoring_func must be 'sigmoid', got {self.scoring_func!r}")
        if self.rope_scaling is not None:
            _check_yarn(self.rope_scaling)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """K2.5 = optional MoonViT-3D vision tower + projector + K2 text backbone."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig | None = None
    media_placeholder_token_id: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.text, TextConfig):
            raise ValueError(f"ModelConfig.text must be a TextConfig, got {type(self.text).__name__}")
        if self.vision is not None and not isinstance(self.vision, VisionConfig):
            raise ValueError(f"ModelConfig.vision must be a VisionConfig or None, got {type(self.vision).__name__}")
        if not isinstance(self.name, str):
            raise ValueError(f"ModelConfig.name must be a str, got {self.name!r}")
        tid = self.media_placeholder_token_id
        bad_type = isinstance(tid, bool) or not isinstance(tid, int)
        if tid is not None and (bad_type or not 0 <= tid < self.text.vocab_size):
            raise ValueError(
                f"ModelConfig.media_placeholder_token_id must be an int in [0, vocab_size={self.text.vocab_size}), "
                f"got {tid!r}"
            )

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict` (our own format; use :func:`from_hf_config` for HF files)."""
        d = dict(d)
        text = TextConfig(**d.pop("text"))
        v = d.pop("vision", None)
        vision = None if v is None else VisionConfig(**{**v, "merge_kernel_size": tuple(v["merge_kernel_size"])})
        return cls(text=text, vision=vision, **d)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
TOY_VOCAB = 512  # byte-level toy tokenizer (256 bytes + special tokens) fits in 512 ids
TOY_MEDIA_PAD_ID = 256 + 2  # id of <|media_pad|> in the toy tokenizer (k25mini.data)

_K2_ROPE_SCALING = {
    "type": "yarn",
    "factor": 32.0,
    "original_max_position_embeddings": 4096,
    "beta_fast": 1.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}


def nano() -> ModelConfig:
    """A few-hundred-thousand-parameter K2.5 that trains in minutes on a laptop CPU."""
    text = TextConfig(
        vocab_size=TOY_VOCAB,
        hidden_size=64,
        intermediate_size=192,
        moe_intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        routed_scaling_factor=1.0,
        rope_theta=10000.0,
        max_position_embeddings=1024,
    )
    vision = VisionConfig(
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        init_pos_emb_height=16,
        init_pos_emb_width=16,
        rope_max_height=64,
        rope_max_width=64,
        min_patches=4,
        max_patches=256,
    )
    return ModelConfig(text=text, vision=vision, media_placeholder_token_id=TOY_MEDIA_PAD_ID, name="nano")


def small() -> ModelConfig:
    """A few-million-parameter K2.5 for longer CPU runs or one GPU."""
    text = TextConfig(
        vocab_size=TOY_VOCAB,
        hidden_size=256,
        intermediate_size=768,
        moe_intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=8,
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_shared_experts=1,
        first_k_dense_replace=1,
        routed_scaling_factor=2.0,
        rope_theta=10000.0,
        max_position_embeddings=4096,
    )
    vision = VisionConfig(
        patch_size=14,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=768,
        init_pos_emb_height=32,
        init_pos_emb_width=32,
        rope_max_height=128,
        rope_max_width=128,
        min_patches=4,
        max_patches=1024,
    )
    return ModelConfig(text=text, vision=vision, media_placeholder_token_id=TOY_MEDIA_PAD_ID, name="small")


def k2() -> ModelConfig:
    """Kimi K2 as published (text only): 61 layers, 384 experts top-8, MLA, 1.04T/32B."""
    return ModelConfig(text=TextConfig(rope_scaling=dict(_K2_ROPE_SCALING)), vision=None, name="k2")


K25_MEDIA_PAD_ID = 163605


def k25() -> ModelConfig:
    """Kimi K2.5 as published: the K2 backbone (256K context) + MoonViT-3D + patch-merger MLP."""
    rs = dict(_K2_ROPE_SCALING, factor=64.0)
    text = TextConfig(rope_scaling=rs, max_position_embeddings=262144)
    return ModelConfig(text=text, vision=VisionConfig(), media_placeholder_token_id=K25_MEDIA_PAD_ID, name="k25")


PRESETS = {"nano": nano, "small": small, "k2": k2, "k25": k25}


def preset(name: str) -> ModelConfig:
    """A preset by name: one of ``nano``, ``small``, ``k2``, ``k25``."""
    if name not in PRESETS:
        raise ValueError(f"preset name {name!r} is unknown; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig
# --------------------------------------------------------------------------------------------
_TEXT_KEYS = {f.name for f in dataclasses.fields(TextConfig)}
# temporal_chunk_size / min_patches / max_patches are processor settings in the published files; we accept them
# in vision_config too so our own presets round-trip.
_VISION_KEYS = {f.name for f in dataclasses.fields(VisionConfig)}
# keys that carry no architecture information for us (bookkeeping, dtype, tokens ids, ...)
_TEXT_IGNORED = {
    "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "attention_dropout",
    "pretraining_tp", "ep_size", "seq_aux", "moe_layer_freq", "num_key_value_heads", "hidden_act",
    "attention_bias", "num_nextn_predict_layers", "quantization_config", "_name_or_path", "rope_interleave",
    "return_dict", "output_hidden_states", "output_attentions", "tokenizer_class", "id2label", "label2id",
    # written by transformers v5's DeepseekV3Config.to_dict(); rope_parameters is read by _rope_from_hf,
    # head_dim / qk_head_dim are derived values checked in _text_from_hf
    "chunk_size_feed_forward", "is_encoder_decoder", "problem_type", "output_router_logits", "rope_parameters",
    "head_dim", "qk_head_dim",
}
# transformers fixes eps = 1e-6 for q_a_layernorm / kv_a_layernorm (DeepseekV3RMSNorm's default); k25mini uses
# rms_norm_eps for every RMSNorm (docs/interop.md)
HF_LATENT_NORM_EPS = 1e-6
_VISION_IGNORED = {
    "model_type", "torch_dtype", "dtype", "transformers_version", "_attn_implementation", "text_hidden_size",
    "mm_hidden_size", "_name_or_path",
}
_TOP_IGNORED = {
    "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "ignore_index", "tie_word_embeddings", "_name_or_path",
    "use_unified_vision_chunk", "video_placeholder",
}


def _check_equal(field_name: str, got: Any, want: Any) -> None:
    if got != want:
        raise ValueError(f"config.json: {field_name}={got!r} conflicts with this model ({want!r} required)")


def _text_from_hf(d: dict, where: str) -> TextConfig:
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k in _TEXT_KEYS:
            kw[k] = v
        elif k not in _TEXT_IGNORED:
            warnings.warn(f"config.json: unknown key {where}{k!r} ignored", stacklevel=3)
    heads = d.get("num_attention_heads", TextConfig.num_attention_heads)
    if "num_key_value_heads" in d and d["num_key_value_heads"] != heads:
        _check_equal(f"{where}num_key_value_heads", d["num_key_value_heads"], heads)
    if "hidden_act" in d:
        _check_equal(f"{where}hidden_act", d["hidden_act"], "silu")
    if "moe_layer_freq" in d:
        _check_equal(f"{where}moe_layer_freq", d["moe_layer_freq"], 1)
    if d.get("attention_bias", False):
        _check_equal(f"{where}attention_bias", d["attention_bias"], False)
    if d.get("num_nextn_predict_layers", 0):
        warnings.warn(
            f"config.json: {where}num_nextn_predict_layers={d['num_nextn_predict_layers']} (MTP) is not built",
            stacklevel=3,
        )
    nope = d.get("qk_nope_head_dim", TextConfig.qk_nope_head_dim)
    rope = d.get("qk_rope_head_dim", TextConfig.qk_rope_head_dim)
    if d.get("head_dim") is not None:  # transformers sets head_dim = qk_rope_head_dim (the RoPE width)
        _check_equal(f"{where}head_dim", d["head_dim"], rope)
    if d.get("qk_head_dim") is not None:
        _check_equal(f"{where}qk_head_dim", d["qk_head_dim"], nope + rope)
    kw["rope_theta"], kw["rope_scaling"] = _rope_from_hf(d, where)
    if not isinstance(d.get("rope_interleave", True), bool):
        raise ValueError(f"config.json: {where}rope_interleave must be true or false, got {d['rope_interleave']!r}")
    eps = d.get("rms_norm_eps", TextConfig.rms_norm_eps)
    if eps != HF_LATENT_NORM_EPS:
        warnings.warn(
            f"config.json: {where}rms_norm_eps={eps!r}: transformers' DeepseekV3 uses 1e-6 for q_a_layernorm and "
            "kv_a_layernorm whatever rms_norm_eps says, k25mini uses rms_norm_eps for them; call "
            "k25mini.interop.set_latent_norm_eps(model) for transformers' arithmetic (docs/interop.md)",
            stacklevel=3,
        )
    return TextConfig(**kw)


def _yarn_m(scale: float, k: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * k * math.log(scale) + 1.0


def _rope_from_hf(d: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from the legacy ``rope_theta`` / ``rope_scaling`` keys or transformers v5's
    ``rope_parameters``, read with transformers' semantics and written out in full, so that the package's own
    defaults for missing YaRN keys never apply to a converted config (docs/interop.md, "Edge cases")."""
    theta = d.get("rope_theta")
    rs = d.get("rope_scaling")
    rp = d.get("rope_parameters")
    if rp is not None:
        if not isinstance(rp, dict):
            raise ValueError(f"config.json: {where}rope_parameters must be a dict, got {type(rp).__name__}")
        if any(isinstance(v, dict) for v in rp.values()):
            raise ValueError(f"config.json: {where}rope_parameters per layer type is not supported, got {rp!r}")
        p_theta = rp.get("rope_theta")
        if theta is not None and p_theta is not None and theta != p_theta:
            raise ValueError(f"config.json: {where}rope_theta={theta!r} conflicts with "
                             f"rope_parameters['rope_theta']={p_theta!r}")
        theta = p_theta if p_theta is not None else theta
        p_type = rp.get("rope_type", rp.get("type", "default"))
        p_scaling = None if p_type == "default" else {k: v for k, v in rp.items() if k != "rope_theta"}
        if rs is not None and p_scaling is not None and _yarn_norm(rs, d, where, quiet=True) != _yarn_norm(
                p_scaling, d, where, quiet=True):
            raise ValueError(f"config.json: {where}rope_scaling={rs!r} conflicts with rope_parameters={rp!r}")
        if rs is not None and p_scaling is None:
            raise ValueError(f"config.json: {where}rope_scaling={rs!r} conflicts with rope_parameters={rp!r} "
                             "(rope_type 'default')")
        rs = p_scaling if p_scaling is not None else rs
    theta = TextConfig.rope_theta if theta is None else theta
    return theta, (None if rs is None else _yarn_norm(rs, d, where))


def _yarn_norm(rs: Any, d: dict, where: str, quiet: bool = False) -> dict:
    """A YaRN dict as transformers reads it, rewritten with every key explicit in k25mini's semantics."""
    if not isinstance(rs, dict) or rs.get("rope_type", rs.get("type")) != "yarn":
        raise ValueError(f"config.json: {where}rope_scaling / rope_parameters must be a YaRN dict "
                         f"(type or rope_type 'yarn') or rope_type 'default', got {rs!r}")
    if rs.get("truncate", True) is not True:
        raise ValueError(f"config.json: {where}YaRN truncate={rs['truncate']!r} is not supported (only True)")
    max_pos = d.get("max_position_embeddings", TextConfig.max_position_embeddings)
    notes = []
    orig = rs.get("original_max_position_embeddings")
    if orig is None:  # transformers' standardize_rope_params fills max_position_embeddings
        orig = max_pos
        notes.append(f"original_max_position_embeddings absent: {orig} (max_position_embeddings, as transformers)")
    factor = rs.get("factor")
    if factor is None:  # transformers: the ratio of the two context lengths
        factor = max_pos / orig
        notes.append(f"factor absent: {factor} (max_position_embeddings / original_max_position_embeddings)")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ValueError(f"config.json: {where}YaRN factor must be a number >= 1, got {factor!r}")
    mad = rs.get("mscale_all_dim") or 0.0  # transformers: only a truthy value scales the softmax
    ms = rs.get("mscale")
    af = rs.get("attention_factor")
    if af is None and ms and mad:
        mscale = float(ms)  # the published case: exactly as written
    else:
        # transformers' cos/sin multiplier: attention_factor if given, else m(s, mscale)/m(s, mscale_all_dim) only
        # when both are truthy, else m(s, 1). k25mini's multiplier is m(s, mscale)/m(s, mscale_all_dim):
        # solve for the mscale that gives the same number.
        target = float(af) if af is not None else _yarn_m(factor, 1.0)
        if factor <= 1:
            if abs(target - 1.0) > 1e-12:
                raise ValueError(f"config.json: {where}YaRN attention_factor={af!r} with factor 1 cannot be "
                                 "expressed (k25mini scales cos/sin by 1 there)")
            mscale = 1.0
        else:
            mscale = (target * _yarn_m(factor, mad) - 1.0) / (0.1 * math.log(factor))
        notes.append(f"mscale={ms!r}, mscale_all_dim={rs.get('mscale_all_dim')!r}, attention_factor={af!r}: "
                     f"cos/sin scaled by {target!r} as transformers does (k25mini mscale={mscale!r})")
    out = {
        "type": "yarn",
        "factor": float(factor),
        "original_max_position_embeddings": int(orig),
        "beta_fast": float(rs.get("beta_fast") or 32.0),  # transformers: `or 32` / `or 1`
        "beta_slow": float(rs.get("beta_slow") or 1.0),
        "mscale": mscale,
        "mscale_all_dim": float(mad),
    }
    known = {"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "attention_factor", "truncate", "rope_theta"}
    unknown = sorted(set(rs) - known)
    if unknown:
        raise ValueError(f"config.json: {where}YaRN keys {unknown} are not supported; expected some of {sorted(known)}")
    if notes and not quiet:
        warnings.warn(f"config.json: {where}YaRN edge case: " + "; ".join(notes), stacklevel=4)
    return out


def _vision_from_hf(d: dict, text_hidden: int) -> VisionConfig:
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k in _VISION_KEYS:
            kw[k] = v
        elif k not in _VISION_IGNORED:
            warnings.warn(f"config.json: unknown key vision_config.{k!r} ignored", stacklevel=3)
    if "merge_kernel_size" in kw:
        kw["merge_kernel_size"] = tuple(kw["merge_kernel_size"])
    vc = VisionConfig(**kw)
    if d.get("mm_hidden_size") is not None:
        _check_equal("vision_config.mm_hidden_size", d["mm_hidden_size"], vc.hidden_size)
    if d.get("text_hidden_size") is not None:
        _check_equal("vision_config.text_hidden_size", d["text_hidden_size"], text_hidden)
    return vc


def from_hf_config(path_or_dict: str | os.PathLike | dict) -> ModelConfig:
    """Read a Kimi-K2 (DeepSeek-V3 keys) or Kimi-K2.5 (``text_config`` + ``vision_config``) config.

    Unknown keys are warned about and ignored; keys that change the architecture in ways this
    project does not implement (e.g. GQA, a non-SiLU MLP) raise ValueError. RoPE comes from ``rope_theta`` /
    ``rope_scaling`` or transformers v5's ``rope_parameters`` (both given: they must agree), read as transformers
    reads them and stored with every YaRN key explicit (docs/interop.md). ``rope_interleave`` describes the weight
    file, not the model: read it with :func:`hf_rope_interleave`.
    """
    d = _load_json_dict(path_or_dict)

    if "text_config" in d:  # K2.5 layout
        stray = sorted(k for k in d if k in _TEXT_KEYS and k not in ("tie_word_embeddings",))
        for k in stray:  # a top-level copy of a text key is fine only if it agrees
            if k in d["text_config"] and d["text_config"][k] != d[k]:
                raise ValueError(
                    f"config.json: {k} is {d[k]!r} at top level but {d['text_config'][k]!r} in text_config"
                )
        text = _text_from_hf(d["text_config"], "text_config.")
        vision = _vision_from_hf(d["vision_config"], text.hidden_size) if d.get("vision_config") else None
        for k in d:
            if k not in ("text_config", "vision_config", "media_placeholder_token_id") and k not in _TOP_IGNORED \
                    and k not in stray:
                warnings.warn(f"config.json: unknown top-level key {k!r} ignored", stacklevel=2)
        if "tie_word_embeddings" in d and d["tie_word_embeddings"] != text.tie_word_embeddings:
            raise ValueError(
                f"config.json: tie_word_embeddings is {d['tie_word_embeddings']!r} at top level but "
                f"{text.tie_word_embeddings!r} in text_config"
            )
        tid = d.get("media_placeholder_token_id")
        name = "k25" if vision is not None else "k2"
        cfg = ModelConfig(text=text, vision=vision, media_placeholder_token_id=tid, name=name)
    else:
        if "vision_config" in d:
            raise ValueError("config.json: vision_config given without text_config (expected the K2.5 layout)")
        cfg = ModelConfig(text=_text_from_hf(d, ""), vision=None, name="k2")
    return cfg


def _load_json_dict(path_or_dict: str | os.PathLike | dict) -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise ValueError(f"path_or_dict must be a path or a dict, got {type(path_or_dict).__name__}")
    p = os.fspath(path_or_dict)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    if not os.path.isfile(p):
        raise ValueError(f"path_or_dict: no config.json at {p!r}")
    with open(p, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError("path_or_dict: config.json must hold a JSON object")
    return d


def hf_rope_interleave(path_or_dict: str | os.PathLike | dict) -> bool:
    """Whether the weights that go with this config.json store the q/k RoPE rows interleaved.

    ``rope_interleave`` (in ``text_config`` for K2.5); absent means True, as transformers assumes and as the
    published DeepSeek-V3 / Kimi checkpoints are laid out. k25mini always rotates halves, so this is a property of
    the weight file, not of :class:`TextConfig`: pass it to :mod:`k25mini.interop` when converting weights.
    """
    d = _load_json_dict(path_or_dict)
    t = d.get("text_config") if isinstance(d.get("text_config"), dict) else d
    v = t.get("rope_interleave", True)
    if not isinstance(v, bool):
        raise ValueError(f"config.json: rope_interleave must be true or false, got {v!r}")
    return v


def _yarn_to_hf(t: TextConfig) -> dict | None:
    """The package's YaRN dict with every key explicit, in terms transformers reads identically."""
    if t.rope_scaling is None:
        return None
    rs = t.rope_scaling
    factor = float(rs.get("factor", 1.0))
    orig = rs.get("original_max_position_embeddings")
    if orig is None:  # k25mini's default (model/rope.py) written out: transformers' default differs
        orig = max(1, int(t.max_position_embeddings / factor))
    ms, mad = float(rs.get("mscale", 1.0)), float(rs.get("mscale_all_dim", 0.0))
    out = {"type": "yarn", "factor": factor, "original_max_position_embeddings": int(orig),
           "beta_fast": float(rs.get("beta_fast", 32.0)), "beta_slow": float(rs.get("beta_slow", 1.0)),
           "mscale": ms, "mscale_all_dim": mad}
    if not (ms and mad):  # transformers would ignore mscale here: state the multiplier itself
        out["attention_factor"] = _yarn_m(factor, ms) / _yarn_m(factor, mad)
    return out


def to_hf_config(cfg: ModelConfig, *, rope_interleave: bool = True) -> dict:
    """Write a ModelConfig in the published layout (K2: flat; K2.5: text_config + vision_config).

    ``rope_interleave`` is written into the text config: it must say how the weights saved next to this file lay
    out their RoPE rows (:func:`k25mini.interop.to_published` takes the same flag). YaRN is written with every key
    explicit, so transformers computes the same frequencies and scales as k25mini (docs/interop.md).
    """
    if not isinstance(rope_interleave, bool):
        raise ValueError(f"rope_interleave must be True or False, got {rope_interleave!r}")
    text = dataclasses.asdict(cfg.text)
    text.update(
        model_type="deepseek_v3",
        architectures=["DeepseekV3ForCausalLM"],
        num_key_value_heads=cfg.text.num_attention_heads,
        hidden_act="silu",
        moe_layer_freq=1,
        num_nextn_predict_layers=0,
        rope_interleave=rope_interleave,
        rope_scaling=_yarn_to_hf(cfg.text),
    )
    if cfg.vision is None:
        return text
    vision = dataclasses.asdict(cfg.vision)
    vision["merge_kernel_size"] = list(cfg.vision.merge_kernel_size)
    vision.update(model_type="kimi_k25_vision", mm_hidden_size=cfg.vision.hidden_size,
                  text_hidden_size=cfg.text.hidden_size)
    out = {"architectures": ["KimiK25ForConditionalGeneration"], "model_type": "kimi_k25",
           "text_config": text, "vision_config": vision}
    if cfg.media_placeholder_token_id is not None:
        out["media_placeholder_token_id"] = cfg.media_placeholder_token_id
    return out


# --------------------------------------------------------------------------------------------
# Analytic parameter count
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamCount:
    total: int
    activated: int  # parameters touched by one token (routed experts: top-k of them)
    by_component: dict[str, int]

    def __str__(self) -> str:
        return f"total={self.total:,} activated={self.activated:,}"


def _text_components(t: TextConfig) -> dict[str, int]:
    """Module layout this project builds (no biases anywhere in the backbone):

    * embed_tokens [V, D]; lm_head [V, D] unless tied; final norm [D]
    * per layer: input + post-attention RMSNorm [D] x 2
    * MLA: q_a_proj [D -> q_lora], q_a_norm [q_lora], q_b_proj [q_lora -> H*(nope+rope)] (or q_proj [D -> H*(nope+rope)]
      when q_lora_rank is None); kv_a_proj [D -> kv_lora + rope], kv_a_norm [kv_lora],
      kv_b_proj [kv_lora -> H*(nope+v)], o_proj [H*v -> D]
    * dense SwiGLU (first_k_dense_replace layers): gate, up, down = 3 * D * intermediate
    * MoE layers: router weight [E, D] (the selection bias is a buffer, not counted),
      E routed SwiGLU experts 3 * D * moe_inter each, shared SwiGLU of width n_shared * moe_inter
    """
    D, H = t.hidden_size, t.num_attention_heads
    qk = t.qk_head_dim
    if t.q_lora_rank is None:
        q = D * H * qk
    else:
        q = D * t.q_lora_rank + t.q_lora_rank + t.q_lora_rank * H * qk
    kv_up = t.kv_lora_rank * H * (t.qk_nope_head_dim + t.v_head_dim)
    kv = D * (t.kv_lora_rank + t.qk_rope_head_dim) + t.kv_lora_rank + kv_up
    o = H * t.v_head_dim * D
    L, Ld, Lm = t.num_hidden_layers, t.first_k_dense_replace, t.num_moe_layers
    expert = 3 * D * t.moe_intermediate_size
    return {
        "embedding": t.vocab_size * D,
        "lm_head": 0 if t.tie_word_embeddings else t.vocab_size * D,
        "attention": L * (q + kv + o),
        "norms": L * 2 * D + D,
        "dense_mlp": Ld * 3 * D * t.intermediate_size,
        "router": Lm * t.n_routed_experts * D,
        "shared_experts": Lm * t.n_shared_experts * expert,
        "routed_experts": Lm * t.n_routed_experts * expert,
    }


def _vision_components(v: VisionConfig, text_hidden: int) -> dict[str, int]:
    """MoonViT-3D (all linears/norms with biases) + patch-merger projector.

    patch_embed Conv2d(3, D, p, p) with bias; learnable pos table [H0, W0, D] (the temporal sin-cos
    table is a fixed buffer); per block: 2 LayerNorms, wqkv [D -> 3D], wo [D -> D], fc0 [D -> I],
    fc1 [I -> D]; final LayerNorm; projector: LayerNorm(D), Linear(4D, 4D), Linear(4D, text_hidden), and with
    ``grid_pos_emb`` a row table [H0, text_hidden] and a column table [W0, text_hidden].
    """
    D, I, p = v.hidden_size, v.intermediate_size, v.patch_size
    block = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * I + I) + (I * D + D)
    M = v.mm_hidden_size
    return {
        "vision_tower": (3 * p * p * D + D) + v.init_pos_emb_height * v.init_pos_emb_width * D
        + v.num_hidden_layers * block + 2 * D,
        "projector": 2 * D + (M * M + M) + (M * text_hidden + text_hidden)
        + (v.init_pos_emb_height + v.init_pos_emb_width) * text_hidden * v.grid_pos_emb,
    }


def count_params(config: ModelConfig | TextConfig) -> ParamCount:
    """Total and per-token activated parameters, computed analytically from the config."""
    if isinstance(config, TextConfig):
        config = ModelConfig(text=config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig or TextConfig, got {type(config).__name__}")
    t = config.text
    comp = _text_components(t)
    if config.vision is not None:
        comp.update(_vision_components(config.vision, t.hidden_size))
    total = sum(comp.values())
    inactive = comp["routed_experts"] * (t.n_routed_experts - t.num_experts_per_tok) // t.n_routed_experts
    return ParamCount(total=total, activated=total - inactive, by_component=comp)


def kv_cache_bytes_per_token(t: TextConfig, kind: str = "mla", bytes_per_elem: int = 2) -> int:
    """KV-cache bytes per token over all layers.

    ``mla``: the compressed latent (kv_lora_rank) + the shared RoPE key (qk_rope_head_dim).
    ``mha``: full per-head keys (nope+rope) and values, as an MHA model of the same shape would cache.
    """
    if kind == "mla":
        per_layer = t.kv_lora_rank + t.qk_rope_head_dim
    elif kind == "mha":
        per_layer = t.num_attention_heads * (t.qk_head_dim + t.v_head_dim)
    else:
        raise ValueError(f"kind must be 'mla' or 'mha', got {kind!r}")
    return per_layer * t.num_hidden_layers * bytes_per_elem
