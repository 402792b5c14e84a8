"""Block-diagonal (varlen) MLA attention for packed documents (issue #15) against the dense masked path and a
slow per-document float64 loop: outputs, gradients (inputs and parameters), recorded per-head max logits, full
model losses (K2 and K2.5), the bucketed layout itself, and that the path is really taken.

Tolerances: float32 comparisons of varlen against dense use rtol = atol = 1e-5 for outputs, losses and max
logits, and for gradients rtol = 1e-4 with atol = 1e-5 * max(1, max |reference gradient|) per tensor (the two
paths sum in different orders); float64 comparisons use 1e-10 (max logits: 1e-6, as they are recorded in
float32).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from mla_fixtures import make_mla
from mla_fixtures import tiny_cfg as _tiny_cfg
from torch.utils._python_dispatch import TorchDispatchMode

from k25mini.config import TextConfig, nano
from k25mini.model import K2ForCausalLM
from k25mini.model.cache import MLACache
from k25mini.model.decoder import set_varlen_attention
from k25mini.model.masks import attention_mask, doc_ids_from_cu_seqlens, doc_packing, positions_from_doc_ids
from k25mini.model.mla import MLAttention, capture_max_logits
from k25mini.model.rope import RotaryEmbedding, apply_rope
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.optim import build_optimizer

F32 = dict(rtol=1e-5, atol=1e-5)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


def assert_grad_close(a: torch.Tensor, b: torch.Tensor, msg=None) -> None:
    """Gradient tolerance: rtol 1e-4, atol 1e-5 relative to the largest entry of the reference (float32)."""
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=F32_GRAD["rtol"], atol=F32_GRAD["atol"] * scale, msg=msg)


def tiny_cfg(**kw) -> TextConfig:
    return _tiny_cfg(**{"max_position_embeddings": 256, **kw})


def make(cfg: TextConfig, seed: int = 0, dtype=torch.float32) -> tuple[MLAttention, RotaryEmbedding]:
    return make_mla(cfg, seed, dtype)


def rows(*lengths_per_row: list[int]) -> torch.Tensor:
    """doc_ids [B, S] from document lengths per row (ids restart at 0 in every row)."""
    out = [torch.cat([torch.full((n,), d) for d, n in enumerate(lens)]) for lens in lengths_per_row]
    assert len({len(r) for r in out}) == 1
    return torch.stack(out)


# (name, doc_ids): the edge cases of the issue
LAYOUTS = {
    "mixed_b3": rows([5, 20, 1, 14], [40], [1, 1, 1, 37]),
    "one_doc_per_row": rows([32], [32]),
    "single_token_docs": rows([1] * 24, [1] * 24),
    "very_different_lengths": rows([1, 2, 57, 3, 1], [60, 4]),
    "all_one_doc_b1": rows([48]),
    "padding_as_a_doc": rows([7, 9, 16], [3, 29]),  # the trailing run of pads is its own document
    "ids_reused_non_adjacent": torch.tensor([[0, 0, 1, 1, 0, 0, 0, 2, 2, 0]]),  # three runs of 0 = 3 documents
}


def inputs(attn: MLAttention, rope: RotaryEmbedding, doc_ids: torch.Tensor, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*doc_ids.shape, attn.o_proj.out_features, generator=g, dtype=dtype)
    cos, sin = rope(positions_from_doc_ids(doc_ids), dtype)
    return x, cos, sin


def run(attn, x, cos, sin, *, mask=None, packing=None, grad_seed: int = 2):
    """Output, max logits [H] and gradients (wrt x, then every parameter) of <y, fixed random upstream grad>."""
    attn.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    with capture_max_logits(attn) as ml:
        y = attn(xx, cos, sin, attn_mask=mask, packing=packing)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    (y * up).sum().backward()
    grads = [xx.grad] + [p.grad for _, p in attn.named_parameters()]
    return y.detach(), ml.get(""), grads


def reference_per_document(attn: MLAttention, rope: RotaryEmbedding, x: torch.Tensor, doc_ids: torch.Tensor):
    """Slow float64 reference: every document alone, positions from 0, an explicit causal softmax per head and
    per query over the document's own earlier tokens. Returns (out [B, S, D], max logit [H])."""
    x = x.double()
    H, dn, dv = attn.num_heads, attn.qk_nope_head_dim, attn.v_head_dim
    out = torch.zeros(*x.shape[:2], attn.o_proj.out_features, dtype=torch.float64)
    maxlog = torch.full((H,), -math.inf, dtype=torch.float64)
    B, S = doc_ids.shape
    with torch.no_grad():
        for b in range(B):
            bounds = [0] + [s for s in range(1, S) if doc_ids[b, s] != doc_ids[b, s - 1]] + [S]
            for lo, hi in zip(bounds, bounds[1:]):
                xd = x[b : b + 1, lo:hi]
                n = hi - lo
                cos, sin = rope(torch.arange(n)[None], torch.float64)
                q = attn.query(xd)[0]  # [n, H, dn + dr]
                q = torch.cat([q[..., :dn], apply_rope(q[..., dn:][None], cos, sin)[0]], -1)
                c_kv, k_pe = attn.latent(xd)
                k_pe = apply_rope(k_pe[:, :, None], cos, sin)[0, :, 0]  # [n, dr]
                kv = attn.kv_b_proj(c_kv)[0].view(n, H, dn + dv)
                heads = torch.zeros(n, H, dv, dtype=torch.float64)
                for h in range(H):
                    for i in range(n):
                        logits = torch.stack([
                            (q[i, h] @ torch.cat([kv[j, h, :dn], k_pe[j]])) * attn.softmax_scale for j in range(i + 1)
                        ])
                        maxlog[h] = max(maxlog[h], logits.max())
                        p = torch.softmax(logits, 0)
                        heads[i, h] = sum(p[j] * kv[j, h, dn:] for j in range(i + 1))
                out[b, lo:hi] = attn.o_proj(heads.reshape(n, H * dv))
    return out, maxlog


