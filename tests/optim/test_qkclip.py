"""QK-Clip: per-head gamma, the MLA weight scaling, and the post-step hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from k25mini.config import TextConfig
from k25mini.model.mla import MLAttention, capture_max_logits
from k25mini.model.rope import RotaryEmbedding
from k25mini.optim import QKClip, build_optimizer, clip_mla_heads_, qk_clip_gamma


def tiny_cfg(**kw) -> TextConfig:
    base = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4,
        v_head_dim=4, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, rope_theta=100.0,
        max_position_embeddings=64,
    )
    base.update(kw)
    return TextConfig(**base)


def all_logits(attn: MLAttention, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
    """Full scaled logit tensor [B, H, S, S] (causal entries only meaningful) computed from the weights."""
    S = x.shape[1]
    cos, sin = rope(torch.arange(S).expand(x.shape[0], S), x.dtype)
    from k25mini.model.rope import apply_rope

    q = attn.query(x)
    qn, qr = q.split([attn.qk_nope_head_dim, attn.qk_rope_head_dim], -1)
    qr = apply_rope(qr, cos, sin)
    c, kr = attn.latent(x)
    kr = apply_rope(kr.unsqueeze(2), cos, sin).squeeze(2)
    w_uk, _ = attn._up_weights()
    kn = torch.einsum("btc,hnc->bthn", c, w_uk)
    return (torch.einsum("bshn,bthn->bhst", qn, kn) + torch.einsum("bshr,btr->bhst", qr, kr)) * attn.softmax_scale


def test_gamma():
    s = torch.tensor([50.0, 100.0, 200.0, -3.0, 400.0])
    torch.testing.assert_close(qk_clip_gamma(s, 100.0), torch.tensor([1.0, 1.0, 0.5, 1.0, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="tau"):
        qk_clip_gamma(s, 0.0)


@pytest.mark.parametrize("q_lora_rank", [8, None])
def test_clip_caps_clipped_heads_and_leaves_others(q_lora_rank):
    cfg = tiny_cfg(q_lora_rank=q_lora_rank)
    torch.manual_seed(0)
    attn = MLAttention(cfg).double()
    with torch.no_grad():  # make heads 0 and 2 "hot"
        for p in attn.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.6)
        H, dn, dr = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        wq = (attn.q_proj if q_lora_rank is None else attn.q_b_proj).weight.view(H, dn + dr, -1)
        wq[0] *= 6.0
        wq[2] *= 4.0
    rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(2, 6, cfg.hidden_size, dtype=torch.float64)
    cos, sin = rope(torch.arange(6).expand(2, 6), torch.float64)
    causal = torch.ones(6, 6).tril().bool()
    with capture_max_logits(attn) as rec:
        attn(x, cos, sin)
    s = rec[""]
    before = all_logits(attn, x, rope).detach()
    torch.testing.assert_close(before[..., causal].amax(dim=(0, 2)), s.double(), rtol=1e-6, atol=1e-6)
    tau = float(s.sort().values[1]) * 0.999  # just below the 2nd smallest max: the top three heads get clipped
    hot = s > tau
    assert 1 <= int(hot.sum()) < cfg.num_attention_heads
    kv_a, v_rows = attn.kv_a_proj.weight.clone(), attn.kv_b_proj.weight.view(H, dn + cfg.v_head_dim, -1)[:, dn:].clone()
    gamma = qk_clip_gamma(s, tau)
    clip_mla_heads_(attn, gamma)
    with capture_max_logits(attn) as rec2:
        attn(x, cos, sin)
    after = all_logits(attn, x, rope).detach()
    assert bool((rec2[""][hot] <= tau * (1 + 1e-5)).all())
    torch.testing.assert_close(rec2[""][hot].double(), torch.full((int(hot.sum()),), tau, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    # every logit of head h is multiplied by exactly gamma_h; unclipped heads are bit-identical
    torch.testing.assert_close(after, before * gamma.double()[None, :, None, None], rtol=1e-10, atol=1e-10)
    assert torch.equal(after[:, ~hot], before[:, ~hot])
    assert torch.equal(attn.kv_a_proj.weight, kv_a)  # shared k^R untouched
    assert torch.equal(attn.kv_b_proj.weight.view(H, dn + cfg.v_head_dim, -1)[:, dn:], v_rows)  # values untouched
    with pytest.raises(ValueError, match="gamma must be"):
        clip_mla_heads_(attn, torch.ones(3))


class OneLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn = MLAttention(cfg)
        self.rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta)

    def forward(self, x):
        cos, sin = self.rope(torch.arange(x.shape[1]).expand(x.shape[0], -1))
        return self.attn(x, cos, sin)


def test_post_step_hook_clips_from_the_training_forward():
    cfg = tiny_cfg()
    torch.manual_seed(1)
    m = OneLayer(cfg)
    with torch.no_grad():
        m.attn.q_b_proj.weight.mul_(40.0)
        m.attn.kv_b_proj.weight.mul_(40.0)
    x = torch.randn(2, 5, cfg.hidden_size)
    with capture_max_logits(m) as rec:
        m(x)
    tau = float(rec["attn"].median())
    opt = build_optimizer(m, kind="muonclip", lr=1e-9, qk_clip_tau=tau)
    assert isinstance(opt.qk_clip, QKClip) and m.attn.record_max_logits
    m.train()
    m(x).square().mean().backward()
    assert m.attn.max_logits is not None  # recorded in training mode
    opt.step()
    assert m.attn.max_logits is None  # consumed and reset by the hook
    name, (s, gamma) = next(iter(opt.qk_clip.last_stats.items()))
    hot = gamma < 1
    assert name == "attn" and 1 <= int(hot.sum()) < cfg.num_attention_heads
    assert opt.qk_clip.history[-1]["clipped_heads"] == int(hot.sum())
    with capture_max_logits(m) as rec2:
        m(x)
    assert bool((rec2["attn"][hot] <= tau * (1 + 1e-4)).all()), (rec2["attn"], tau)
    # no recording -> the hook does nothing
    opt.zero_grad()
    m.eval()
    m(x).square().mean().backward()
    w = m.attn.q_b_proj.weight.clone()
    n_hist = len(opt.qk_clip.history)
    opt.step()
    assert len(opt.qk_clip.history) == n_hist
    assert (m.attn.q_b_proj.weight - w).abs().max() < 1e-6  # only the tiny Muon step


def _dp_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_cfg()
        torch.manual_seed(0)  # identical replicas
        m = OneLayer(cfg)
        with torch.no_grad():
            m.attn.q_b_proj.weight.mul_(30.0)
        clip = QKClip(m, tau=1.0)
        torch.manual_seed(100 + rank)  # different data per replica -> different local maxima
        with capture_max_logits(m) as rec:
            m(torch.randn(2, 5, cfg.hidden_size) * (1 + rank))
        m.attn.max_logits = rec["attn"]
        clip()
        out[rank] = {k: v.clone() for k, v in m.state_dict().items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_data_parallel_replicas_clip_identically():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as mgr:
        out = mgr.dict()
        mp.spawn(_dp_worker, args=(2, port, out), nprocs=2, join=True)
        a, b = out[0], out[1]
    assert a and set(a) == set(b)  # an empty state dict would compare nothing
    for k in a:
        assert torch.equal(a[k], b[k]), k
