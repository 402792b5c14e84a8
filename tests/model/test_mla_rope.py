"""RoPE and YaRN scaling: the formula (k25mini.model.rope docstring) against a float64 pure-Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from k25mini.config import k2, k25
from k25mini.model.rope import (
    RotaryEmbedding,
    apply_rope,
    rope_inv_freq,
    softmax_scale,
    yarn_get_mscale,
    yarn_inv_freq,
)


def yarn_reference(d: int, b: float, s: float, L0: int, beta_fast: float, beta_slow: float) -> list[float]:
    """Pure-Python float64 YaRN inverse frequencies, written from the formula, pair by pair."""

    def idx(turns: float) -> float:  # pair index i with L0 * theta_i / (2 pi) == turns
        return d * math.log(L0 / (turns * 2 * math.pi)) / (2 * math.log(b))

    low = max(math.floor(idx(beta_fast)), 0)
    high = min(math.ceil(idx(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    out = []
    for i in range(d // 2):
        theta = b ** (-2 * i / d)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(theta * (1 - ramp) + theta / s * ramp)
    return out


@pytest.mark.parametrize(
    "d,b,s,L0,bf,bs",
    [(64, 50000.0, 32.0, 4096, 1.0, 1.0), (64, 50000.0, 64.0, 4096, 1.0, 1.0), (64, 10000.0, 40.0, 4096, 32.0, 1.0),
     (16, 10000.0, 4.0, 256, 32.0, 1.0), (8, 100.0, 8.0, 64, 4.0, 0.5)],
)
def test_yarn_inv_freq_matches_float64_reference(d, b, s, L0, bf, bs):
    got = yarn_inv_freq(d, b, s, L0, bf, bs, dtype=torch.float64)
    ref = torch.tensor(yarn_reference(d, b, s, L0, bf, bs), dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
    got32 = yarn_inv_freq(d, b, s, L0, bf, bs)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-6, atol=0)


def test_yarn_limits():
    d, b = 64, 50000.0
    theta = b ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    # factor 1: plain RoPE
    torch.testing.assert_close(yarn_inv_freq(d, b, 1.0, 4096, dtype=torch.float64), theta)
    # K2 (beta 1/1): fast pairs kept, slow pairs divided by the factor
    inv = yarn_inv_freq(d, b, 32.0, 4096, 1.0, 1.0, dtype=torch.float64)
    assert inv[0] == theta[0] and math.isclose(inv[-1] / theta[-1], 1 / 32, rel_tol=1e-12)
    assert bool((inv <= theta).all())


def test_k2_k25_scaling_factors():
    for cfg in (k2().text, k25().text):
        _, mul = rope_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
        assert mul == 1.0  # mscale == mscale_all_dim: cos/sin untouched
        m = 0.1 * math.log(cfg.rope_scaling["factor"]) + 1
        want = m * m / math.sqrt(cfg.qk_head_dim)
        assert math.isclose(softmax_scale(cfg.qk_head_dim, cfg.rope_scaling, cfg.max_position_embeddings), want)
    assert yarn_get_mscale(1.0, 5.0) == 1.0
    assert math.isclose(softmax_scale(192, None), 192**-0.5)
    # mscale != mscale_all_dim scales cos/sin
    rs = {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 128, "mscale": 1.0, "mscale_all_dim": 0}
    _, mul = rope_inv_freq(8, 100.0, rs, 2048)
    assert math.isclose(mul, 0.1 * math.log(16) + 1)
    rope = RotaryEmbedding(8, 100.0, rs, 2048)
    c, s = rope(torch.tensor([[3]]), torch.float64)
    torch.testing.assert_close(c.square() + s.square(), torch.full((1, 1, 8), mul * mul, dtype=torch.float64))


def test_rope_is_relative():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, 100.0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def dot(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[pq]]), torch.float64)
        ck, sk = rope(torch.tensor([[pk]]), torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(dot(7, 3), dot(104, 100))
    assert not torch.allclose(dot(7, 3), dot(7, 4))


def test_rope_ignores_module_dtype_cast():
    rope = RotaryEmbedding(8, 100.0).to(torch.bfloat16)
    c, _ = rope(torch.tensor([[1000]]))
    want = math.cos(1000 * 100.0 ** (-2 * 1 / 8))
    assert abs(c[0, 0, 1].item() - want) < 1e-4
    assert len(rope.state_dict()) == 0


def test_bad_rope_inputs():
    with pytest.raises(ValueError, match="dim must be"):
        rope_inv_freq(7, 100.0)
    with pytest.raises(ValueError, match="rope_scaling"):
        rope_inv_freq(8, 100.0, {"type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="factor"):
        rope_inv_freq(8, 100.0, {"type": "yarn", "factor": 0.5})
