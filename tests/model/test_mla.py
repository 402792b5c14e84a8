"""MLA attention: against a float64 per-head loop, absorbed == naive, KV-cache, packed documents, max logits."""

from __future__ import annotations

import math

import pytest
import torch
from mla_fixtures import make_mla, tiny_cfg

from k25mini.config import TextConfig
from k25mini.model.cache import MLACache
from k25mini.model.masks import attention_mask, doc_ids_from_cu_seqlens, positions_from_doc_ids
from k25mini.model.mla import MLAttention, capture_max_logits
from k25mini.model.rope import RotaryEmbedding


def make(cfg: TextConfig, seed: int = 0, dtype=torch.float64) -> tuple[MLAttention, RotaryEmbedding]:
    return make_mla(cfg, seed, dtype)


def reference_mla(attn: MLAttention, x: torch.Tensor, pos: torch.Tensor, allowed) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow float64 MLA: explicit per (batch, head, query, key) loops. Returns (out [B,S,D], max logit [H])."""
    x = x.double()
    W = {n: p.detach().double() for n, p in attn.named_parameters()}
    H, dn, dr, dv, C = attn.num_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim, attn.kv_lora_rank
    eps = attn.kv_a_norm.eps

    def rms(v, w):
        return v / torch.sqrt((v * v).mean() + eps) * w

    def rot(v, p):  # rotate-half RoPE of one vector at integer position p, pair i = (v[i], v[i + d/2])
        d = v.shape[0]
        out = v.clone()
        for i in range(d // 2):
            ang = p * attn_base ** (-2.0 * i / d)
            c, s = math.cos(ang), math.sin(ang)
            out[i] = v[i] * c - v[i + d // 2] * s
            out[i + d // 2] = v[i] * s + v[i + d // 2] * c
        return out

    attn_base = ROPE_BASE
    B, S, _ = x.shape
    out = torch.zeros(B, S, W["o_proj.weight"].shape[0], dtype=torch.float64)
    maxlog = torch.full((H,), -math.inf, dtype=torch.float64)
    scale = attn.softmax_scale
    for b in range(B):
        qs, ks, vs = [], [], []
        for t in range(S):
            xt = x[b, t]
            cq = rms(W["q_a_proj.weight"] @ xt, W["q_a_norm.weight"])
            q = (W["q_b_proj.weight"] @ cq).view(H, dn + dr)
            kva = W["kv_a_proj.weight"] @ xt
            ckv = rms(kva[:C], W["kv_a_norm.weight"])
            kr = rot(kva[C:], int(pos[b, t]))
            kv = (W["kv_b_proj.weight"] @ ckv).view(H, dn + dv)
            qs.append([torch.cat([q[h, :dn], rot(q[h, dn:], int(pos[b, t]))]) for h in range(H)])
            ks.append([torch.cat([kv[h, :dn], kr]) for h in range(H)])
            vs.append([kv[h, dn:] for h in range(H)])
        for i in range(S):
            heads = []
            for h in range(H):
                js = [j for j in range(S) if allowed(b, i, j)]
                logits = torch.stack([qs[i][h] @ ks[j][h] * scale for j in js])
                maxlog[h] = max(maxlog[h], logits.max())
                p = torch.softmax(logits, 0)
                heads.append(sum(p[n] * vs[j][h] for n, j in enumerate(js)))
            out[b, i] = W["o_proj.weight"] @ torch.cat(heads)
    return out, maxlog


ROPE_BASE = 100.0


@pytest.mark.parametrize("absorb", [False, True])
def test_causal_matches_float64_loop_and_max_logits(absorb):
    cfg = tiny_cfg()
    attn, rope = make(cfg)
    B, S = 2, 5
    x = torch.randn(B, S, cfg.hidden_size, dtype=torch.float64)
    pos = torch.arange(S).expand(B, S)
    cos, sin = rope(pos, torch.float64)
    with capture_max_logits(attn) as ml:
        y = attn(x, cos, sin, absorb=absorb)
    ref, ref_max = reference_mla(attn, x, pos, lambda b, i, j: j <= i)
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ml[""].double(), ref_max, rtol=1e-6, atol=1e-6)  # recorded in float32


def test_packed_documents_match_float64_loop_and_separate_runs():
    cfg = tiny_cfg()
    attn, rope = make(cfg, seed=1)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 7, 7]])
    B, S = doc_ids.shape
    x = torch.randn(B, S, cfg.hidden_size, dtype=torch.float64)
    pos = positions_from_doc_ids(doc_ids)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    cos, sin = rope(pos, torch.float64)
    mask = attention_mask(S, S, doc_ids=doc_ids)
    y = attn(x, cos, sin, attn_mask=mask)
    ref, _ = reference_mla(attn, x, pos, lambda b, i, j: j <= i and bool(doc_ids[b, i] == doc_ids[b, j]))
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)
    # each document alone (positions from 0, plain causal) gives the same rows
    for b in range(B):
        for d in doc_ids[b].unique():
            idx = (doc_ids[b] == d).nonzero().squeeze(1)
            xs = x[b : b + 1, idx]
            c1, s1 = rope(torch.arange(len(idx))[None], torch.float64)
            torch.testing.assert_close(attn(xs, c1, s1)[0], y[b, idx], rtol=1e-10, atol=1e-10)


def test_cu_seqlens_equals_doc_ids():
    cu = torch.tensor([0, 3, 5, 6, 10, 12])
    d = doc_ids_from_cu_seqlens(cu, 2, 6)
    assert d.tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 4, 4]]
    with pytest.raises(ValueError, match="row boundary"):
        doc_ids_from_cu_seqlens(torch.tensor([0, 4, 12]), 2, 6)
    with pytest.raises(ValueError, match="end at B\\*S"):
        doc_ids_from_cu_seqlens(torch.tensor([0, 4, 11]), 2, 6)
    with pytest.raises(ValueError, match="strictly increasing"):
        doc_ids_from_cu_seqlens(torch.tensor([0, 3, 3, 12]), 2, 6)


@pytest.mark.parametrize("q_lora_rank", [12, None])
def test_kv_cache_prefill_and_decode_match_full_forward(q_lora_rank):
    cfg = tiny_cfg(q_lora_rank=q_lora_rank)
    attn, rope = make(cfg, seed=2)
    B, S, P = 2, 7, 3
    x = torch.randn(B, S, cfg.hidden_size, dtype=torch.float64)
    pos = torch.arange(S).expand(B, S)
    cos, sin = rope(pos, torch.float64)
    full = attn(x, cos, sin)
    for absorb in (False, True):
        cache = MLACache(1)
        outs = [attn(x[:, :P], cos[:, :P], sin[:, :P], cache=cache, absorb=absorb)]  # prefill
        for t in range(P, S):  # decode one token at a time
            outs.append(attn(x[:, t : t + 1], cos[:, t : t + 1], sin[:, t : t + 1], cache=cache, absorb=absorb))
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
        assert cache.seq_len() == S
        assert cache.c_kv[0].shape == (B, S, cfg.kv_lora_rank) and cache.k_pe[0].shape == (B, S, cfg.qk_rope_head_dim)
        # chunked prefill (several queries against a non-empty cache) uses an offset causal mask
        cache = MLACache(1)
        a = attn(x[:, :P], cos[:, :P], sin[:, :P], cache=cache, absorb=absorb)
        b = attn(x[:, P:], cos[:, P:], sin[:, P:], cache=cache, absorb=absorb)
        torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-10, atol=1e-10)


def test_absorbed_equals_naive_float32_and_grads():
    cfg = tiny_cfg(kv_lora_rank=16, q_lora_rank=None)
    attn, rope = make(cfg, seed=3, dtype=torch.float32)
    x = torch.randn(2, 6, cfg.hidden_size, requires_grad=True)
    cos, sin = rope(torch.arange(6).expand(2, 6))
    y0 = attn(x, cos, sin, absorb=False)
    g0 = torch.autograd.grad(y0.square().sum(), [x, attn.kv_b_proj.weight])
    y1 = attn(x, cos, sin, absorb=True)
    g1 = torch.autograd.grad(y1.square().sum(), [x, attn.kv_b_proj.weight])
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_recording_paths_agree_and_training_mode_gate():
    cfg = tiny_cfg()
    attn, rope = make(cfg, seed=4, dtype=torch.float32)
    x = torch.randn(1, 5, cfg.hidden_size)
    cos, sin = rope(torch.arange(5)[None])
    with capture_max_logits(attn) as a:
        attn(x, cos, sin, absorb=False)
    with capture_max_logits(attn) as b:
        attn(x, cos, sin, absorb=True)
    torch.testing.assert_close(a[""], b[""], rtol=1e-5, atol=1e-5)
    assert a[""].shape == (cfg.num_attention_heads,)
    # the flag alone records only in training mode; records accumulate a running max
    attn.record_max_logits = True
    attn.eval()
    attn(x, cos, sin)
    assert attn.max_logits is None
    attn.train()
    attn(x, cos, sin)
    first = attn.max_logits.clone()
    attn(x * 3, cos, sin)
    assert bool((attn.max_logits >= first).all())
    attn.reset_max_logits()
    assert attn.max_logits is None


def test_bad_inputs():
    cfg = tiny_cfg()
    attn, rope = make(cfg, dtype=torch.float32)
    x = torch.randn(1, 4, cfg.hidden_size)
    cos, sin = rope(torch.arange(4)[None])
    with pytest.raises(ValueError, match="x must be"):
        attn(x[0], cos, sin)
    with pytest.raises(ValueError, match="cos must be"):
        attn(x, cos[:, :3], sin[:, :3])
    with pytest.raises(ValueError, match="attn_mask must be"):
        attn(x, cos, sin, attn_mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="positions must be an integer"):
        rope(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="cfg must be"):
        MLAttention({"hidden_size": 4})
    with pytest.raises(ValueError, match="q_len"):
        attention_mask(5, 4)
    cache = MLACache(1)
    cache.update(0, torch.zeros(2, 1, 3), torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match="batch size"):
        cache.update(0, torch.zeros(1, 1, 3), torch.zeros(1, 1, 2))
