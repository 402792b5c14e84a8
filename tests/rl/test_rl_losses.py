"""The RL loss registry against hand-computed tensors (paper_facts §1, §7 "Lessons" item 3)."""

from __future__ import annotations

import math

import pytest
import torch

from k25mini.rl import LOSSES, get_loss, group_advantages, policy_loss

D = torch.float64


def leaf(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D, requires_grad=True)


def grad_of(name, logp, old, adv, mask, **hp):
    logp = logp.detach().clone().requires_grad_(True)
    loss, stats = get_loss(name)(logp, old, adv, mask, **hp)
    loss.backward()
    return loss.detach(), logp.grad, stats


def test_registry_lists_all_and_rejects_unknown():
    for name in ("kimi_k25", "kimi_k2", "ppo_clip", "grpo", "dr_grpo", "cispo", "gspo", "dapo"):
        assert name in LOSSES
    with pytest.raises(ValueError, match="kimi_k25"):
        get_loss("nope")


# ----------------------------------------------------------------------------------- kimi_k25


def test_k25_gradient_at_ratio_one_is_minus_A_over_N():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.3, 0.9]], dtype=D))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([0.75, -0.5], dtype=D)
    loss, g, stats = grad_of("kimi_k25", logp, logp.clone(), adv, mask, tau=0.3)
    N = 5
    expected = torch.tensor([[-0.75, -0.75, 0.0], [0.5, 0.5, 0.5]], dtype=D) / N
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-15)
    # value at ρ = 1: −Σ A over counted tokens / N (penalty is 0)
    assert loss.item() == pytest.approx(-(2 * 0.75 - 3 * 0.5) / N, abs=1e-15)
    assert stats["masked_frac"] == 0.0 and stats["penalty"] == 0.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_k25_masked_tokens_get_exactly_zero_gradient_for_either_sign(sign):
    alpha, beta, tau = 0.5, 2.0, 0.2
    ratios = torch.tensor([[0.3, 0.8, 1.5, 3.0], [1.0, 0.49, 2.01, 1.2]], dtype=D)
    old = torch.log(torch.tensor([[0.2, 0.4, 0.3, 0.1], [0.5, 0.6, 0.3, 0.25]], dtype=D))
    logp = old + ratios.log()
    adv = torch.tensor([sign * 1.3, sign * 0.4], dtype=D)
    mask = torch.ones(2, 4)
    _, g, stats = grad_of("kimi_k25", logp, old, adv, mask, alpha=alpha, beta=beta, tau=tau)
    outside = (ratios < alpha) | (ratios > beta)
    assert outside.sum() == 4
    assert torch.all(g[outside] == 0.0)  # exactly zero, not merely small
    # inside: d/dlogp [−ρA + τ(log ρ)²] / N = (−ρA + 2τ log ρ) / N, written out by hand
    N = 8
    want = (-ratios * adv[:, None] + 2 * tau * ratios.log()) / N
    torch.testing.assert_close(g[~outside], want[~outside], rtol=1e-12, atol=1e-15)
    assert stats["masked_frac"] == pytest.approx(4 / 8)
    assert stats["masked_low_frac"] == pytest.approx(2 / 8)
    assert stats["masked_high_frac"] == pytest.approx(2 / 8)


def test_k25_differs_from_ppo_clip_which_is_one_sided():
    # ratio 3.0 with A < 0: PPO still pushes it down (non-zero grad); K2.5 masks it.
    old = torch.log(torch.tensor([[0.1]], dtype=D))
    logp = old + math.log(3.0)
    adv, mask = torch.tensor([-1.0], dtype=D), torch.ones(1, 1)
    _, g_ppo, s_ppo = grad_of("ppo_clip", logp, old, adv, mask)
    _, g_k25, s_k25 = grad_of("kimi_k25", logp, old, adv, mask)
    assert g_ppo.item() == pytest.approx(3.0)  # −A·ρ / N with N = 1
    assert s_ppo["masked_frac"] == 0.0
    assert g_k25.item() == 0.0 and s_k25["masked_frac"] == 1.0


