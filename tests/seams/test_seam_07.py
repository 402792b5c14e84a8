"""Seam: notebook 07's from-scratch losses, advantages, nucleus filter, soft grounding reward, Toggle and RL
iteration agree with k25mini.rl; its results views read the summary the chapter 07 experiment writes."""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from k25mini.experiments.ch07_clipped_rl.config import SUITES, TEXT_SUITES, config_for
from k25mini.experiments.ch07_clipped_rl.run import summarise
from k25mini.rl.advantages import group_advantages
from k25mini.rl.iteration import rl_iteration
from k25mini.rl.losses import get_loss
from k25mini.rl.rewards import grounding_reward
from k25mini.rl.rollout import _draw
from k25mini.rl.toggle import Toggle, percentile_budget
from k25mini.world import World
from k25mini.world.rng import rng_for
from seam import load_notebook_defs

NB = "notebooks/07_clipped_rl.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


def _batch(seed, B=4, L=7, drift=0.7):
    g = torch.Generator().manual_seed(seed)
    old = -4 * torch.rand(B, L, generator=g)
    logp = (old + drift * torch.randn(B, L, generator=g)).requires_grad_()
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, L, generator=g) < 0.8
    mask[:, 0] = True  # every response has a token
    return logp, old, adv, mask


def _value_and_grad(loss, logp):
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


# ----------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("penalty_on_masked", [False, True])
def test_k25_loss_by_hand_matches_the_package(nb, seed, penalty_on_masked):
    logp, old, adv, mask = _batch(seed)
    kw = dict(alpha=0.6 + 0.05 * seed, beta=1.5 + 0.1 * seed, tau=0.05 * (seed % 3),
              penalty_on_masked=penalty_on_masked)
    ref, stats = get_loss("kimi_k25")(logp, old, adv, mask, **kw)
    assert 0 < stats["masked_frac"] < 1  # the check covers masked and kept tokens
    torch.testing.assert_close(_value_and_grad(nb.k25_loss_by_hand(logp, old, adv, mask, **kw), logp),
                               _value_and_grad(ref, logp))


@pytest.mark.parametrize("seed", range(6))
def test_ppo_by_hand_matches_the_package(nb, seed):
    logp, old, adv, mask = _batch(seed, drift=0.3)
    eps = 0.1 + 0.05 * seed
    torch.testing.assert_close(_value_and_grad(nb.ppo_clip_by_hand(logp, old, adv, mask, eps=eps), logp),
                               _value_and_grad(get_loss("ppo_clip")(logp, old, adv, mask, eps=eps)[0], logp))


def test_an_all_masked_batch_has_a_zero_gradient(nb):
    logp, old, adv, mask = _batch(0)
    far = (old + 5.0).requires_grad_()  # ρ = e^5: every token outside [α, β]
    value, grad = _value_and_grad(nb.k25_loss_by_hand(far, old, adv, mask), far)
    assert float(value) == 0.0 and bool((grad == 0).all())
    assert nb.token_grad(nb.k25_loss_by_hand, 5.0, 1.0) == 0.0
    assert nb.token_grad(nb.k25_loss_by_hand, 0.0, 1.0) == pytest.approx(-1.0)  # −A at ρ = 1


# ----------------------------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_group_advantages_by_hand(nb, k):
    rewards = torch.rand(8 * k, generator=torch.Generator().manual_seed(k)).round(decimals=1)
    torch.testing.assert_close(nb.group_advantages_by_hand(rewards, k), group_advantages(rewards, k))


# ----------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("seed", range(8))
def test_top_p_filter_matches_the_sampler(nb, seed):
    g = torch.Generator().manual_seed(seed)
    V = 8 + 8 * seed
    logits = (1 + seed % 3) * torch.randn(V, generator=g)
    for T, p in [(1.0, 0.3), (0.8, 0.9), (1.5, 0.95), (1.0, 1.0)]:
        ours = nb.sampling_probs(logits, T, p)
        nxt, model_lp, sampler_lp = _draw(logits.repeat(500, 1), T, p, torch.Generator().manual_seed(seed))
        assert bool((ours[nxt] > 0).all())
        torch.testing.assert_close(sampler_lp, ours[nxt].log())
        torch.testing.assert_close(model_lp, torch.log_softmax(logits, -1)[nxt])
        probs = torch.softmax(logits / T, -1)
        kept = ours > 0
        assert float(probs[kept].sum()) >= min(p, 1.0) - 1e-6  # the nucleus holds at least p ...
        assert float(probs[kept].sum() - probs[kept].min()) < p or p == 1.0  # ... and is the smallest such set


# ----------------------------------------------------------------------------------------------- rewards
def test_soft_f1_by_hand_matches_grounding_reward(nb):
    rng = np.random.default_rng(7)
    for _ in range(100):
        boxes = [[x, y, x + int(rng.integers(1, 6)), y + int(rng.integers(1, 6))]
                 for x, y in rng.integers(0, 9, size=(int(rng.integers(1, 7)), 2)).tolist()]
        n_pred = int(rng.integers(0, len(boxes) + 1))
        pred, gold = boxes[:n_pred], boxes[n_pred:]
        text = ", ".join(" ".join(map(str, b)) for b in pred)
        assert nb.soft_f1_by_hand(pred, gold) == pytest.approx(grounding_reward(gold, text), abs=1e-9)


