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
