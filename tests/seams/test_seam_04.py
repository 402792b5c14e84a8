"""Seam test for notebooks/04_k2_backbone.ipynb: its from-scratch MLA, Muon and QK-Clip against k25mini."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from k25mini.config import k2, kv_cache_bytes_per_token, nano
from k25mini.model import MLAttention, RotaryEmbedding, capture_max_logits
from k25mini.optim import MuonClip, clip_mla_heads_, qk_clip_gamma, zeropower_via_newtonschulz

NB = Path(__file__).resolve().parents[2] / "notebooks" / "04_k2_backbone.ipynb"


@pytest.fixture(scope="module")
def nb():
    from seam import load_notebook_defs

    return load_notebook_defs(NB)


def _pair(nb, seed=0):
    cfg = nano().text
    torch.manual_seed(seed)
    attn = MLAttention(cfg).eval()
    with torch.no_grad():
        for p in attn.parameters():  # non-unit norm weights too
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    s = nb.MLAScratch(cfg.hidden_size, cfg.num_attention_heads, cfg.q_lora_rank, cfg.kv_lora_rank,
                      cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.rope_theta, cfg.rms_norm_eps)
    s.load_state_dict(attn.state_dict())
    return cfg, attn, s


def test_scratch_mla_equals_package(nb):
    cfg, attn, s = _pair(nb)
    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(2, 9, cfg.hidden_size)
    pos = torch.arange(9).expand(2, 9)
    cos, sin = rope(pos)
    with torch.no_grad():
        torch.testing.assert_close(s(x, pos), attn(x, cos, sin), rtol=1e-5, atol=1e-5)
        # nb RoPE tables == package tables
        c2, s2 = nb.rope_cos_sin(pos, cfg.qk_rope_head_dim, cfg.rope_theta)
        torch.testing.assert_close(c2, cos)
        torch.testing.assert_close(s2, sin)


def test_scratch_decode_paths_equal_package_cache(nb):
    cfg, attn, s = _pair(nb, seed=1)
    from k25mini.model import MLACache

    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(1, 8, cfg.hidden_size)
    cos, sin = rope(torch.arange(8)[None])
    with torch.no_grad():
        cache_nb, cache_pkg = {}, MLACache(1)
        a = [s(x[:, :3], torch.arange(3)[None], cache=cache_nb)]
        b = [attn(x[:, :3], cos[:, :3], sin[:, :3], cache=cache_pkg)]
        for t in range(3, 8):
            a.append(s.decode_absorbed(x[:, t : t + 1], torch.tensor([[t]]), cache_nb))
            b.append(attn(x[:, t : t + 1], cos[:, t : t + 1], sin[:, t : t + 1], cache=cache_pkg, absorb=True))
        torch.testing.assert_close(torch.cat(a, 1), torch.cat(b, 1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache_nb["c_kv"], cache_pkg.c_kv[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cache_nb["k_r"], cache_pkg.k_pe[0], rtol=1e-6, atol=1e-6)


def test_kv_numbers_match_config(nb):
    for t in (k2().text, nano().text):
        for kind in ("mla", "mha"):
            assert nb.kv_numbers_per_token_layer(t, kind) * t.num_hidden_layers * 2 == kv_cache_bytes_per_token(t, kind)


def test_newton_schulz_and_muon_step(nb):
    torch.manual_seed(2)
    g = torch.randn(20, 12)
    torch.testing.assert_close(nb.newton_schulz5(g), zeropower_via_newtonschulz(g, dtype=torch.float32),
                               rtol=1e-4, atol=1e-5)
    w0 = torch.randn(20, 12)
    grads = [torch.randn(20, 12) for _ in range(3)]
    w_nb, buf = w0.clone(), torch.zeros(20, 12)
    p = torch.nn.Parameter(w0.clone())
    opt = MuonClip([p], lr=0.01, weight_decay=0.1, momentum=0.95, ns_dtype=torch.float32)
    for gr in grads:
        nb.muon_step_(w_nb, gr, buf, lr=0.01, momentum=0.95, weight_decay=0.1)
        p.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(w_nb, p.detach(), rtol=1e-5, atol=1e-6)


def test_qk_clip_scratch_equals_package(nb):
    cfg = nano().text
    torch.manual_seed(3)
    a = MLAttention(cfg)
    with torch.no_grad():
        a.q_b_proj.weight.mul_(20.0)
    b = MLAttention(cfg)
    b.load_state_dict(a.state_dict())
    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(2, 10, cfg.hidden_size)
    cos, sin = rope(torch.arange(10).expand(2, 10))
    with capture_max_logits(a) as rec:
        a(x, cos, sin)
    s = rec[""]
    tau = float(s.median())
    g_nb = nb.qk_clip_scratch_(a.q_b_proj.weight, a.kv_b_proj.weight, s, tau, cfg.num_attention_heads,
                               cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim)
    g_pkg = qk_clip_gamma(s, tau)
    clip_mla_heads_(b, g_pkg)
    torch.testing.assert_close(g_nb, g_pkg)
    for n, p in a.state_dict().items():
        torch.testing.assert_close(p, b.state_dict()[n], rtol=1e-6, atol=1e-7)
    assert bool((g_pkg < 1).any())


def test_induction_batch_and_short_training(nb):
    gen = torch.Generator().manual_seed(0)
    ids, labels = nb.induction_batch(gen, batch=3, half=5, vocab=16)
    assert ids.shape == (3, 10) and torch.equal(ids[:, :5], ids[:, 5:])
    assert bool((labels[:, :6] == -100).all()) and torch.equal(labels[:, 6:], ids[:, 6:])
    r = nb.train_run("muonclip", 1e-2, tau=1.0, steps=2)
    assert len(r["loss"]) == 2 and len(r["max_logit"]) == 2


def test_scratch_decoder_layer_equals_package(nb):
    from k25mini.model.decoder import K2DecoderLayer

    cfg = nano().text
    torch.manual_seed(4)
    pkg = K2DecoderLayer(cfg, layer_idx=1).eval()  # layer 1: the first MoE layer
    with torch.no_grad():
        pkg.mlp.router.e_score_correction_bias.copy_(0.05 * torch.randn(cfg.n_routed_experts))
        for p in pkg.parameters():
            if p.ndim == 1:  # non-unit norm weights too
                p.uniform_(0.5, 1.5)
    ours = nb.DecoderLayerScratch(cfg)
    ours.load_state_dict(pkg.state_dict(), strict=True)
    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(3, 7, cfg.hidden_size)
    pos = torch.arange(7).expand(3, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, pos), pkg(x, *rope(pos)), rtol=1e-5, atol=1e-5)
    # the notebook's router is chapter 03's: same selection and weights as the package router
    h = torch.randn(10, cfg.hidden_size)
    ids, w, _ = nb.sigmoid_router(h, pkg.mlp.router.weight, pkg.mlp.router.e_score_correction_bias,
                                  cfg.num_experts_per_tok, cfg.routed_scaling_factor)
    r = pkg.mlp.router(h)
    assert torch.equal(ids, r.topk_ids)
    torch.testing.assert_close(w, r.topk_weights)