# ------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("overhead", [0, 4096, math.inf])
def test_packing_layout_is_a_permutation(name, overhead):
    doc_ids = LAYOUTS[name]
    B, S = doc_ids.shape
    pk = doc_packing(doc_ids, bucket_overhead=overhead)
    assert torch.equal(pk.perm[pk.inv], torch.arange(B * S))
    assert sum(pk.lengths) == B * S and sum(bk.n for bk in pk.buckets) == len(pk.lengths)
    assert pk.num_slots == sum(bk.n * bk.length for bk in pk.buckets)
    valid = torch.cat([bk.valid.reshape(-1) for bk in pk.buckets])
    assert int(valid.sum()) == B * S and bool(valid[pk.inv].all())
    for bk in pk.buckets:  # left-aligned: real tokens first, and the longest document fills the bucket
        lens = bk.valid.sum(1)
        assert bool((bk.valid == (torch.arange(bk.length)[None] < lens[:, None])).all())
        assert int(lens.max()) == bk.length
    if overhead == 0:
        assert [bk.length for bk in pk.buckets] == sorted(set(pk.lengths))  # one bucket per distinct length
    if overhead == math.inf:
        assert len(pk.buckets) == 1
    for H in (1, 3):
        gather, scatter = pk.head_major(H)
        assert gather.shape == (H * pk.num_slots,)
        assert torch.equal(gather[scatter], torch.arange(B * S * H))


def test_packing_lengths_and_runs():
    pk = doc_packing(LAYOUTS["ids_reused_non_adjacent"])
    assert pk.lengths == (2, 2, 3, 2, 1)
    pk = doc_packing(rows([5, 20, 1, 14], [40]))
    assert pk.lengths == (5, 20, 1, 14, 40)
    # documents of similar length share a bucket, a long one gets its own
    pk = doc_packing(rows([2, 3, 3, 2, 190], [4, 196]), bucket_overhead=4096)
    assert sorted(bk.length for bk in pk.buckets) == [4, 196]


# ------------------------------------------------------------------------------- layer: varlen == dense
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_varlen_equals_dense_float32_outputs_grads_max_logits(name):
    doc_ids = LAYOUTS[name]
    attn, rope = make(tiny_cfg(), seed=3)
    x, cos, sin = inputs(attn, rope, doc_ids)
    S = doc_ids.shape[1]
    y0, m0, g0 = run(attn, x, cos, sin, mask=attention_mask(S, S, doc_ids=doc_ids))
    for overhead in (0, 4096, math.inf):  # however the documents are bucketed
        y1, m1, g1 = run(attn, x, cos, sin, packing=doc_packing(doc_ids, bucket_overhead=overhead))
        torch.testing.assert_close(y1, y0, **F32)
        torch.testing.assert_close(m1, m0, **F32)
        assert m1.dtype == torch.float32 and m1.shape == (attn.num_heads,)
        for a, b in zip(g1, g0, strict=True):
            assert_grad_close(a, b)