# ----------------------------------------------------------------------------------------------- Toggle
def test_toggle_by_hand_matches_the_package(nb):
    rng = np.random.default_rng(3)
    for case in range(300):
        correct = rng.integers(0, 50, size=int(rng.integers(1, 10))).tolist()
        rho = float(rng.uniform(1, 100))
        budget = nb.budget_by_hand(correct, rho)
        assert budget == percentile_budget(correct, rho)
        k, t, m = int(rng.integers(1, 9)), int(rng.integers(0, 50)), int(rng.integers(1, 6))
        lam = float(rng.uniform(0, 1))
        r = (rng.integers(0, 2, size=k) if case % 2 else rng.random(k)).astype(float).tolist()
        n = rng.integers(0, 50, size=k).tolist()
        ref = Toggle({"x": budget}, lam=lam, m=m).shape(t, "x", r, n)
        assert nb.toggle_by_hand(t, r, n, budget, lam=lam, m=m) == ref


# ----------------------------------------------------------------------------------------------- one RL iteration
def test_rl_iteration_by_hand_has_the_package_gradient(nb):
    world = World(0, scale="smoke")
    items = [world.sample(s, "train", rng_for(world.seed, "seam07", s)) for s in ("count", "ocr", "text_knowledge")]
    policy = nb.make_policy(5)
    twin = copy.deepcopy(policy)
    rec_pkg, rec_ours = nb.Recorder(policy.parameters()), nb.Recorder(twin.parameters())
    st = rl_iteration(policy, rec_pkg, items, k=4, reward_fn=nb.first_char_low, grad_clip=None, max_new_tokens=5,
                      generator=torch.Generator().manual_seed(11), loss_kwargs={"tau": 0.02})
    ours = nb.rl_iteration_by_hand(twin, rec_ours, items, nb.first_char_low, k=4, max_new_tokens=5,
                                   generator=torch.Generator().manual_seed(11), tau=0.02)
    assert st["reward"] == ours["reward"] and 0 < ours["reward"] < 1
    assert ours["loss"] == pytest.approx(st["loss"], abs=1e-6)
    n = 0
    for a, b in zip(rec_pkg.grads, rec_ours.grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
            n += 1
    assert n > 10


# ----------------------------------------------------------------------------------------------- results views
def _run(seed, accs, rewards):
    return {"seed": seed, "per": {s: {"acc": a, "tokens": 3.0} for s, a in accs.items()},
            "curve": [{"reward": r} for r in rewards]}


def _summary(text_after):
    """A summary from synthetic runs: ``text_after[s]`` is each seed's accuracy on text suite ``s`` (before: 0.5)."""
    cfg = config_for("smoke", iterations=8, seeds=(0, 1, 2), eval_items=2)
    before = {"per": {s: {"acc": 0.5} for s in SUITES}, "base_checkpoint": "ck"}
    runs = []
    for i in range(3):
        accs = {s: 0.5 + 0.05 * (i + 1) for s in SUITES}  # vision suites all rise
        accs.update({s: v[i] for s, v in text_after.items()})
        runs.append(_run(i, accs, [0.2] * 4 + [0.6] * 4))
    return summarise(cfg, before, runs)


def test_results_views_read_the_summary(nb):
    res = _summary({"TextKnow": [0.6, 0.55, 0.7], "TextReason": [0.4, 0.45, 0.3], "Code": [0.6, 0.5, 0.4]})
    assert res["text_direction"] == {"TextKnow": "up", "TextReason": "down", "Code": "mixed"}
    for fig in (nb.before_after_figure(res), nb.change_figure(res)):
        assert fig.axes
        plt.close(fig)
    table = nb.paper_vs_ours(res)
    assert "§4.4" in table and "| MMLU-Pro | 84.7 → 86.4 (+1.7) | TextKnow | 50.0 → 61.7 |" in table
    assert "LongBench v2" in table and "no long-context suite" in table and "| Code |" in table
    text = nb.discussion(res)
    assert "TextKnow rose on every seed (+10.0, +5.0, +20.0 points)" in text
    assert "TextReason fell on every seed" in text and "Code moved in different directions across seeds" in text
    assert "0.200" in text and "0.600" in text and "raised" in text and "some text suites rose and some fell" in text
    assert "one item is 50.0 points" in text


@pytest.mark.parametrize("after, verdict", [
    ({s: [0.6, 0.6, 0.7] for s in TEXT_SUITES}, "Table 2's direction shows here"),
    ({s: [0.5, 0.5, 0.5] for s in TEXT_SUITES}, "no text suite rose on every seed"),
    ({"TextKnow": [0.6] * 3, "TextReason": [0.5] * 3, "Code": [0.4, 0.6, 0.5]}, "shows on TextKnow only")])
def test_discussion_verdicts(nb, after, verdict):
    assert verdict in nb.discussion(_summary(after))
