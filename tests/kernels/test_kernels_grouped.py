"""moe_grouped_torch (sort by expert + F.grouped_mm, or the sorted per-expert loop) vs the reference."""

from __future__ import annotations

import pytest
import torch

import kernels.grouped_torch as grouped_torch_mod
from kernels import (
    HAS_GROUPED_MM,
    grouped_mm_supported,
    grouped_mm_usable,
    moe_grouped_torch,
    moe_reference,
    sort_by_expert,
)

FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}
NAMES = ("out", "dX", "dW_gate_up", "dW_down", "d_topk_weights")


def make_case(T, K, E, D, F, seed=0, ids=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    w_gu = torch.randn(E, D, 2 * F, generator=gen) / D**0.5
    w_down = torch.randn(E, F, D, generator=gen) / F**0.5
    if ids is None:
        ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]) if T else torch.zeros(0, K).long()
    tw = torch.rand(T, K, generator=gen) + 0.1
    grad = torch.randn(T, D, generator=gen)
    return x, w_gu, w_down, ids, tw, grad


def run(fn, x, w_gu, w_down, ids, tw, grad, dtype=torch.float32, **kw):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, w_gu, w_down, tw)]
    out = fn(leaves[0], leaves[1], leaves[2], ids, leaves[3], **kw)
    return (out, *torch.autograd.grad(out, leaves, grad.to(out.dtype)))


CASES = {
    # name: (T, K, E, D, F, ids override)
    "aligned_random": (24, 4, 9, 16, 8, None),
    "odd_sizes": (10, 3, 7, 7, 5, None),
    "empty_experts": (12, 2, 6, 8, 4, "even_only"),
    "one_expert": (9, 1, 5, 8, 4, "last"),
    "topk8": (6, 8, 8, 12, 4, None),
    "no_tokens": (0, 2, 3, 8, 4, None),
}


@pytest.mark.parametrize("use_gmm", [None, False])
@pytest.mark.parametrize("case", list(CASES))
def test_grouped_torch_matches_reference(case, use_gmm):
    T, K, E, D, F, mode = CASES[case]
    ids = None
    if mode == "even_only":
        ids = 2 * torch.randint(0, E // 2, (T, K), generator=torch.Generator().manual_seed(1))
    elif mode == "last":
        ids = torch.full((T, K), E - 1)
    args = make_case(T, K, E, D, F, seed=len(case), ids=ids)
    got = run(moe_grouped_torch, *args, use_grouped_mm=use_gmm)
    want = run(moe_reference, *args, dtype=torch.float64)
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, **FP32_TOL, msg=lambda m, n=name: f"{case} {n}: {m}")


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="torch without F.grouped_mm")
def test_grouped_mm_path_taken_and_bf16():
    assert grouped_mm_usable(torch.float32, 16, 8)
    assert not grouped_mm_usable(torch.bfloat16, 12, 8)  # 24-byte rows break the 16-byte rule
    assert not grouped_mm_usable(torch.float64, 16, 8)
    args = make_case(16, 2, 4, 16, 8, seed=5)
    got = run(moe_grouped_torch, *args, dtype=torch.bfloat16, use_grouped_mm=True)
    want = run(moe_reference, *args, dtype=torch.float64)
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.double(), w, atol=3e-2 * w.abs().max().item(), rtol=3e-2,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_grouped_torch_broadcast_grad_is_fine():
    """out.sum().backward() hands grouped_mm an expanded (stride-0) grad; the wrapper makes it contiguous."""
    x, w_gu, w_down, ids, tw, _ = make_case(8, 2, 4, 16, 8)
    x.requires_grad_(True)
    moe_grouped_torch(x, w_gu, w_down, ids, tw).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_sort_by_expert_is_stable():
    ids = torch.tensor([[2, 0], [0, 2], [1, 0]])
    order, counts = sort_by_expert(ids, 4)
    assert order.tolist() == [1, 2, 5, 4, 0, 3]
    assert counts.tolist() == [3, 1, 2, 0]


def test_bad_inputs():
    x, w_gu, w_down, ids, tw, _ = make_case(4, 2, 3, 7, 4)
    with pytest.raises(ValueError, match="use_grouped_mm"):
        moe_grouped_torch(x.bfloat16(), w_gu.bfloat16(), w_down.bfloat16(), ids, tw, use_grouped_mm=True)
    with pytest.raises(ValueError, match="topk_ids"):
        moe_grouped_torch(x, w_gu, w_down, ids - 1, tw)
    with pytest.raises(ValueError, match="w_down"):
        moe_grouped_torch(x, w_gu, w_down.transpose(1, 2), ids, tw)


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="torch without F.grouped_mm")
def test_grouped_mm_supported_checks_layout_not_just_sizes():
    a, w = torch.randn(8, 16), torch.randn(3, 16, 8)
    assert grouped_mm_supported(a, w)
    assert not grouped_mm_supported(torch.randn(8, 17)[:, 1:], w)  # 16-float rows, but 68-byte stride, odd pointer
    assert not grouped_mm_supported(a, w.transpose(1, 2).contiguous().transpose(1, 2))  # last stride != 1
    assert not grouped_mm_supported(a, w.double())  # mixed dtypes
    assert not grouped_mm_supported(a.double(), w.double())  # CPU grouped_mm has no float64


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="torch without F.grouped_mm")
@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_grouped_mm_probe_is_not_fooled_by_no_grad(monkeypatch, ctx):
    """The fwd+bwd probe runs once per (device type, dtype); a first call from no_grad code must not cache False."""
    monkeypatch.setattr(grouped_torch_mod, "_GMM_PROBE", {})
    with ctx():
        assert grouped_mm_usable(torch.float32, 16, 8)
    assert grouped_torch_mod._GMM_PROBE == {("cpu", torch.float32): True}


def test_misaligned_weights_fall_back_and_stay_correct():
    """Weights that are 16-float wide but sliced out of a wider buffer (unaligned strides) take the per-expert loop."""
    x, w_gu, w_down, ids, tw, grad = make_case(10, 2, 4, 16, 8, seed=3)
    w_gu_view = torch.randn(4, 16, 17)[:, :, :16].copy_(w_gu)  # row stride 17 floats = 68 bytes
    assert not grouped_mm_supported(x, w_gu_view)
    with pytest.raises(ValueError, match="use_grouped_mm"):
        moe_grouped_torch(x, w_gu_view, w_down, ids, tw, use_grouped_mm=True)
    got = moe_grouped_torch(x, w_gu_view, w_down, ids, tw)
    want = moe_reference(x.double(), w_gu.double(), w_down.double(), ids, tw.double())
    torch.testing.assert_close(got.double(), want, **FP32_TOL)