@pytest.mark.parametrize("name", ["mixed_b3", "single_token_docs", "padding_as_a_doc"])
@pytest.mark.parametrize("sdpa", [None, True])
def test_varlen_without_recording_matches(name, sdpa):
    doc_ids = LAYOUTS[name]
    attn, rope = make(tiny_cfg(), seed=4)
    attn.varlen_sdpa = sdpa  # None: the explicit kernel on CPU; True: F.scaled_dot_product_attention
    x, cos, sin = inputs(attn, rope, doc_ids)
    S = doc_ids.shape[1]
    mask = attention_mask(S, S, doc_ids=doc_ids)
    for train in (True, False):  # recording off: the flag is unset, or set but in eval mode
        attn.train(train)
        attn.record_max_logits = not train
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        y0 = attn(xs[0], cos, sin, attn_mask=mask)
        y1 = attn(xs[1], cos, sin, packing=doc_packing(doc_ids))
        assert attn.max_logits is None
        torch.testing.assert_close(y1, y0, **F32)
        up = torch.randn_like(y0)
        g0 = torch.autograd.grad((y0 * up).sum(), [xs[0], *attn.parameters()])
        g1 = torch.autograd.grad((y1 * up).sum(), [xs[1], *attn.parameters()])
        for a, b in zip(g1, g0, strict=True):
            assert_grad_close(a, b)


@pytest.mark.parametrize("name", ["mixed_b3", "very_different_lengths", "ids_reused_non_adjacent"])
def test_varlen_float64_matches_per_document_loop(name):
    doc_ids = LAYOUTS[name]
    attn, rope = make(tiny_cfg(), seed=5, dtype=torch.float64)
    x, cos, sin = inputs(attn, rope, doc_ids, dtype=torch.float64)
    y, m, _ = run(attn, x, cos, sin, packing=doc_packing(doc_ids))
    ref, ref_max = reference_per_document(attn, rope, x, doc_ids)
    torch.testing.assert_close(y, ref, **F64)
    torch.testing.assert_close(m.double(), ref_max, rtol=1e-6, atol=1e-6)  # recorded in float32
    # and each document run alone through the layer (plain causal, positions from 0) gives the same rows
    with torch.no_grad():
        for b in range(doc_ids.shape[0]):
            s = 0
            for n in doc_packing(doc_ids[b : b + 1]).lengths:
                c1, s1 = rope(torch.arange(n)[None], torch.float64)
                torch.testing.assert_close(attn(x[b : b + 1, s : s + n], c1, s1)[0], y[b, s : s + n], **F64)
                s += n
            assert s == doc_ids.shape[1]  # the documents covered the row: no row compared vacuously


def test_max_logits_only_over_allowed_positions():
    """A huge logit between two documents (or from a later token) must not be recorded."""
    doc_ids = rows([3, 5])
    attn, rope = make(tiny_cfg(), seed=6)
    x, cos, sin = inputs(attn, rope, doc_ids)
    x[0, 7] *= 50.0  # the last token of doc 1: only its own row may see itself
    S = doc_ids.shape[1]
    _, m_dense, _ = run(attn, x, cos, sin, mask=attention_mask(S, S, doc_ids=doc_ids))
    _, m_var, _ = run(attn, x, cos, sin, packing=doc_packing(doc_ids))
    torch.testing.assert_close(m_var, m_dense, **F32)
    # running maximum: a second call keeps the larger value
    attn.record_max_logits = True
    attn.train()
    attn.reset_max_logits()
    attn(x * 0.1, cos, sin, packing=doc_packing(doc_ids))
    small = attn.max_logits.clone()
    attn(x, cos, sin, packing=doc_packing(doc_ids))
    torch.testing.assert_close(attn.max_logits, torch.maximum(small, m_var), **F32)


