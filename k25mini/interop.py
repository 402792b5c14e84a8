"""Weights in the published Kimi-K2 / DeepSeek-V3 / Kimi-K2.5 parameter names, and the sharded safetensors layout.

k25mini's module names follow the published checkpoints except in a few places (docs/interop.md has the full
table): the MLA latent norms (``q_a_norm`` / ``kv_a_norm`` here, ``q_a_layernorm`` / ``kv_a_layernorm`` there),
``kv_a_proj`` (``kv_a_proj_with_mqa``), the router (``mlp.router`` here, ``mlp.gate`` there, with the same
``e_score_correction_bias``), the routed experts (two 3-D tensors here, ``w_gate_up`` [E, D, 2F] and ``w_down``
[E, F, D]; one ``nn.Linear`` per expert in the published files, ``[E, 2F, D]`` / ``[E, D, F]`` in transformers v5)
and, for K2.5, the projector (``vision_tower.projector`` here, ``mm_projector`` there).

RoPE rows: k25mini rotates halves (pair ``i`` of a head's rope dims is ``(x[i], x[i + d/2])``); the published
checkpoints (``rope_interleave``, transformers' default True) rotate adjacent pairs ``(x[2i], x[2i + 1])``. The
attention logits are the same when the rope rows of ``q_b_proj`` (or ``q_proj``) and of ``kv_a_proj_with_mqa`` are
permuted: k25mini row ``j`` = published row ``perm[j]`` with ``perm = [0, 2, 4, ..., 1, 3, 5, ...]``.

* :func:`to_published` / :func:`from_published`: state dict <-> published names (exact round trip).
* :func:`load_published`: load published-name tensors into a k25mini model (strict: missing, unexpected and
  mis-shaped tensors raise ValueError naming them).
* :func:`save_sharded` / :func:`load_sharded`: ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``.
* :func:`save_pretrained` / :func:`load_pretrained`: config.json + sharded weights in one folder, written to a
  temporary folder first and renamed into place (an existing checkpoint is never left half-written).
* :func:`set_latent_norm_eps`: transformers' arithmetic for the latent norms (eps 1e-6) when rms_norm_eps differs.

Quantized published weights (FP8 blocks with ``weight_scale_inv``, INT4 ``weight_packed``) are not dequantized
here: such tensors are reported as unexpected names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from k25mini.config import (
    HF_LATENT_NORM_EPS,
    ModelConfig,
    TextConfig,
    from_hf_config,
    hf_rope_interleave,
    to_hf_config,
)
from k25mini.model.norm import RMSNorm

__all__ = [
    "EXPERT_LAYOUTS",
    "INDEX_NAME",
    "rope_permutation",
    "to_published",
    "from_published",
    "load_published",
    "save_sharded",
    "load_sharded",
    "save_pretrained",
    "load_pretrained",
    "set_latent_norm_eps",
]

EXPERT_LAYOUTS = ("per_expert", "fused")
INDEX_NAME = "model.safetensors.index.json"
_LM = "language_model."  # K2.5 prefix of the text backbone, in both naming schemes

# k25mini suffix -> published suffix, inside model.layers.{i}.
_ATTN = {
    "self_attn.q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "self_attn.kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
    "self_attn.kv_a_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.e_score_correction_bias": "mlp.gate.e_score_correction_bias",
}
_PROJECTOR = {  # K2.5: k25mini -> published
    "vision_tower.projector.pre_norm.": "mm_projector.pre_norm.",
    "vision_tower.projector.linear_1.": "mm_projector.proj.0.",
    "vision_tower.projector.linear_2.": "mm_projector.proj.2.",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QUANT_HINT = ("weight_scale_inv", "weight_scale", "weight_packed", "weight_shape", "input_scale")


# ------------------------------------------------------------------------------------------------ helpers
def rope_permutation(rope_dim: int) -> torch.Tensor:
    """``perm`` [rope_dim]: k25mini (rotate-half) row ``j`` is interleaved row ``perm[j]`` (evens, then odds)."""
    if isinstance(rope_dim, bool) or not isinstance(rope_dim, int) or rope_dim <= 0 or rope_dim % 2:
        raise ValueError(f"rope_dim must be a positive even int, got {rope_dim!r}")
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def _permute_q(w: torch.Tensor, t: TextConfig, to_half: bool) -> torch.Tensor:
    """Rows of q_b_proj / q_proj [H*(nope+rope), in]: permute the rope rows of every head."""
    H, nope, rope = t.num_attention_heads, t.qk_nope_head_dim, t.qk_rope_head_dim
    perm = rope_permutation(rope)
    idx = perm if to_half else torch.argsort(perm)
    v = w.reshape(H, nope + rope, *w.shape[1:])
    out = torch.cat([v[:, :nope], v[:, nope:].index_select(1, idx)], dim=1)
    return out.reshape(w.shape)


def _permute_kv_a(w: torch.Tensor, t: TextConfig, to_half: bool) -> torch.Tensor:
    """Rows of kv_a_proj [kv_lora + rope, D]: permute the trailing rope rows (the shared RoPE key)."""
    perm = rope_permutation(t.qk_rope_head_dim)
    idx = perm if to_half else torch.argsort(perm)
    return torch.cat([w[: t.kv_lora_rank], w[t.kv_lora_rank :].index_select(0, idx)], dim=0)


def _split_cfg(cfg: ModelConfig | TextConfig) -> tuple[TextConfig, bool]:
    if isinstance(cfg, TextConfig):
        return cfg, False
    if isinstance(cfg, ModelConfig):
        return cfg.text, cfg.vision is not None
    raise ValueError(f"cfg must be a ModelConfig or TextConfig, got {type(cfg).__name__}")


def _check_flag(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")


def _as_state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model_or_sd, nn.Module):
        return dict(model_or_sd.state_dict())
    if isinstance(model_or_sd, Mapping):
        bad = [k for k, v in model_or_sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"state_dict must map str -> torch.Tensor; bad entries: {bad[:5]}")
        return dict(model_or_sd)
    raise ValueError(f"model_or_state_dict must be an nn.Module or a mapping, got {type(model_or_sd).__name__}")


def _list(names: list[str], limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------------------------ text layer
def _layer_to_published(rest: str, v: torch.Tensor, t: TextConfig, interleave: bool, fused: bool,
                        out: dict[str, torch.Tensor], pre: str) -> None:
    F_ = t.moe_intermediate_size
    if rest in ("self_attn.q_b_proj.weight", "self_attn.q_proj.weight"):
        out[pre + rest] = _permute_q(v, t, to_half=False) if interleave else v
    elif rest == "self_attn.kv_a_proj.weight":
        out[pre + _ATTN[rest]] = _permute_kv_a(v, t, to_half=False) if interleave else v
    elif rest in _ATTN:
        out[pre + _ATTN[rest]] = v
    elif rest == "mlp.experts.w_gate_up":  # [E, D, 2F]
        if fused:
            out[pre + "mlp.experts.gate_up_proj"] = v.transpose(1, 2).contiguous()  # [E, 2F, D]
        else:
            for e in range(v.shape[0]):
                out[f"{pre}mlp.experts.{e}.gate_proj.weight"] = v[e, :, :F_].t().contiguous()  # [F, D]
                out[f"{pre}mlp.experts.{e}.up_proj.weight"] = v[e, :, F_:].t().contiguous()
    elif rest == "mlp.experts.w_down":  # [E, F, D]
        if fused:
            out[pre + "mlp.experts.down_proj"] = v.transpose(1, 2).contiguous()  # [E, D, F]
        else:
            for e in range(v.shape[0]):
                out[f"{pre}mlp.experts.{e}.down_proj.weight"] = v[e].t().contiguous()  # [D, F]
    else:
        out[pre + rest] = v


def _model_shapes(cfg: ModelConfig | TextConfig) -> dict[str, tuple[int, ...]]:
    t, with_vision = _split_cfg(cfg)
    with torch.device("meta"):
        if with_vision:
            from k25mini.multimodal import K25ForConditionalGeneration

            m: nn.Module = K25ForConditionalGeneration(cfg)  # type: ignore[arg-type]
        else:
            from k25mini.model.decoder import K2ForCausalLM

            m = K2ForCausalLM(t)
    sd = m.state_dict()
    if t.tie_word_embeddings:
        sd.pop((_LM if with_vision else "") + "lm_head.weight", None)
    return {k: tuple(v.shape) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------ public API
def to_published(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    cfg: ModelConfig | TextConfig,
    *,
    rope_interleave: bool = True,
    expert_layout: str = "per_expert",
) -> dict[str, torch.Tensor]:
    """k25mini state dict -> published names (K2 / DeepSeek-V3 flat; K2.5 with ``language_model.`` etc.).

    ``rope_interleave``: lay the q/k RoPE rows out interleaved (the published checkpoints, transformers' default).
    ``expert_layout``: ``"per_expert"`` (``mlp.experts.{e}.{gate,up,down}_proj.weight``, the published files that
    inference engines read) or ``"fused"`` (transformers v5's ``mlp.experts.gate_up_proj`` [E, 2F, D] /
    ``down_proj`` [E, D, F]). The input is checked against ``cfg`` first (names and shapes). With tied embeddings
    ``lm_head.weight`` is left out, as transformers does. Tensors are not copied unless permuted or transposed.
    """
    _check_flag("rope_interleave", rope_interleave)
    if expert_layout not in EXPERT_LAYOUTS:
        raise ValueError(f"expert_layout must be one of {EXPERT_LAYOUTS}, got {expert_layout!r}")
    t, with_vision = _split_cfg(cfg)
    if with_vision and cfg.vision.grid_pos_emb:  # type: ignore[union-attr]
        raise ValueError("cfg.vision.grid_pos_emb=True: the merged-grid position tables are k25mini's own (issue #15) "
                         "and have no counterpart in the published K2.5 format; export a model without them")
    sd = _as_state_dict(model_or_state_dict)
    if t.tie_word_embeddings:
        sd.pop((_LM if with_vision else "") + "lm_head.weight", None)
    _check_against(sd, _model_shapes(cfg), "k25mini state dict")
    fused = expert_layout == "fused"
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        outer, inner = ("", k)
        if with_vision:
            if k.startswith(_LM):
                outer, inner = _LM, k[len(_LM) :]
            else:
                for a, b in _PROJECTOR.items():
                    if k.startswith(a):
                        k = b + k[len(a) :]
                        break
                out[k] = v
                continue
        m = _LAYER.match(inner)
        if m is None:
            out[outer + inner] = v
        else:
            _layer_to_published(m.group(2), v, t, rope_interleave, fused, out, f"{outer}model.layers.{m.group(1)}.")
    return out


def from_published(
    state_dict: Mapping[str, torch.Tensor],
    cfg: ModelConfig | TextConfig,
    *,
    rope_interleave: bool = True,
    drop_mtp: bool = True,
) -> dict[str, torch.Tensor]:
    """Published names -> k25mini state dict (the inverse of :func:`to_published`, exact).

    Either expert layout is accepted (per layer: all per-expert tensors, or the two fused ones). ``drop_mtp``:
    tensors of layers ``>= num_hidden_layers`` (DeepSeek-V3 / K2's multi-token-prediction layer) are dropped with
    a warning; otherwise they are unexpected. Raises ValueError listing missing or unexpected names and naming any
    tensor whose shape differs from ``cfg``'s.
    """
    _check_flag("rope_interleave", rope_interleave)
    _check_flag("drop_mtp", drop_mtp)
    t, with_vision = _split_cfg(cfg)
    src = _as_state_dict(state_dict)
    L, E, F_ = t.num_hidden_layers, t.n_routed_experts, t.moe_intermediate_size
    inv_attn = {v: k for k, v in _ATTN.items()}
    inv_proj = {v: k for k, v in _PROJECTOR.items()}
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    dropped: list[str] = []
    experts: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # (k25 layer prefix, expert) -> parts
    for k, v in src.items():
        if k.rsplit(".", 1)[-1] in _QUANT_HINT:
            unexpected.append(k)
            continue
        outer, inner = "", k
        if with_vision:
            if k.startswith(_LM):
                outer, inner = _LM, k[len(_LM) :]
            else:
                for a, b in inv_proj.items():
                    if k.startswith(a):
                        k = b + k[len(a) :]
                        break
                out[k] = v
                continue
        m = _LAYER.match(inner)
        if m is None:
            out[outer + inner] = v
            continue
        i, rest = int(m.group(1)), m.group(2)
        pre = f"{outer}model.layers.{i}."
        if i >= L:
            (dropped if drop_mtp else unexpected).append(k)
            continue
        if rest in ("self_attn.q_b_proj.weight", "self_attn.q_proj.weight"):
            out[pre + rest] = _permute_q(v, t, to_half=True) if rope_interleave and _rows_ok(v, t, "q") else v
        elif rest == "self_attn.kv_a_proj_with_mqa.weight":
            ok = rope_interleave and _rows_ok(v, t, "kv")
            out[pre + "self_attn.kv_a_proj.weight"] = _permute_kv_a(v, t, to_half=True) if ok else v
        elif rest in inv_attn:
            out[pre + inv_attn[rest]] = v
        elif rest in ("self_attn.kv_a_proj.weight", "self_attn.q_a_norm.weight", "self_attn.kv_a_norm.weight",
                      "mlp.router.weight", "mlp.router.e_score_correction_bias"):
            unexpected.append(k)  # a k25mini name in a published dict: refuse rather than guess
        elif rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            if v.dim() != 3:
                raise ValueError(f"state_dict: tensor {k} must be 3-D [E, out, in], got shape {tuple(v.shape)}")
            out[pre + ("mlp.experts.w_gate_up" if rest.endswith("gate_up_proj") else "mlp.experts.w_down")] = (
                v.transpose(1, 2))
        elif (me := re.fullmatch(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", rest)) is not None:
            experts.setdefault((pre, int(me.group(1))), {})[me.group(2)] = v
        else:
            out[pre + rest] = v
    # per-expert tensors -> the two 3-D parameters, only when every expert of the layer is complete
    by_layer: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for (pre, e), parts in experts.items():
        by_layer.setdefault(pre, {})[e] = parts
    missing_parts: list[str] = []
    for pre, per in by_layer.items():
        pub = pre  # the published layer prefix is the same string
        for e in range(E):
            for part in ("gate", "up", "down"):
                if part not in per.get(e, {}):
                    missing_parts.append(f"{pub}mlp.experts.{e}.{part}_proj.weight")
        extra = sorted(e for e in per if e >= E)
        unexpected += [f"{pub}mlp.experts.{e}.{p}_proj.weight" for e in extra for p in per[e]]
        if missing_parts:
            continue
        shapes = {(p, tuple(per[e][p].shape)) for e in range(E) for p in ("gate", "up", "down")}
        want = {("gate", (F_, t.hidden_size)), ("up", (F_, t.hidden_size)), ("down", (t.hidden_size, F_))}
        if shapes != want:
            bad = sorted(f"{pub}mlp.experts.{e}.{p}_proj.weight {tuple(per[e][p].shape)}" for e in range(E)
                         for p in ("gate", "up", "down") if (p, tuple(per[e][p].shape)) not in want)
            raise ValueError(f"state_dict: expert tensors with the wrong shape (gate/up [{F_}, {t.hidden_size}], "
                             f"down [{t.hidden_size}, {F_}] expected): {_list(bad)}")
        out[pre + "mlp.experts.w_gate_up"] = torch.stack(
            [torch.cat([per[e]["gate"].t(), per[e]["up"].t()], dim=1) for e in range(E)])
        out[pre + "mlp.experts.w_down"] = torch.stack([per[e]["down"].t() for e in range(E)])
    if dropped:
        warnings.warn(f"from_published: dropped {len(dropped)} tensors of layers >= num_hidden_layers={L} "
                      f"(multi-token prediction, not built): {_list(dropped, 4)}", stacklevel=2)
    if unexpected:
        hint = (" (quantized tensors: dequantize to a float dtype first)"
                if any(k.rsplit(".", 1)[-1] in _QUANT_HINT for k in unexpected) else "")
        raise ValueError(f"state_dict: unexpected tensor names{hint}: {_list(unexpected)}")
    if missing_parts:
        raise ValueError(f"state_dict: missing tensors: {_list(missing_parts)}")
    expected = _model_shapes(cfg)
    _check_against(out, expected, "state_dict", published=True, with_vision=with_vision)
    return {k: out[k] for k in expected}  # k25mini's order


def _rows_ok(v: torch.Tensor, t: TextConfig, which: str) -> bool:
    # shape errors are reported by _check_against with the tensor's name; do not permute a mis-shaped tensor
    H, qk = t.num_attention_heads, t.qk_head_dim
    return v.dim() == 2 and v.shape[0] == (H * qk if which == "q" else t.kv_lora_rank + t.qk_rope_head_dim)


def _published_name(k: str, with_vision: bool) -> str:
    """The published name of a (non-expert) k25mini tensor, for error messages."""
    outer, inner = "", k
    if with_vision:
        if k.startswith(_LM):
            outer, inner = _LM, k[len(_LM) :]
        else:
            for a, b in _PROJECTOR.items():
                if k.startswith(a):
                    return b + k[len(a) :]
            return k
    m = _LAYER.match(inner)
    if m is None:
        return k
    rest = m.group(2)
    if rest == "mlp.experts.w_gate_up":
        return f"{outer}model.layers.{m.group(1)}.mlp.experts.{{e}}.gate_proj/up_proj.weight (or gate_up_proj)"
    if rest == "mlp.experts.w_down":
        return f"{outer}model.layers.{m.group(1)}.mlp.experts.{{e}}.down_proj.weight (or down_proj)"
    return f"{outer}model.layers.{m.group(1)}.{_ATTN.get(rest, rest)}"


def _check_against(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str,
                   published: bool = False, with_vision: bool = False) -> None:
    name = (lambda k: _published_name(k, with_vision)) if published else (lambda k: k)
    missing = [name(k) for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise ValueError(f"{what}: unexpected tensor names: {_list(unexpected)}")
    if missing:
        raise ValueError(f"{what}: missing tensors: {_list(missing)}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            got = tuple(sd[k].shape)
            if published and k.endswith(("experts.w_gate_up", "experts.w_down")):
                got, shape = (got[0], got[2], got[1]), (shape[0], shape[2], shape[1])  # as the fused tensor
            raise ValueError(f"{what}: tensor {name(k)} has shape {got}, expected {shape}")


def load_published(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    cfg: ModelConfig | TextConfig | None = None,
    *,
    rope_interleave: bool = True,
    drop_mtp: bool = True,
) -> nn.Module:
    """Copy published-name tensors into a k25mini ``K2ForCausalLM`` / ``K25ForConditionalGeneration`` (strict,
    buffers included: ``e_score_correction_bias``). ``cfg`` defaults to the model's own. Returns the model."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if cfg is None:
        cfg = getattr(model, "config", None)
        if not isinstance(cfg, (ModelConfig, TextConfig)):
            raise ValueError("cfg: the model has no ModelConfig/TextConfig `.config`; pass cfg")
    sd = from_published(state_dict, cfg, rope_interleave=rope_interleave, drop_mtp=drop_mtp)
    t, with_vision = _split_cfg(cfg)
    own = model.state_dict()
    if set(own) - set(sd) - {(_LM if with_vision else "") + "lm_head.weight"} or set(sd) - set(own):
        raise ValueError("model: its parameter names do not match cfg (pass the config the model was built with)")
    with torch.no_grad():
        for k, v in sd.items():
            if tuple(own[k].shape) != tuple(v.shape):
                raise ValueError(f"model: tensor {k} has shape {tuple(own[k].shape)}, the weights {tuple(v.shape)}")
            own[k].copy_(v)
    return model


def set_latent_norm_eps(model: nn.Module, eps: float = HF_LATENT_NORM_EPS) -> int:
    """Set the eps of every MLA latent norm (``q_a_norm``, ``kv_a_norm``) to ``eps`` (transformers: 1e-6).

    k25mini builds them with ``rms_norm_eps``; transformers' DeepseekV3 always uses 1e-6. The published configs have
    rms_norm_eps = 1e-6, so this only matters for other configs. Not saved in the config: call it after building.
    Returns the number of norms changed.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, RMSNorm) and name.endswith(("self_attn.q_a_norm", "self_attn.kv_a_norm")):
            m.eps = float(eps)
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ safetensors
def _shard_plan(sd: Mapping[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    return shards


def _write_shards(sd: Mapping[str, torch.Tensor], folder: Path, max_shard_bytes: int,
                  metadata: Mapping[str, str] | None) -> None:
    from safetensors.torch import save_file

    plan = _shard_plan(sd, max_shard_bytes)
    n = len(plan)
    weight_map: dict[str, str] = {}
    total = 0
    seen: set[tuple[int, int]] = set()
    for i, names in enumerate(plan, start=1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        part = {}
        for k in names:
            v = sd[k].detach().to("cpu").contiguous()
            key = (v.untyped_storage().data_ptr(), v.storage_offset())
            if key in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
                v = v.clone()  # safetensors refuses tensors that share memory
            seen.add((v.untyped_storage().data_ptr(), v.storage_offset()))
            part[k] = v
            weight_map[k] = fname
            total += v.numel() * v.element_size()
        save_file(part, str(folder / fname), metadata={"format": "pt", **dict(metadata or {})})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _atomic_folder(directory: str | os.PathLike, fill, overwrite: bool) -> Path:
    """Run ``fill(tmp_folder)`` then move the folder to ``directory``; an existing one is replaced only after the
    new one is complete (it is renamed aside first and restored if the final rename fails)."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"directory: {str(target)!r} exists and is not a folder")
    if target.exists() and not overwrite:
        raise ValueError(f"directory: {str(target)!r} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_sharded(
    state_dict: Mapping[str, torch.Tensor],
    directory: str | os.PathLike,
    *,
    max_shard_bytes: int = 5 * 10**9,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model-0000k-of-0000n.safetensors`` shards (at most ``max_shard_bytes`` each unless one tensor is
    larger) and ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map": {name: file}}``)
    into ``directory`` atomically (see :func:`save_pretrained`). Returns the folder."""
    sd = _as_state_dict(state_dict)
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be an int > 0, got {max_shard_bytes!r}")
    if not sd:
        raise ValueError("state_dict is empty")
    return _atomic_folder(directory, lambda tmp: _write_shards(sd, tmp, max_shard_bytes, metadata), overwrite)


def load_sharded(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read the tensors of a sharded checkpoint folder (index JSON + shards), or of a single ``model.safetensors``.

    Checks that every shard named by the index exists, that each tensor is where the index says, and that no
    tensor is in two shards or missing from the index."""
    from safetensors import safe_open

    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"directory: no folder at {str(folder)!r}")
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        single = folder / "model.safetensors"
        if not single.is_file():
            raise ValueError(f"directory: neither {INDEX_NAME} nor model.safetensors in {str(folder)!r}")
        weight_map = None
        files = ["model.safetensors"]
    else:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{INDEX_NAME}: expected an object with a 'weight_map' of name -> file")
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not (folder / f).is_file() or Path(f).name != f]
        if absent:
            raise ValueError(f"{INDEX_NAME}: shard files missing from {str(folder)!r}: {_list(absent)}")
    out: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    for f in files:
        with safe_open(str(folder / f), framework="pt", device=str(device)) as h:
            for k in h.keys():
                if k in where:
                    raise ValueError(f"directory: tensor {k} is in both {where[k]} and {f}")
                if weight_map is not None and weight_map.get(k) != f:
                    raise ValueError(f"{INDEX_NAME}: tensor {k} is in {f} but the index says "
                                     f"{weight_map.get(k)!r}")
                where[k] = f
                out[k] = h.get_tensor(k)
    if weight_map is not None:
        lost = [k for k in weight_map if k not in out]
        if lost:
            raise ValueError(f"{INDEX_NAME}: tensors listed but not found in their shard: {_list(lost)}")
    return out


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    cfg: ModelConfig | None = None,
    *,
    rope_interleave: bool = True,
    expert_layout: str = "per_expert",
    max_shard_bytes: int = 5 * 10**9,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """config.json (:func:`~k25mini.config.to_hf_config`) + sharded safetensors in the published names.

    Everything is written into a temporary sibling folder, then renamed to ``directory``; with ``overwrite`` an
    existing checkpoint is renamed aside first and deleted only after the new one is in place, so a failure at
    any point leaves either the old checkpoint or the new one, never a mix. ``dtype``: cast floating tensors
    (e.g. torch.bfloat16) except ``e_score_correction_bias``, which stays float32 as in the published files.
    """
    if cfg is None:
        cfg = getattr(model, "config", None)
        if isinstance(cfg, TextConfig):
            cfg = ModelConfig(text=cfg)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig (or the model must carry one), got {type(cfg).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    pub = to_published(model, cfg, rope_interleave=rope_interleave, expert_layout=expert_layout)
    if dtype is not None:
        pub = {k: v.to(dtype) if v.is_floating_point() and not k.endswith("e_score_correction_bias") else v
               for k, v in pub.items()}
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be an int > 0, got {max_shard_bytes!r}")
    hf = to_hf_config(cfg, rope_interleave=rope_interleave)

    def fill(tmp: Path) -> None:
        _write_shards(pub, tmp, max_shard_bytes, None)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")

    return _atomic_folder(directory, fill, overwrite)


def load_pretrained(directory: str | os.PathLike, *, moe_backend: str | None = None,
                    drop_mtp: bool = True) -> nn.Module:
    """Build a ``K2ForCausalLM`` (K2 / DeepSeek-V3 config) or ``K25ForConditionalGeneration`` (K2.5 config) from
    a folder with config.json and safetensors weights in the published names; ``rope_interleave`` is read from
    the config (absent: True)."""
    folder = Path(directory)
    cfg = from_hf_config(folder)
    interleave = hf_rope_interleave(folder)
    sd = load_sharded(folder)
    if cfg.vision is not None:
        from k25mini.multimodal import K25ForConditionalGeneration

        model: nn.Module = K25ForConditionalGeneration(cfg, moe_backend=moe_backend)
    else:
        from k25mini.model.decoder import K2ForCausalLM

        model = K2ForCausalLM(cfg.text, moe_backend)
    return load_published(model, sd, cfg if cfg.vision is not None else cfg.text, rope_interleave=interleave,
                          drop_mtp=drop_mtp)