def test_k25_penalty_on_masked_option_keeps_only_the_penalty_gradient():
    old = torch.log(torch.tensor([[0.1, 0.2]], dtype=D))
    ratios = torch.tensor([[3.0, 1.0]], dtype=D)
    logp = old + ratios.log()
    _, g, _ = grad_of("kimi_k25", logp, old, torch.tensor([1.0], dtype=D), torch.ones(1, 2), tau=0.5,
                      penalty_on_masked=True)
    assert g[0, 0].item() == pytest.approx(2 * 0.5 * math.log(3.0) / 2)
    assert g[0, 1].item() == pytest.approx(-1.0 / 2)


def _k25_loop(logp, old, adv, mask, alpha, beta, tau):
    """Slow, obviously-correct float64 reference of the K2.5 loss."""
    total, n = 0.0, 0
    for j in range(logp.shape[0]):
        for i in range(logp.shape[1]):
            if mask[j, i]:
                n += 1
                rho = torch.exp(logp[j, i] - old[j, i])
                if alpha <= rho.item() <= beta:
                    total = total - rho * adv[j] + tau * torch.log(rho) ** 2
    return total / n


def test_k25_matches_loop_reference_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    B, L = 4, 6
    old = -torch.rand(B, L, generator=g, dtype=D) * 3
    logp = old + torch.randn(B, L, generator=g, dtype=D) * 0.6
    mask = torch.rand(B, L, generator=g) > 0.25
    adv = torch.randn(B, generator=g, dtype=D)
    loss, grad, _ = grad_of("kimi_k25", logp, old, adv, mask, alpha=0.6, beta=1.7, tau=0.05)
    x = logp.clone().requires_grad_(True)
    ref = _k25_loop(x, old, adv, mask, 0.6, 1.7, 0.05)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, x.grad, rtol=1e-12, atol=1e-14)


def test_k25_log_ratio_clamp_and_garbage_on_padding():
    old = torch.tensor([[-1.0, -1.0, float("nan")], [-200.0, -1.0, -1.0]], dtype=D)
    logp = torch.tensor([[-1.0, 150.0, float("-inf")], [-1.0, -1.0, float("nan")]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    loss, g, stats = grad_of("kimi_k25", logp, old, torch.tensor([1.0, -1.0], dtype=D), mask)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert stats["log_ratio_absmax"] == 20.0  # clamped from 151 and 199
    assert g[0, 2] == 0 and g[1, 2] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 1.0}, "alpha"), ({"beta": 0.9}, "beta"), ({"alpha": 0.0}, "alpha"), ({"tau": -1.0}, "tau"),
     ({"num_tokens": 0}, "num_tokens")],
)
def test_k25_bad_hparams(kwargs, match):
    x = torch.zeros(1, 2, dtype=D)
    with pytest.raises(ValueError, match=match):
        get_loss("kimi_k25")(x, x, torch.ones(1, dtype=D), torch.ones(1, 2), **kwargs)


def test_bad_shapes_and_masks():
    f = get_loss("kimi_k25")
    x = torch.zeros(2, 3, dtype=D)
    with pytest.raises(ValueError, match="old_logp"):
        f(x, torch.zeros(2, 4, dtype=D), torch.ones(2, dtype=D), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        f(x, x, torch.ones(3, dtype=D), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        f(x, x, torch.ones(2, dtype=D), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="logp"):
        f(torch.zeros(6, dtype=D), x, torch.ones(2, dtype=D), torch.ones(2, 3))


# ----------------------------------------------------------------------------------- the others


def test_k2_squared_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.3], [0.2, 0.4, 0.9]], dtype=D))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([0.5, -0.5], dtype=D)
    tau = 0.7
    # at ratio 1: L = mean(A²), grad = −2τA / K on every counted token of response j
    loss, g, _ = grad_of("kimi_k2", old, old.clone(), adv, mask, tau=tau)
    assert loss.item() == pytest.approx(0.25)
    want = torch.tensor([[-0.35, -0.35, 0.0], [0.35, 0.35, 0.35]], dtype=D)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-15)
    # off-policy: seq log-ratio 0.2 for response 0 → (0.5 − 0.7·0.2)² ; response 1 unchanged
    logp = old.clone()
    logp[0, 0] += 0.2
    loss, _, _ = grad_of("kimi_k2", logp, old, adv, mask, tau=tau)
    assert loss.item() == pytest.approx(((0.5 - 0.14) ** 2 + 0.25) / 2)