def test_bfloat16_varlen_matches_dense():
    doc_ids = LAYOUTS["mixed_b3"]
    attn, rope = make(tiny_cfg(), seed=7, dtype=torch.bfloat16)
    x, cos, sin = inputs(attn, rope, doc_ids, dtype=torch.bfloat16)
    S = doc_ids.shape[1]
    y0, m0, _ = run(attn, x, cos, sin, mask=attention_mask(S, S, doc_ids=doc_ids))
    y1, m1, _ = run(attn, x, cos, sin, packing=doc_packing(doc_ids))
    torch.testing.assert_close(y1, y0, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(m1, m0, rtol=2e-2, atol=2e-2)


def test_packing_rejects_cache_absorb_mask_and_wrong_shape():
    doc_ids = rows([2, 2])
    attn, rope = make(tiny_cfg())
    x, cos, sin = inputs(attn, rope, doc_ids)
    pk = doc_packing(doc_ids)
    with pytest.raises(ValueError, match="packing"):
        attn(x, cos, sin, packing=pk, cache=MLACache(1))
    with pytest.raises(ValueError, match="packing"):
        attn(x, cos, sin, packing=pk, absorb=True)
    with pytest.raises(ValueError, match="packing"):
        attn(x, cos, sin, packing=pk, attn_mask=attention_mask(4, 4, doc_ids=doc_ids))
    with pytest.raises(ValueError, match="packing is for"):
        attn(x[:, :3], cos[:, :3], sin[:, :3], packing=pk)


# ------------------------------------------------------------------------------- the path is really taken
class _SquareScores(TorchDispatchMode):
    """Records whether any op produced a tensor whose last two dims are [S, S] (a dense score matrix)."""

    def __init__(self, S: int) -> None:
        super().__init__()
        self.S, self.seen = S, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.ndim >= 2 and tuple(t.shape[-2:]) == (self.S, self.S):
                self.seen.append(f"{func} {tuple(t.shape)}")
        return out


def tiny_model_cfg(**kw) -> TextConfig:
    return dataclasses.replace(nano().text, num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                               moe_intermediate_size=16, q_lora_rank=16, kv_lora_rank=16, **kw)


def test_model_takes_the_varlen_path_and_never_builds_s_by_s_scores(monkeypatch):
    torch.manual_seed(8)
    m = K2ForCausalLM(tiny_model_cfg()).train()
    m.set_max_logit_recording(True)
    doc_ids = rows([9, 17, 1, 30, 15], [40, 32])  # S = 72 (no other dim of the model), the longest doc 40
    ids = torch.randint(0, 512, doc_ids.shape)
    calls = {"varlen": 0, "naive": 0, "packings": 0}
    orig_var, orig_naive = MLAttention._attend_varlen, MLAttention._attend_naive
    import k25mini.model.decoder as dec

    orig_pack = dec.doc_packing

    def var(self, *a, **k):
        calls["varlen"] += 1
        return orig_var(self, *a, **k)

    def naive(self, *a, **k):
        calls["naive"] += 1
        return orig_naive(self, *a, **k)

    def pack(*a, **k):
        calls["packings"] += 1
        return orig_pack(*a, **k)

    monkeypatch.setattr(MLAttention, "_attend_varlen", var)
    monkeypatch.setattr(MLAttention, "_attend_naive", naive)
    monkeypatch.setattr(dec, "doc_packing", pack)
    with _SquareScores(72) as mode:
        m.loss(ids, ids, doc_ids=doc_ids).backward()
    assert calls == {"varlen": 2, "naive": 0, "packings": 1}  # every layer; the layout built once per forward
    assert mode.seen == []  # neither a [.., S, S] mask nor dense scores, forward or backward
    # the detector works: the escape hatch takes the dense path, which does build S x S scores
    set_varlen_attention(m, False)
    with _SquareScores(72) as mode:
        m.loss(ids, ids, doc_ids=doc_ids).backward()
    assert calls["naive"] == 2 and calls["varlen"] == 2 and mode.seen
    # no doc_ids, a cache or absorb=True keep the dense/cached paths
    set_varlen_attention(m, True)
    m(ids)
    m(ids, doc_ids=doc_ids, absorb=True)
    m.eval()
    m(ids[:, :5], kv_cache=m.new_kv_cache())
    assert calls["varlen"] == 2


# ------------------------------------------------------------------------------- whole models
def _model_grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _loss_grads_maxlogits(m, varlen: bool, **kw):
    set_varlen_attention(m, varlen)
    m.zero_grad(set_to_none=True)
    with capture_max_logits(m) as ml:
        loss = m.loss(**kw)
    loss.backward()
    return loss.detach(), _model_grads(m), ml


def _assert_same(a, b, *, f64: bool = False):
    (l0, g0, m0), (l1, g1, m1) = a, b
    torch.testing.assert_close(l1, l0, **(F64 if f64 else F32))
    assert sorted(g1) == sorted(g0) and len(g0) > 0
    for n in g0:
        if f64:
            torch.testing.assert_close(g1[n], g0[n], **F64, msg=lambda s, n=n: f"{n}: {s}")
        else:
            assert_grad_close(g1[n], g0[n], msg=lambda s, n=n: f"{n}: {s}")
    assert sorted(m1) == sorted(m0) and len(m0) > 0
    for n in m0:
        torch.testing.assert_close(m1[n], m0[n], **F32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k2_loss_and_grads_varlen_equal_dense(dtype):
    torch.manual_seed(9)
    m = K2ForCausalLM(tiny_model_cfg()).to(dtype).train()
    doc_ids = rows([5, 20, 1, 14, 24], [64], [1, 1, 2, 60])
    ids = torch.randint(0, 512, doc_ids.shape)
    dense = _loss_grads_maxlogits(m, False, input_ids=ids, labels=ids, doc_ids=doc_ids)
    var = _loss_grads_maxlogits(m, True, input_ids=ids, labels=ids, doc_ids=doc_ids)
    _assert_same(dense, var, f64=dtype == torch.float64)
    # cu_seqlens is the same layout
    cu = torch.tensor([0] + np.cumsum([5, 20, 1, 14, 24, 64, 1, 1, 2, 60]).tolist())
    assert doc_packing(doc_ids_from_cu_seqlens(cu, 3, 64)).lengths == doc_packing(doc_ids).lengths
    by_cu = _loss_grads_maxlogits(m, True, input_ids=ids, labels=ids, cu_seqlens=cu)
    _assert_same(var, by_cu, f64=True)


def test_k2_eval_logits_varlen_equal_dense():
    torch.manual_seed(10)
    m = K2ForCausalLM(tiny_model_cfg()).eval()
    doc_ids = LAYOUTS["mixed_b3"]
    ids = torch.randint(0, 512, doc_ids.shape)
    with torch.no_grad():
        set_varlen_attention(m, False)
        a = m(ids, doc_ids=doc_ids)
        set_varlen_attention(m, True)
        b = m(ids, doc_ids=doc_ids)
    torch.testing.assert_close(b, a, **F32)


def test_k25_loss_with_images_varlen_equals_dense():
    torch.manual_seed(11)
    m = K25ForConditionalGeneration(dataclasses.replace(nano(), text=tiny_model_cfg())).train()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)]
    counts = [sum(m.media_token_counts(im)) for im in imgs]
    docs = [[10, 11, 256] + [m.pad_id] * counts[0] + [259, 12], [13, 14, 15],
            [256] + [m.pad_id] * counts[1] + [259, 16, 17, 18]]
    S = 64
    ids = torch.zeros(2, S, dtype=torch.long)
    doc_ids = torch.zeros(2, S, dtype=torch.long)
    row0 = docs[0] + docs[1]
    ids[0, : len(row0)] = torch.tensor(row0)
    doc_ids[0, len(docs[0]) : len(row0)] = 1
    doc_ids[0, len(row0) :] = 2  # padding as its own document
    ids[1, : len(docs[2])] = torch.tensor(docs[2])
    ids[1, len(docs[2]) :] = torch.randint(20, 200, (S - len(docs[2]),))
    doc_ids[1, len(docs[2]) :] = 1
    labels = torch.full_like(ids, -100)
    nxt = ids[:, 1:]
    ok = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (nxt != m.pad_id)
    labels[:, :-1] = torch.where(ok, nxt, -100)
    kw = dict(input_ids=ids, labels=labels, media=imgs, doc_ids=doc_ids, position_ids=positions_from_doc_ids(doc_ids))
    dense = _loss_grads_maxlogits(m, False, **kw)
    var = _loss_grads_maxlogits(m, True, **kw)
    _assert_same(dense, var)
    assert any(n.startswith("vision_tower.") for n in var[1])


