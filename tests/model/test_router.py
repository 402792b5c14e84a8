"""Router: sigmoid top-k with selection-only bias, group-limited selection, weights, aux loss, bias update.

References are float64 per-token Python loops written straight from the formulas.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from k25mini.config import TextConfig, nano
from k25mini.model.moe import MoELayer, update_moe_biases
from k25mini.model.router import (
    Router,
    aux_free_bias_update,
    expert_load,
    select_experts,
    sequence_aux_loss,
)


def tiny_cfg(**kw) -> TextConfig:
    base = dataclasses.replace(nano().text, hidden_size=12, moe_intermediate_size=8, n_routed_experts=6,
                               num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=2.5)
    return dataclasses.replace(base, **kw)


def ref_route(x, w, b, k, n_group, topk_group, norm, scale):
    """Per-token loop: returns list of dict {expert: weight} (float64)."""
    out = []
    E = w.shape[0]
    per = E // n_group
    for t in range(x.shape[0]):
        s = [1.0 / (1.0 + math.exp(-float(x[t] @ w[e]))) for e in range(E)]
        c = [s[e] + float(b[e]) for e in range(E)]
        gscore = [sum(sorted(c[g * per:(g + 1) * per], reverse=True)[: min(2, per)]) for g in range(n_group)]
        groups = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
        cand = [e for e in range(E) if e // per in groups]
        chosen = sorted(cand, key=lambda e: -c[e])[:k]
        ws = [s[e] for e in chosen]
        tot = sum(ws) if norm else 1.0
        out.append({e: s[e] / tot * scale for e in chosen})
    return out


@pytest.mark.parametrize(
    "E,k,n_group,topk_group,norm,scale",
    [(6, 2, 1, 1, True, 2.5), (5, 1, 1, 1, True, 1.0), (5, 3, 1, 1, False, 2.827), (8, 3, 4, 2, True, 1.5),
     (9, 2, 3, 1, True, 1.0), (6, 6, 2, 2, False, 1.0)],
)
def test_router_matches_loop_reference(E, k, n_group, topk_group, norm, scale):
    torch.manual_seed(0)
    cfg = tiny_cfg(n_routed_experts=E, num_experts_per_tok=k, n_group=n_group, topk_group=topk_group,
                   norm_topk_prob=norm, routed_scaling_factor=scale)
    r = Router(cfg).double()
    with torch.no_grad():
        r.weight.normal_()
        r.e_score_correction_bias.copy_(torch.randn(E) * 0.3)
    x = torch.randn(17, cfg.hidden_size, dtype=torch.float64)
    out = r(x)
    assert out.topk_ids.shape == (17, k) and out.topk_ids.dtype == torch.int64
    assert out.scores.dtype == torch.float64
    ref = ref_route(x, r.weight.detach(), r.e_score_correction_bias, k, n_group, topk_group, norm, scale)
    for t in range(17):
        got = {int(e): float(w) for e, w in zip(out.topk_ids[t], out.topk_weights[t].detach())}
        assert set(got) == set(ref[t]), f"token {t}: {got} vs {ref[t]}"
        for e in got:
            assert abs(got[e] - ref[t][e]) < 1e-12


def test_router_scores_in_fp32_for_bf16_input():
    cfg = tiny_cfg()
    r = Router(cfg).to(torch.bfloat16)
    assert r.e_score_correction_bias.dtype == torch.float32  # the bias stays fp32 after .to(bf16)
    out = r(torch.randn(4, cfg.hidden_size, dtype=torch.bfloat16))
    assert out.scores.dtype == torch.float32 and out.topk_weights.dtype == torch.float32


def test_bias_changes_selection_but_not_weight_values():
    torch.manual_seed(1)
    cfg = tiny_cfg(n_routed_experts=6, num_experts_per_tok=2, norm_topk_prob=False, routed_scaling_factor=1.0)
    r = Router(cfg).double()
    x = torch.randn(9, cfg.hidden_size, dtype=torch.float64)
    base = r(x)
    with torch.no_grad():
        r.e_score_correction_bias[3] = 10.0  # expert 3 now always wins a slot
    biased = r(x)
    assert (biased.topk_ids == 3).any(-1).all()
    # the weight of every chosen expert is its UNBIASED score
    torch.testing.assert_close(biased.topk_weights, biased.scores.gather(-1, biased.topk_ids), rtol=0, atol=0)
    torch.testing.assert_close(biased.scores, base.scores, rtol=0, atol=0)
    assert not r.e_score_correction_bias.requires_grad
    assert "e_score_correction_bias" not in dict(r.named_parameters())
    assert "e_score_correction_bias" in r.state_dict()


def test_normalised_weights_sum_to_scale():
    cfg = tiny_cfg(routed_scaling_factor=2.827, num_experts_per_tok=3)
    r = Router(cfg)
    w = r(torch.randn(11, cfg.hidden_size)).topk_weights
    torch.testing.assert_close(w.sum(-1), torch.full((11,), 2.827), rtol=1e-6, atol=1e-6)


def test_select_experts_bad_inputs():
    s = torch.rand(3, 6)
    with pytest.raises(ValueError, match="n_group"):
        select_experts(s, None, 2, n_group=4)
    with pytest.raises(ValueError, match="topk_group"):
        select_experts(s, None, 2, n_group=2, topk_group=3)
    with pytest.raises(ValueError, match="top_k"):
        select_experts(s, None, 4, n_group=2, topk_group=1)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        Router(tiny_cfg(n_routed_experts=6, num_experts_per_tok=4, n_group=3, topk_group=1))
    with pytest.raises(ValueError, match="x must be"):
        Router(tiny_cfg())(torch.randn(3, 5))


def test_group_limited_masks_with_minus_inf():
    # all biased scores negative: masking ineligible experts with 0 would wrongly pick them
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.8]])
    bias = torch.full((4,), -5.0)
    ids = select_experts(scores, bias, top_k=2, n_group=2, topk_group=1)
    assert sorted(ids[0].tolist()) == [2, 3]


# ------------------------------------------------------------------------------------------------------------------
# sequence-level aux loss
# ------------------------------------------------------------------------------------------------------------------
def ref_seq_aux(scores, ids, alpha):
    B, S, E = scores.shape
    K = ids.shape[-1]
    total = 0.0
    for b in range(B):
        loss = 0.0
        for i in range(E):
            f = E / (K * S) * sum(1 for t in range(S) if i in ids[b, t].tolist())
            p = sum(float(scores[b, t, i]) / float(scores[b, t].sum()) for t in range(S)) / S
            loss += f * p
        total += alpha * loss
    return total / B


def test_sequence_aux_loss_matches_formula_and_grad_flows_through_scores_only():
    torch.manual_seed(2)
    scores = torch.rand(3, 7, 5, dtype=torch.float64, requires_grad=True)
    ids = select_experts(scores.view(-1, 5), None, 2).view(3, 7, 2)
    loss = sequence_aux_loss(scores, ids, alpha=0.01)
    assert abs(loss.item() - ref_seq_aux(scores.detach(), ids, 0.01)) < 1e-12
    loss.backward()
    # d/ds of alpha * mean_b sum_i f_i P_i with f fixed: check against finite differences
    eps = 1e-6
    s0 = scores.detach().clone()
    num = torch.zeros_like(s0)
    for idx in [(0, 0, 0), (1, 3, 2), (2, 6, 4)]:
        sp, sm = s0.clone(), s0.clone()
        sp[idx] += eps
        sm[idx] -= eps
        num[idx] = (sequence_aux_loss(sp, ids, 0.01) - sequence_aux_loss(sm, ids, 0.01)) / (2 * eps)
        assert abs(float(scores.grad[idx]) - float(num[idx])) < 1e-8


def test_sequence_aux_loss_is_alpha_when_balanced():
    # 4 experts, top-1, each expert chosen once per sequence, equal scores -> f = 1, P = 1/E
    scores = torch.full((2, 4, 4), 0.5, dtype=torch.float64)
    ids = torch.arange(4).view(1, 4, 1).expand(2, 4, 1)
    assert abs(float(sequence_aux_loss(scores, ids, 0.3)) - 0.3) < 1e-12
    with pytest.raises(ValueError, match="scores must be"):
        sequence_aux_loss(scores[0], ids[0], 0.3)


def test_moe_layer_aux_loss_uses_sequences_and_respects_alpha_and_mode():
    torch.manual_seed(3)
    cfg = tiny_cfg(aux_loss_alpha=0.05)
    m = MoELayer(cfg, backend="torch").double()
    x = torch.randn(3, 5, cfg.hidden_size, dtype=torch.float64)
    m(x)
    r = m.router(x.view(-1, cfg.hidden_size))
    want = ref_seq_aux(r.scores.detach().view(3, 5, -1), r.topk_ids.view(3, 5, -1), 0.05)
    assert abs(m.last_aux_loss.item() - want) < 1e-12
    assert m.last_aux_loss.requires_grad
    m.eval()
    m(x)
    assert float(m.last_aux_loss) == 0.0
    m0 = MoELayer(tiny_cfg(aux_loss_alpha=0.0)).double()
    m0(x)
    assert float(m0.last_aux_loss) == 0.0


# ------------------------------------------------------------------------------------------------------------------
# aux-loss-free bias update
# ------------------------------------------------------------------------------------------------------------------
def test_bias_update_rule_matches_loop():
    bias = torch.tensor([0.0, 0.1, -0.2, 0.3, 0.0])
    load = torch.tensor([10, 2, 4, 4, 0])
    want = bias.clone()
    mean = sum(load.tolist()) / 5
    for i in range(5):
        d = mean - load[i].item()
        want[i] += 0.01 * (1 if d > 0 else -1 if d < 0 else 0)
    aux_free_bias_update(bias, load, 0.01)
    torch.testing.assert_close(bias, want, rtol=0, atol=1e-7)


def test_update_bias_accumulates_micro_batches_and_resets():
    torch.manual_seed(4)
    cfg = tiny_cfg(bias_update_rate=0.01)
    m = MoELayer(cfg, backend="torch")
    x1, x2 = torch.randn(7, cfg.hidden_size), torch.randn(9, cfg.hidden_size)
    m(x1)
    l1 = m.last_load.clone()
    m(x2)
    l2 = m.last_load.clone()
    assert int(l1.sum()) == 7 * cfg.num_experts_per_tok and int(l2.sum()) == 9 * cfg.num_experts_per_tok
    torch.testing.assert_close(m.last_load, expert_load(m.router(x2).topk_ids, cfg.n_routed_experts))
    total = (l1 + l2).double()
    want = 0.01 * torch.sign(total.mean() - total)
    with torch.no_grad():
        m.eval()
        m(x1)  # eval forwards do not count
        m.train()
    update_moe_biases(m)
    torch.testing.assert_close(m.router.e_score_correction_bias, want.float(), rtol=0, atol=1e-7)
    assert int(m.load_accum.sum()) == 0
    m.update_bias()  # nothing accumulated: no change
    torch.testing.assert_close(m.router.e_score_correction_bias, want.float(), rtol=0, atol=1e-7)


def test_bias_update_balances_a_skewed_stream():
    """Frozen router, tokens skewed towards a few experts: the bias alone brings max/mean load below 1.3."""
    torch.manual_seed(5)
    E, D, K = 8, 16, 2
    cfg = tiny_cfg(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, bias_update_rate=0.01)
    m = MoELayer(cfg, backend="torch")
    u = torch.randn(D)
    with torch.no_grad():
        # router rows aligned with the shared token direction u to very different degrees
        m.router.weight.copy_(torch.randn(E, D) * 0.3 + torch.linspace(-1, 1, E)[:, None] * u / u.norm())
    def batch():
        return torch.randn(256, D) * 0.5 + 2.0 * u / u.norm()
    def imbalance():
        with torch.no_grad():
            load = expert_load(m.router(batch()).topk_ids, E).double()
        return float(load.max() / load.mean())
    before = imbalance()
    with torch.no_grad():
        for _ in range(150):
            m(batch())
            m.update_bias()
    after = imbalance()
    assert before > 2.0, before
    assert after < 1.3, after


def test_frozen_layer_keeps_its_bias():
    """A layer whose router weight does not require grad (a frozen language model) keeps its selection bias;
    the load accumulator is still reset."""
    torch.manual_seed(6)
    cfg = tiny_cfg(bias_update_rate=0.01)
    m = MoELayer(cfg, backend="torch")
    m.requires_grad_(False)
    m(torch.randn(11, cfg.hidden_size))
    assert int(m.load_accum.sum()) > 0
    update_moe_biases(m)
    assert torch.count_nonzero(m.router.e_score_correction_bias) == 0 and int(m.load_accum.sum()) == 0
    m.requires_grad_(True)
    m(torch.randn(11, cfg.hidden_size))
    update_moe_biases(m)
    assert torch.count_nonzero(m.router.e_score_correction_bias) > 0
