"""Seam: notebook 08's from-scratch critical steps and PARL reward agree with k25mini.agents / k25mini.rl."""

from __future__ import annotations

import itertools

import pytest

from k25mini.agents import critical_steps, total_steps
from k25mini.rl import anneal_weight, parl_reward
from seam import load_notebook_defs

NB = "notebooks/08_agent_swarm_parl.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.mark.parametrize("stages", [[(1, [5, 5, 5, 5])], [(1, [20, 1, 1, 1])], [(1, [])] * 7,
                                    [(1, [3]), (1, []), (2, [0, 4, 1])], []])
def test_critical_and_total_steps(nb, stages):
    assert nb.critical_steps_from_scratch(stages) == critical_steps(stages)
    assert nb.total_steps_from_scratch(stages) == total_steps(stages)


def test_anneal_matches_and_hits_zero(nb):
    for step, total, end in itertools.product(range(12), (5, 10), (0.3, 0.5, 1.0)):
        assert nb.linear_anneal(0.25, step, total, end) == anneal_weight(0.25, step, total, end)
    assert nb.linear_anneal(0.25, 5, 10, 0.5) == 0.0


@pytest.mark.parametrize("n,f,lam", [(0, 0, 0.3), (3, 2, 0.1), (20, 5, 0.3), (8, 8, 0.0)])
def test_parl_reward(nb, n, f, lam):
    ref, _ = parl_reward(0.55, n, f, lambda1=lam, lambda2=lam / 2, cap=8)
    assert nb.parl_reward_from_scratch(0.55, n, f, lam, lam / 2, cap=8) == pytest.approx(ref, abs=1e-12)


# ------------------------------------------------------------------ section 6: one PARL iteration on written episodes


def test_group_advantages_from_scratch(nb):
    import torch

    from k25mini.rl import group_advantages

    rewards = [0.1, 0.4, 0.1, 0.3, 0.3, 0.3, 1.0, 0.0, 0.5]  # the middle group is flat
    mine = nb.group_advantages_from_scratch(rewards, 3)
    ref = group_advantages(torch.tensor(rewards, dtype=torch.float64), 3).tolist()
    assert mine[3:6] == [0.0, 0.0, 0.0]
    assert mine[:3] + mine[6:] == pytest.approx(ref[:3] + ref[6:], abs=1e-12)


def test_k25_loss_from_scratch_matches_the_registry(nb):
    import torch

    from k25mini.rl import get_loss

    g = torch.Generator().manual_seed(0)
    B, S = 4, 9
    old = -torch.rand(B, S, generator=g) * 3
    logp = (old + torch.randn(B, S, generator=g)).requires_grad_()  # ratios inside and outside [0.5, 2]
    mask = torch.rand(B, S, generator=g) > 0.3
    mask[:, 0] = False
    adv = torch.randn(B, generator=g)
    mine = nb.k25_loss_from_scratch(logp, old, adv, mask, 0.5, 2.0, 0.01)
    (g_mine,) = torch.autograd.grad(mine, logp)
    ref, stats = get_loss("kimi_k25")(logp, old, adv, mask, alpha=0.5, beta=2.0, tau=0.01)
    (g_ref,) = torch.autograd.grad(ref, logp)
    assert 0 < stats["masked_frac"] < 1  # the band really cuts some tokens
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-6, atol=1e-8)


def test_orchestrator_rows_and_token_logp_match_the_package(nb):
    """Sampled written episodes (a tiny random model, so malformed calls and broken chains are included)."""
    from dataclasses import replace

    import torch

    from k25mini.model import K2ForCausalLM
    from k25mini.rl.step import completion_logp
    from k25mini.swarm import make_swarm_tasks
    from k25mini.swarm.train import lm_config
    from k25mini.swarm.written import TextOnlyVLM, WrittenEnv, WrittenPolicy, rl_batch, run_written
    from k25mini.world import World

    torch.manual_seed(0)
    lm = K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=400))
    env = WrittenEnv(n_entities=20, min_rows=2, max_rows=5, window=300, max_new_tokens=32, max_positions=400,
                     max_steps_main=5, max_steps_sub=3)
    w = World(seed=101, n_entities=20)
    tasks = make_swarm_tasks(w, 2, 0, min_rows=2, max_rows=5)
    pol = WrittenPolicy(TextOnlyVLM(lm), temperature=1.0, max_new_tokens=32, seed=3)
    eps, _ = run_written(w, tasks * 2, pol, pol, env, swarm=True)
    adv = [0.5, -0.25, 0.0, 1.0]
    ids, mask, old, a = nb.orchestrator_rows(eps, adv, pol.tok.pad_id)
    ref = rl_batch(eps, adv)
    assert mask.sum() > 0 and len(ids) >= len(eps)
    assert torch.equal(ids, ref.ids) and torch.equal(mask, ref.mask)
    assert torch.equal(old, ref.old_logp) and torch.equal(a, ref.advantages)
    with torch.no_grad():
        torch.testing.assert_close(torch.where(mask, nb.token_logp_from_scratch(lm, ids), torch.zeros(())),
                                   completion_logp(lm, ids, mask), rtol=1e-6, atol=1e-6)
