"""k25mini.train.parallel in one process: the pieces the gloo tests rely on, checked without a process group."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from k25mini.config import nano
from k25mini.optim.build import build_optimizer
from k25mini.train.parallel import (
    build_parallel_model,
    build_parallel_optimizer,
    clip_grad_norm_,
    lm_loss,
    toy_lm_batch,
)


def _cfg():
    c = nano()
    t = dataclasses.replace(c.text, vocab_size=300, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
                            qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                            num_experts_per_tok=2)
    return c.replace(text=t, vision=None, media_placeholder_token_id=None)


def test_meta_build_is_deterministic_and_materialised():
    a = build_parallel_model(_cfg(), None, seed=3).state_dict()
    b = build_parallel_model(_cfg(), None, seed=3).state_dict()
    c = build_parallel_model(_cfg(), None, seed=4).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert all(not v.is_meta and torch.isfinite(v.float()).all() for v in a.values())
    norm = next(k for k in a if k.endswith("input_layernorm.weight"))
    assert torch.equal(a[norm], torch.ones_like(a[norm]))
    bias = next(k for k in a if k.endswith("e_score_correction_bias"))
    assert torch.equal(a[bias], torch.zeros_like(a[bias]))


def test_k25_meta_build_with_vision_tower():
    m = build_parallel_model(nano(), None, kind="k25", seed=0)
    pe = m.vision_tower.patch_embed.pos_emb
    assert not pe.time_weight.is_meta and torch.isfinite(pe.time_weight).all()
    assert not any(p.is_meta for p in m.parameters())


def test_sharded_muonclip_on_plain_tensors_is_muonclip():
    """Without DTensors ShardedMuonClip must do exactly what build_optimizer's MuonClip does."""
    torch.manual_seed(0)
    m1 = build_parallel_model(_cfg(), None, seed=0)
    m2 = copy.deepcopy(m1)
    o1 = build_parallel_optimizer(m1, lr=1e-2, qk_clip_tau=1.0)
    o2 = build_optimizer(m2, "muonclip", lr=1e-2, qk_clip_tau=1.0)
    for step in range(3):
        batch = toy_lm_batch(step, 2, 12, 300)
        for m, o in ((m1, o1), (m2, o2)):
            loss, _ = lm_loss(m, batch)
            loss.backward()
            o.step()
            o.zero_grad()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert sum(h["clipped_heads"] for h in o1.qk_clip.history) > 0
    assert o1.qk_clip.history == o2.qk_clip.history


def test_clip_grad_norm_matches_torch():
    m = build_parallel_model(_cfg(), None, seed=0)
    loss, _ = lm_loss(m, toy_lm_batch(0, 2, 12, 300))
    loss.backward()
    want = torch.nn.utils.get_total_norm([p.grad for p in m.parameters() if p.grad is not None])
    got = clip_grad_norm_(m, 1e-3)
    assert got == pytest.approx(float(want), rel=1e-6)
    after = torch.nn.utils.get_total_norm([p.grad for p in m.parameters() if p.grad is not None])
    assert float(after) == pytest.approx(1e-3, rel=1e-3)


def test_toy_batch_is_a_pure_function_of_the_index():
    a, b = toy_lm_batch(5, 4, 8, 300), toy_lm_batch(5, 4, 8, 300)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["input_ids"].shape == (4, 8)
    assert not torch.equal(a["input_ids"], toy_lm_batch(6, 4, 8, 300)["input_ids"])
    with pytest.raises(ValueError, match="index"):
        toy_lm_batch(-1, 4, 8, 300)