def test_muonclip_step_same_weights_either_path():
    """The recorded maxima drive QK-Clip: one MuonClip step from the same start gives the same weights."""
    torch.manual_seed(12)
    base = K2ForCausalLM(tiny_model_cfg()).train()
    doc_ids = rows([5, 27], [16, 16])
    ids = torch.randint(0, 512, doc_ids.shape)
    with base.capture_max_logits() as ml:
        base(ids, doc_ids=doc_ids)
    tau = float(min(v.min() for v in ml.values())) * 0.5  # every head is clipped
    state = {k: v.clone() for k, v in base.state_dict().items()}
    after = {}
    for varlen in (False, True):
        m = K2ForCausalLM(tiny_model_cfg()).train()
        m.load_state_dict(state)
        set_varlen_attention(m, varlen)
        opt = build_optimizer(m, kind="muonclip", lr=1e-3, qk_clip_tau=tau)
        (m.loss(ids, ids, doc_ids=doc_ids) + m.moe_aux_loss()).backward()
        opt.step()
        assert opt.qk_clip.history[-1]["clipped_heads"] == 2 * m.config.num_attention_heads
        after[varlen] = m.state_dict()
    for k in after[False]:
        assert_grad_close(after[True][k], after[False][k], msg=lambda s, k=k: f"{k}: {s}")
