"""Notebook 03's from-scratch router, sort/align and Triton gate/up kernel must agree with the packages."""

from __future__ import annotations

import pytest
import torch

import kernels
from k25mini.model import router as pkg_router
from seam import ROOT, load_notebook_defs

NB = ROOT / "notebooks/03_moe_triton_kernels.ipynb"


@pytest.fixture(scope="module")
def nb():
    # seam.load_notebook_defs keeps decorators (@triton.jit) and registers the source for inspect
    return load_notebook_defs(NB)


def test_router_matches_package(nb):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(20, 16, generator=g), torch.randn(9, 16, generator=g) / 4
    bias = 0.2 * torch.randn(9, generator=g)
    ids, weights, scores = nb.sigmoid_router(x, w, bias, 3, 2.827)
    s_pkg = pkg_router.router_scores(x, w)
    ids_pkg = pkg_router.select_experts(s_pkg, bias, 3)
    torch.testing.assert_close(scores, s_pkg)
    assert torch.equal(ids, ids_pkg)
    torch.testing.assert_close(weights, pkg_router.topk_weights_from_scores(s_pkg, ids_pkg, True, 2.827))
    load = torch.bincount(ids.flatten(), minlength=9)
    want = pkg_router.aux_free_bias_update(bias.clone(), load, 1e-3)
    torch.testing.assert_close(nb.update_bias(bias, load, 1e-3), want)


def test_bias_update_balances_a_skewed_stream(nb):
    no_bias, _ = nb.simulate_balance(0.0, steps=20)
    with_bias, load = nb.simulate_balance(1e-3, steps=200)
    assert min(no_bias) > 2.0  # the stream really is skewed
    assert max(with_bias[-20:]) < 1.3
    assert int(load.sum()) == nb.BALANCE_BATCH * nb.BALANCE_TOPK


@pytest.mark.parametrize("T,K,E,block_m", [(6, 2, 5, 4), (13, 3, 9, 4), (7, 1, 3, 8), (12, 8, 9, 2)])
def test_align_matches_kernels(nb, T, K, E, block_m):
    ids = torch.randint(0, E, (T, K), generator=torch.Generator().manual_seed(T))
    ids[:, 0] = E - 1
    ours = nb.align_from_scratch(ids, E, block_m)
    ref = kernels.moe_align_reference(ids, E, block_m)
    for got, name in zip(ours, ("sorted_ids", "block_expert", "padded_offsets", "counts"), strict=True):
        assert torch.equal(got, getattr(ref, name).cpu()), name


def test_notebook_triton_kernel_matches_reference(nb):
    g = torch.Generator().manual_seed(3)
    T, K, E, D, F, bm = 9, 2, 5, 11, 6, 4
    x, w = torch.randn(T, D, generator=g), torch.randn(E, D, 2 * F, generator=g) / D**0.5
    ids = 2 * torch.randint(0, 3, (T, K), generator=g)  # experts 1 and 3 idle
    meta = kernels.moe_align(ids, E, bm)
    h = nb.grouped_gate_up_swiglu(x, w, meta.sorted_ids, meta.block_expert, K, bm, block_n=8, block_k=8)
    _, h_ref = kernels.gate_up_swiglu_reference(x, w, meta)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_swiglu_backward_and_dense_baseline(nb):
    g = torch.Generator().manual_seed(4)
    gate = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    dh = torch.randn(4, 5, dtype=torch.float64, generator=g)
    auto = torch.autograd.grad(torch.nn.functional.silu(gate) * up, (gate, up), dh)
    for ours, ref in zip(nb.swiglu_backward(gate.detach(), up.detach(), dh), auto, strict=True):
        torch.testing.assert_close(ours, ref)
    # with every token on expert 0, the "equal FLOPs" dense baseline is the MoE itself
    x, wgu, wd = torch.randn(6, 8, generator=g), torch.randn(3, 8, 10, generator=g), torch.randn(3, 5, 8, generator=g)
    ids, tw = torch.zeros(6, 2, dtype=torch.long), torch.rand(6, 2, generator=g)
    torch.testing.assert_close(nb.dense_equal_flops(x, wgu, wd, ids, tw), kernels.moe_reference(x, wgu, wd, ids, tw))


def test_padding_waste(nb):
    assert nb.padding_waste(256, 64, 4, 1) == 0.0
    waste = [nb.padding_waste(256, 64, 4, b) for b in (16, 64)]
    assert 0 < waste[0] < waste[1] < 1
