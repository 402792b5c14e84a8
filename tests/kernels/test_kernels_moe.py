"""Triton MoE kernels vs the per-expert loop reference: forward and every gradient.

On CPU these run under TRITON_INTERPRET=1 (tests/conftest.py), which executes every program in
Python, so shapes and tiles are tiny. The reference runs in float64; fp32 kernels must match it to
atol = rtol = 1e-4 (the MoE acceptance bound). bf16 inputs are compared with a bf16-sized tolerance.
"""

from __future__ import annotations

import pytest
import torch

from kernels import (
    TileConfig,
    combine,
    combine_reference,
    down_proj,
    down_proj_reference,
    gate_up_swiglu,
    gate_up_swiglu_reference,
    moe_align,
    moe_align_reference,
    moe_reference,
    moe_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}


def tiles(bm: int, bn: int, bk: int) -> TileConfig:
    """Tiny tiles for the interpreter; tl.dot's 16 minimum on a real GPU."""
    if DEVICE == "cuda":
        bm, bn, bk = max(bm, 16), max(bn, 16), max(bk, 16)
    return TileConfig(bm, bn, bk)


def make_ids(T: int, K: int, E: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    if mode == "distinct":  # like a real top-k: K different experts per token
        return torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    if mode == "dups":  # the same expert may appear twice for a token; the sum must count both
        return torch.randint(0, E, (T, K), generator=gen)
    if mode == "skip_odd":  # odd-numbered experts receive zero tokens
        return 2 * torch.randint(0, (E + 1) // 2, (T, K), generator=gen)
    if mode == "one":  # every assignment on the last expert
        return torch.full((T, K), E - 1, dtype=torch.int64)
    raise AssertionError(mode)


def make_case(T, K, E, D, F, mode, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    w_gu = torch.randn(E, D, 2 * F, generator=gen) / D**0.5
    w_down = torch.randn(E, F, D, generator=gen) / F**0.5
    ids = make_ids(T, K, E, mode, gen)
    tw = torch.rand(T, K, generator=gen) + 0.1
    grad = torch.randn(T, D, generator=gen)
    cast = [t.to(DEVICE, dtype) for t in (x, w_gu, w_down)]
    return (*cast, ids.to(DEVICE), tw.to(DEVICE), grad.to(DEVICE, dtype))


def run_with_grads(fn, x, w_gu, w_down, ids, tw, grad, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w_gu, w_down, tw)]
    out = fn(leaves[0], leaves[1], leaves[2], ids, leaves[3], **kw)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out, grads


def reference_fp64(x, w_gu, w_down, ids, tw, grad):
    d = [t.double() for t in (x, w_gu, w_down)]
    return run_with_grads(moe_reference, *d, ids, tw.double(), grad.double())


NAMES = ("out", "dX", "dW_gate_up", "dW_down", "d_topk_weights")

CASES = {
    # name: (T, K, E, D, F, ids mode, tiles)
    "empty_experts_ragged_rows": (9, 2, 5, 11, 6, "skip_odd", (4, 8, 8)),
    "all_tokens_one_expert": (13, 1, 3, 8, 4, "one", (4, 8, 8)),
    "topk8_nonpow2_experts": (12, 8, 9, 24, 16, "distinct", (16, 32, 32)),
    "odd_sizes_duplicate_picks": (10, 3, 7, 7, 5, "dups", (8, 8, 8)),
    "topk1_pow2_experts": (14, 1, 4, 16, 8, "distinct", (4, 8, 16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_moe_triton_matches_reference_fp32(case):
    T, K, E, D, F, mode, tl_ = CASES[case]
    args = make_case(T, K, E, D, F, mode, seed=hash(case) % 1000)
    out, grads = run_with_grads(moe_triton, *args, tiles=tiles(*tl_))
    ref_out, ref_grads = reference_fp64(*args)
    assert out.dtype == torch.float32 and out.shape == (T, D)
    for name, got, want in zip(NAMES, (out, *grads), (ref_out, *ref_grads)):
        torch.testing.assert_close(got.double(), want, **FP32_TOL, msg=lambda m, n=name: f"{case} {n}: {m}")
    if mode == "skip_odd":  # experts that got no tokens must get exactly zero weight gradients
        assert torch.count_nonzero(grads[1][1::2]) == 0 and torch.count_nonzero(grads[2][1::2]) == 0
        assert torch.count_nonzero(grads[1][0::2]) > 0


def test_moe_triton_bf16_inputs():
    """bf16 in, bf16 out; GU/H are stored in bf16, so compare against fp64 on the same bf16 values."""
    args = make_case(8, 2, 3, 16, 8, "distinct", seed=3, dtype=torch.bfloat16)
    args = (*args[:4], args[4].to(torch.bfloat16), args[5])
    out, grads = run_with_grads(moe_triton, *args, tiles=tiles(4, 8, 8))
    ref_out, ref_grads = reference_fp64(*args)
    assert out.dtype == torch.bfloat16 and grads[3].dtype == torch.bfloat16
    for name, got, want in zip(NAMES, (out, *grads), (ref_out, *ref_grads)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, atol=2e-2 * scale, rtol=2e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_moe_triton_empty_batch_and_strided_input():
    x, w_gu, w_down, ids, tw, grad = make_case(5, 2, 3, 8, 4, "distinct", seed=1)
    out, grads = run_with_grads(moe_triton, x[:0], w_gu, w_down, ids[:0], tw[:0], grad[:0], tiles=tiles(4, 8, 8))
    assert out.shape == (0, 8) and torch.count_nonzero(grads[1]) == 0 and grads[1].shape == w_gu.shape
    # a transposed (non-contiguous) x must give the same answer as a contiguous one
    xt = x.t().contiguous().t()
    assert not xt.is_contiguous()
    got = moe_triton(xt, w_gu, w_down, ids, tw, tiles=tiles(4, 8, 8))
    torch.testing.assert_close(got, moe_triton(x, w_gu, w_down, ids, tw, tiles=tiles(4, 8, 8)))


# ------------------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize(
    "T,K,E,block_m,mode",
    [
        (7, 2, 5, 4, "skip_odd"),
        (13, 3, 9, 4, "dups"),
        (12, 8, 9, 8, "distinct"),
        (5, 1, 3, 16, "one"),
        (1, 1, 1, 2, "one"),
    ],
)
def test_moe_align_matches_reference(T, K, E, block_m, mode):
    ids = make_ids(T, K, E, mode, torch.Generator().manual_seed(T)).to(DEVICE)
    got = moe_align(ids, E, block_m, scan_block=8)
    want = moe_align_reference(ids, E, block_m)
    for name in ("sorted_ids", "block_expert", "padded_offsets", "counts"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    # invariants, checked independently of the reference
    counts = torch.bincount(ids.flatten(), minlength=E)
    assert torch.equal(got.counts.long().cpu(), counts.cpu())
    assert torch.all(got.padded_offsets % block_m == 0)
    n = T * K
    placed = got.sorted_ids[got.sorted_ids < n].long()
    assert torch.equal(placed.sort().values.cpu(), torch.arange(n))  # every assignment exactly once
    row_expert = got.block_expert.long().repeat_interleave(block_m)[got.sorted_ids < n]
    assert torch.equal(row_expert, ids.flatten()[placed])  # each row sits in its expert's blocks


def test_forward_pieces_match_their_references():
    x, w_gu, w_down, ids, tw, _ = make_case(11, 3, 6, 9, 5, "skip_odd", seed=4)
    tc = tiles(4, 8, 8)
    meta = moe_align(ids, 6, tc.block_m)
    gu, h = gate_up_swiglu(x, w_gu, meta, tc)
    gu_ref, h_ref = gate_up_swiglu_reference(x, w_gu, meta)
    real = meta.sorted_ids < meta.num_assignments
    torch.testing.assert_close(gu[real], gu_ref[real], **FP32_TOL)
    torch.testing.assert_close(h[real], h_ref[real], **FP32_TOL)
    y = down_proj(h, w_down, tw, meta, tc)
    torch.testing.assert_close(y, down_proj_reference(h, w_down, tw, meta), **FP32_TOL)
    y_unweighted = down_proj(h, w_down, None, meta, tc)
    torch.testing.assert_close(y_unweighted * tw.reshape(-1, 1), y, **FP32_TOL)
    torch.testing.assert_close(combine(y, 3), combine_reference(y, 3), **FP32_TOL)
    with pytest.raises(ValueError, match="top_k"):
        combine(y[:-1], 3)
    # misuse that would otherwise read/write out of bounds is refused up front
    with pytest.raises(ValueError, match="block_m"):
        down_proj(h, w_down, tw, meta, TileConfig(tc.block_m * 2, tc.block_n, tc.block_k))
    with pytest.raises(ValueError, match="h must be"):
        down_proj(h[:-1], w_down, tw, meta, tc)
    with pytest.raises(ValueError, match="x must be"):
        gate_up_swiglu(x[:-1], w_gu, meta, tc)


def test_reference_equals_per_token_loop():
    """The reference itself against the definition written token by token (float64)."""
    x, w_gu, w_down, ids, tw, _ = (t.double() if t.is_floating_point() else t for t in
                                   make_case(6, 3, 4, 5, 3, "dups", seed=7))
    F = w_down.shape[1]
    want = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            hidden = torch.nn.functional.silu(x[t] @ w_gu[e][:, :F]) * (x[t] @ w_gu[e][:, F:])
            want[t] += tw[t, k] * (hidden @ w_down[e])
    torch.testing.assert_close(moe_reference(x, w_gu, w_down, ids, tw), want)


# ------------------------------------------------------------------------------------- bad inputs
def _bad_inputs():
    x, w_gu, w_down, ids, tw, _ = make_case(4, 2, 3, 6, 4, "distinct")
    return [
        ("x", (x[None], w_gu, w_down, ids, tw)),
        ("w_gate_up", (x, w_gu[:, :5], w_down, ids, tw)),
        ("w_gate_up", (x, w_gu[..., :7], w_down, ids, tw)),
        ("w_down", (x, w_gu, w_down[:, :3], ids, tw)),
        ("w_down", (x, w_gu, w_down.double(), ids, tw)),
        ("topk_ids", (x, w_gu, w_down, ids.int(), tw)),
        ("topk_ids", (x, w_gu, w_down, ids + 3, tw)),
        ("topk_ids", (x, w_gu, w_down, ids[:3], tw)),
        ("topk_weights", (x, w_gu, w_down, ids, tw[:, :1])),
        ("topk_weights", (x, w_gu, w_down, ids, (tw > 0.5).long())),
    ]


@pytest.mark.parametrize("fn", [moe_reference, moe_triton])
def test_bad_inputs_raise_value_error_naming_the_argument(fn):
    for name, args in _bad_inputs():
        with pytest.raises(ValueError, match=name):
            fn(*args)


def test_bad_tiles_and_align_args():
    x, w_gu, w_down, ids, tw, _ = make_case(4, 2, 3, 6, 4, "distinct")
    with pytest.raises(ValueError, match="block_n"):
        moe_triton(x, w_gu, w_down, ids, tw, tiles=TileConfig(4, 12, 8))
    with pytest.raises(ValueError, match="precision"):
        moe_triton(x, w_gu, w_down, ids, tw, tiles=TileConfig(4, 8, 8, precision="fast"))
    with pytest.raises(ValueError, match="block_m"):
        moe_align(ids, 3, 0)
    with pytest.raises(ValueError, match="num_experts"):
        moe_align(ids, 0, 4)
    with pytest.raises(ValueError, match="topk_ids"):
        moe_align(ids.flatten(), 3, 4)