def test_grpo_per_sequence_mean_by_hand():
    old = torch.zeros(2, 4, dtype=D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, -2.0], dtype=D)
    loss, g, _ = grad_of("grpo", old, old, adv, mask)
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)
    want = torch.tensor([[-1 / 2 / 2] * 2 + [0, 0], [2 / 4 / 2] * 4], dtype=D)
    torch.testing.assert_close(g, want)


def test_dr_grpo_constant_normaliser():
    old = torch.zeros(2, 4, dtype=D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    _, g, _ = grad_of("dr_grpo", old, old, torch.tensor([1.0, -2.0], dtype=D), mask, max_len=10)
    torch.testing.assert_close(g, torch.tensor([[-1 / 20] * 2 + [0, 0], [2 / 20] * 4], dtype=D))


def test_cispo_keeps_gradient_with_clipped_weight():
    old = torch.log(torch.tensor([[0.1, 0.1]], dtype=D))
    logp = old + torch.log(torch.tensor([[1.0, 3.0]], dtype=D))
    _, g, s = grad_of("cispo", logp, old, torch.tensor([2.0], dtype=D), torch.ones(1, 2), eps_high=0.28)
    torch.testing.assert_close(g, torch.tensor([[-2.0 / 2, -2.0 * 1.28 / 2]], dtype=D))
    assert s["weight_clipped_frac"] == 0.5


def test_ppo_clip_fraction_counts_only_the_active_side():
    old = torch.zeros(1, 4, dtype=D)
    logp = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5]], dtype=D))
    _, g, s = grad_of("ppo_clip", logp, old, torch.tensor([1.0], dtype=D), torch.ones(1, 4))
    # A > 0: only ρ > 1.2 is clipped (zero grad); ρ = 0.5 keeps its gradient
    assert s["masked_frac"] == pytest.approx(0.25)
    assert g[0, 3] == 0 and g[0, 0] != 0


# ----------------------------------------------------------------------------------- all losses


def _random_batch(seed=1, B=6, L=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, L, generator=g, dtype=D) * 2
    logp = old + torch.randn(B, L, generator=g, dtype=D) * 0.3
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = torch.arange(L)[None, :] < lengths[:, None]
    rewards = torch.rand(B, generator=g, dtype=D)
    return logp, old, group_advantages(rewards, 3), mask


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shard_losses_weighted_by_global_counts_sum_to_full_batch(name):
    logp, old, adv, mask = _random_batch()
    B, L = logp.shape
    glob = {"num_tokens": int(mask.sum()), "num_sequences": B}
    if name == "dr_grpo":
        glob["max_len"] = L
    full, g_full, _ = grad_of(name, logp, old, adv, mask)
    x = logp.clone().requires_grad_(True)
    total = 0
    for lo, hi in [(0, 2), (2, 3), (3, 6)]:
        part, _ = policy_loss(name, x[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], **glob)
        total = total + part
    total.backward()
    torch.testing.assert_close(total.detach(), full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x.grad, g_full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_never_receives_gradient(name):
    logp, old, adv, mask = _random_batch(seed=3)
    _, g, stats = grad_of(name, logp, old, adv, mask)
    assert torch.all(g[~mask] == 0)
    assert stats["num_tokens"] == mask.sum().item()
    assert 0.0 <= stats["masked_frac"] <= 1.0


@pytest.mark.parametrize("name", ["kimi_k25", "kimi_k2", "ppo_clip", "grpo", "cispo"])
def test_one_step_moves_parameters_towards_the_rewarded_sample(name):
    torch.manual_seed(0)
    V, L, K = 5, 4, 4
    logits = torch.zeros(L, V, requires_grad=True)
    with torch.no_grad():
        samples = torch.distributions.Categorical(logits=logits.expand(K, L, V)).sample()
    rewards = (samples == 2).float().mean(dim=1)  # reward = fraction of token 2
    adv = group_advantages(rewards, K)
    assert adv.abs().sum() > 0
    lp = torch.log_softmax(logits, -1).expand(K, L, V).gather(-1, samples[..., None])[..., 0]
    loss, _ = get_loss(name)(lp, lp.detach(), adv, torch.ones(K, L))
    loss.backward()
    before = logits.detach().clone()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    assert not torch.equal(before, logits.detach())
    p2_before = torch.softmax(before, -1)[:, 2].mean()
    p2_after = torch.softmax(logits.detach(), -1)[:, 2].mean()
    assert p2_after > p2_before
