"""Muon half of MuonClip: equal to torch.optim.Muon ("match_rms_adamw") on 2-D params, batched over
leading dims, gate/up split, update RMS ~0.2, AdamW half equal to torch.optim.AdamW, parameter routing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from k25mini.optim import MuonClip, build_optimizer, param_groups_for, zeropower_via_newtonschulz


def run_steps(opt_params, opt, grads):
    for g in grads:
        for p, gi in zip(opt_params, g):
            p.grad = gi.clone()
        opt.step()


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(24, 10), (8, 40)])
def test_matches_torch_muon_match_rms_adamw(shape, nesterov):
    torch.manual_seed(0)
    w0 = torch.randn(*shape)
    grads = [[torch.randn(*shape)] for _ in range(3)]
    a = nn.Parameter(w0.clone())
    b = nn.Parameter(w0.clone())
    ours = MuonClip([a], lr=0.01, weight_decay=0.1, momentum=0.9, nesterov=nesterov, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon([b], lr=0.01, weight_decay=0.1, momentum=0.9, nesterov=nesterov,
                           adjust_lr_fn="match_rms_adamw")
    run_steps([a], ours, grads)
    run_steps([b], ref, grads)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert not torch.allclose(a, w0)


def test_batched_and_split_equal_per_matrix_torch_muon():
    torch.manual_seed(1)
    E, D, F = 3, 12, 5
    w0 = torch.randn(E, D, 2 * F)
    grads = [torch.randn(E, D, 2 * F) for _ in range(2)]
    for split in (1, 2):
        p = nn.Parameter(w0.clone())
        opt = MuonClip([{"params": [p], "split_last": split}], lr=0.02, weight_decay=0.05, momentum=0.9,
                       ns_dtype=torch.bfloat16)
        run_steps([p], opt, [[g] for g in grads])
        blocks = [(e, c) for e in range(E) for c in range(split)]
        w = 2 * F // split
        for e, c in blocks:
            q = nn.Parameter(w0[e, :, c * w : (c + 1) * w].clone())
            ref = torch.optim.Muon([q], lr=0.02, weight_decay=0.05, momentum=0.9, adjust_lr_fn="match_rms_adamw")
            run_steps([q], ref, [[g[e, :, c * w : (c + 1) * w]] for g in grads])
            # bf16 Newton-Schulz via baddbmm vs addmm (equal on CPU today; allow a hair of rounding)
            torch.testing.assert_close(p[e, :, c * w : (c + 1) * w], q, rtol=0, atol=1e-6)
    # the split changes the result (gate and up are not orthogonalised as one matrix)
    p1, p2 = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    bf16 = torch.bfloat16
    run_steps([p1], MuonClip([p1], lr=0.02, ns_dtype=bf16), [[grads[0]]])
    run_steps([p2], MuonClip([{"params": [p2], "split_last": 2}], lr=0.02, ns_dtype=bf16), [[grads[0]]])
    assert (p1 - p2).abs().max() > 1e-3
    # CPU default: float32 Newton-Schulz, close to (not equal to) the bf16 result
    p3 = nn.Parameter(w0.clone())
    opt = MuonClip([{"params": [p3], "split_last": 2}], lr=0.02)
    assert opt.ns_dtype is None
    run_steps([p3], opt, [[grads[0]]])
    torch.testing.assert_close(p3, p2, rtol=0, atol=0.02 * 0.2 * 12**0.5 * 0.05)
    assert not torch.equal(p3, p2)


@pytest.mark.parametrize("shape", [(64, 32), (16, 128), (4, 48, 48)])
def test_update_rms_is_about_0_2(shape):
    torch.manual_seed(2)
    p = nn.Parameter(torch.zeros(*shape))
    p.grad = torch.randn(*shape)
    MuonClip([p], lr=1.0, weight_decay=0.0, ns_dtype=torch.float32).step()
    rms = p.detach().square().mean().sqrt().item()
    # the quintic NS leaves singular values in ~[0.7, 1.2], hence the band; without the
    # 0.2*sqrt(max(m, n)) factor the RMS would be 1/sqrt(max(m, n)) <= 0.18 * 0.8
    assert 0.15 < rms < 0.25, rms
    assert math.isclose(MuonClip.update_scale(shape), 0.2 * math.sqrt(max(shape[-2:])))


def test_newton_schulz_orthogonalises_batched():
    torch.manual_seed(3)
    g = torch.randn(3, 20, 8)
    x = zeropower_via_newtonschulz(g, dtype=torch.float32)
    sv = torch.linalg.svdvals(x)
    assert bool((sv > 0.6).all() and (sv < 1.3).all()), sv
    for i in range(3):
        torch.testing.assert_close(x[i], zeropower_via_newtonschulz(g[i], dtype=torch.float32), rtol=1e-4, atol=1e-5)
    # invariant to the scale of the input (momentum convention does not matter)
    torch.testing.assert_close(zeropower_via_newtonschulz(g * 7.0, dtype=torch.float32), x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="g must have"):
        zeropower_via_newtonschulz(torch.randn(5))


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(4)
    w0 = [torch.randn(6, 4), torch.randn(7)]
    grads = [[torch.randn(6, 4), torch.randn(7)] for _ in range(4)]
    ours = [nn.Parameter(w.clone()) for w in w0]
    ref = [nn.Parameter(w.clone()) for w in w0]
    o1 = MuonClip([{"params": ours, "use_muon": False}], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), adam_eps=1e-8)
    o2 = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    run_steps(ours, o1, grads)
    run_steps(ref, o2, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 8)
        self.norm = nn.Parameter(torch.ones(8))
        self.proj = nn.Linear(8, 8)
        self.router = nn.Linear(8, 4, bias=False)
        self.experts = nn.Module()
        self.experts.w_gate_up = nn.Parameter(torch.randn(4, 8, 6))
        self.experts.w_down = nn.Parameter(torch.randn(4, 3, 8))
        self.conv = nn.Conv2d(3, 8, 2)
        self.lm_head = nn.Linear(8, 10, bias=False)
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_param_routing_and_build():
    m = Toy()
    g = {k: sorted(n for n, _ in v) for k, v in param_groups_for(m).items()}
    assert g["muon"] == ["experts.w_down", "proj.weight"]
    assert g["muon_split"] == ["experts.w_gate_up"]
    assert g["adamw"] == ["conv.weight", "embed_tokens.weight", "lm_head.weight", "router.weight"]
    assert g["adamw_no_decay"] == ["conv.bias", "norm", "proj.bias"]
    n_trainable = sum(1 for p in m.parameters() if p.requires_grad)
    for kind in ("muon", "adamw"):
        opt = build_optimizer(m, kind=kind, lr=1e-3)
        assert sum(len(pg["params"]) for pg in opt.param_groups) == n_trainable
        assert opt.qk_clip is None
    opt = build_optimizer(m, kind="muon", lr=1e-3, adamw_lr=5e-4)
    assert {pg["lr"] for pg in opt.param_groups if not pg["use_muon"]} == {5e-4}
    assert [pg["split_last"] for pg in opt.param_groups if pg["use_muon"]] == [1, 2]
    with pytest.raises(ValueError, match="kind must be"):
        build_optimizer(m, kind="sgd")
    with pytest.raises(ValueError, match="lr must be"):
        build_optimizer(m, lr=0)
    with pytest.raises(ValueError, match="no MLAttention"):
        build_optimizer(m, kind="muonclip")  # QK-Clip needs MLA layers
    with pytest.raises(ValueError, match="use_muon groups"):
        MuonClip([torch.nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="split_last"):
        MuonClip([{"params": [torch.nn.Parameter(torch.ones(3, 5))], "split_last": 2}])
