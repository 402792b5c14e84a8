"""Rotary position embedding for the MLA rope dims, with DeepSeek-V3 / Kimi-K2 style YaRN scaling.

Layout: "rotate-half" - the rope dims of a head are split in two halves [x1 | x2] and pair ``i``
is (x1[i], x2[i]). (Published DeepSeek/Kimi checkpoints store q^R/k^R rows interleaved; loading
them would need a fixed row permutation. We train from scratch, so the cheaper layout wins.)

YaRN (``rope_scaling = {"type": "yarn", "factor": s, ...}``), for rope dim ``d``, base ``b``,
original context ``L0`` and pair index ``i`` in [0, d/2):

* base frequency      theta_i = b^(-2i/d)
* pair index at which a frequency makes ``r`` full turns over ``L0``:
  ``i(r) = d * ln(L0 / (2*pi*r)) / (2 * ln b)``
* ``low = max(floor(i(beta_fast)), 0)``, ``high = min(ceil(i(beta_slow)), d - 1)`` (``high += 1e-3`` if equal)
* ``ramp_i = clip((i - low) / (high - low), 0, 1)``; extrapolate weight ``e_i = 1 - ramp_i``
* ``inv_freq_i = theta_i * e_i + (theta_i / s) * (1 - e_i)``: fast pairs (many turns in ``L0``) keep their
  frequency, slow pairs are interpolated by ``s``, a linear ramp in between.
* ``m(s, k) = 0.1 * k * ln(s) + 1`` for ``s > 1`` else 1. cos/sin are multiplied by
  ``m(s, mscale) / m(s, mscale_all_dim)`` and the attention softmax scale by ``m(s, mscale_all_dim)^2``
  (when ``mscale_all_dim`` is non-zero). With K2's ``mscale = mscale_all_dim = 1`` the cos/sin factor
  is 1 and the logits grow by ``(1 + 0.1 ln 32)^2 ~= 1.81``.

Defaults for missing keys follow the DeepSeek-V3 code: beta_fast 32, beta_slow 1, mscale 1,
mscale_all_dim 0; ``original_max_position_embeddings`` defaults to max_position_embeddings / factor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "yarn_get_mscale",
    "yarn_params",
    "yarn_inv_freq",
    "rope_inv_freq",
    "softmax_scale",
    "RotaryEmbedding",
    "apply_rope",
    "rotate_half",
]


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """m(s, k) = 0.1 k ln s + 1 for s > 1, else 1."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_params(rope_scaling: dict | None, max_position_embeddings: int) -> dict | None:
    """Normalise a YaRN dict (fill defaults, validate); None stays None."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict) or rope_scaling.get("type", rope_scaling.get("rope_type")) != "yarn":
        raise ValueError(f"rope_scaling must be None or a dict with type 'yarn', got {rope_scaling!r}")
    factor = float(rope_scaling.get("factor", 1.0))
    if not factor >= 1:
        raise ValueError(f"rope_scaling['factor'] must be >= 1, got {factor}")
    orig = rope_scaling.get("original_max_position_embeddings")
    if orig is None:
        orig = max(1, int(max_position_embeddings / factor))
    p = {
        "factor": factor,
        "original_max_position_embeddings": int(orig),
        "beta_fast": float(rope_scaling.get("beta_fast", 32.0)),
        "beta_slow": float(rope_scaling.get("beta_slow", 1.0)),
        "mscale": float(rope_scaling.get("mscale", 1.0)),
        "mscale_all_dim": float(rope_scaling.get("mscale_all_dim", 0.0)),
    }
    if p["original_max_position_embeddings"] <= 0:
        raise ValueError(f"rope_scaling['original_max_position_embeddings'] must be > 0, got {orig}")
    if not (p["beta_fast"] > 0 and p["beta_slow"] > 0):
        raise ValueError(f"rope_scaling beta_fast/beta_slow must be > 0, got {p['beta_fast']}, {p['beta_slow']}")
    return p


def _correction_index(turns: float, dim: int, base: float, orig_len: int) -> float:
    # pair index whose frequency completes `turns` rotations over the original context
    return dim * math.log(orig_len / (turns * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(
    dim: int,
    base: float,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """YaRN inverse frequencies [dim // 2] (see the module docstring for the formula)."""
    i = torch.arange(0, dim // 2, dtype=torch.float64)
    theta = base ** (-2.0 * i / dim)
    low = max(math.floor(_correction_index(beta_fast, dim, base, original_max_position_embeddings)), 0)
    high = min(math.ceil(_correction_index(beta_slow, dim, base, original_max_position_embeddings)), dim - 1)
    if low == high:
        high += 1e-3  # avoid 0/0 in the ramp
    ramp = ((i - low) / (high - low)).clamp(0.0, 1.0)
    extrapolate = 1.0 - ramp
    inv = theta * extrapolate + (theta / factor) * (1.0 - extrapolate)
    return inv.to(dtype)


def rope_inv_freq(
    dim: int, base: float, rope_scaling: dict | None = None, max_position_embeddings: int = 4096
) -> tuple[torch.Tensor, float]:
    """(inv_freq [dim // 2] float32, cos/sin multiplier) for plain RoPE or YaRN."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim}")
    p = yarn_params(rope_scaling, max_position_embeddings)
    if p is None:
        i = torch.arange(0, dim // 2, dtype=torch.float64)
        return (base ** (-2.0 * i / dim)).float(), 1.0
    inv = yarn_inv_freq(dim, base, p["factor"], p["original_max_position_embeddings"], p["beta_fast"],
                        p["beta_slow"])
    mul = yarn_get_mscale(p["factor"], p["mscale"]) / yarn_get_mscale(p["factor"], p["mscale_all_dim"])
    return inv, mul


def softmax_scale(qk_head_dim: int, rope_scaling: dict | None = None, max_position_embeddings: int = 4096) -> float:
    """Attention logit scale: 1/sqrt(qk_head_dim), times m(s, mscale_all_dim)^2 under YaRN."""
    scale = qk_head_dim**-0.5
    p = yarn_params(rope_scaling, max_position_embeddings)
    if p is not None and p["mscale_all_dim"]:
        m = yarn_get_mscale(p["factor"], p["mscale_all_dim"])
        scale = scale * m * m
    return scale


class RotaryEmbedding(nn.Module):
    """cos/sin tables for arbitrary integer positions. forward(positions [B, S]) -> (cos, sin) [B, S, dim].

    The inverse frequencies are kept in float64 outside the state dict and outside ``module.to(dtype)``
    (a bf16 copy would put visible errors in the angles); angles are formed in float32, or float64
    when float64 output is asked for.
    """

    def __init__(
        self, dim: int, base: float = 10000.0, rope_scaling: dict | None = None, max_position_embeddings: int = 4096
    ) -> None:
        super().__init__()
        _, mul = rope_inv_freq(dim, base, rope_scaling, max_position_embeddings)
        self.dim = dim
        self.attention_scaling = mul
        self.inv_freq64 = _inv_freq64(dim, base, rope_scaling, max_position_embeddings)
        self._per_device: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _inv(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._per_device:
            self._per_device[key] = self.inv_freq64.to(device=device, dtype=dtype)
        return self._per_device[key]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        ang = positions.to(wide).unsqueeze(-1) * self._inv(positions.device, wide)  # [..., dim/2]
        ang = torch.cat([ang, ang], dim=-1)
        return (ang.cos() * self.attention_scaling).to(dtype), (ang.sin() * self.attention_scaling).to(dtype)


def _inv_freq64(dim: int, base: float, rope_scaling: dict | None, max_position_embeddings: int) -> torch.Tensor:
    p = yarn_params(rope_scaling, max_position_embeddings)
    if p is None:
        return base ** (-2.0 * torch.arange(0, dim // 2, dtype=torch.float64) / dim)
    return yarn_inv_freq(dim, base, p["factor"], p["original_max_position_embeddings"], p["beta_fast"],
                         p["beta_slow"], dtype=torch.float64)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, d] by cos/sin [B, S, d] (broadcast over heads)."""
    if x.shape[-1] != cos.shape[-1]:
        raise ValueError(f"x last dim {x.shape[-1]} must equal the rope dim {cos.shape[-1]}")
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + rotate_half(x) * sin
