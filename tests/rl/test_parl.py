"""PARL reward and its annealing: λ must reach exactly 0 and stay there (a public reproduction's didn't)."""

from __future__ import annotations

import pytest

from k25mini.rl import PARLConfig, PARLReward, anneal_weight, parl_reward, r_finish, r_parallel


def test_r_parallel_caps_and_r_finish_rate():
    assert [r_parallel(n, 4) for n in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0]
    assert r_finish(3, 4) == 0.75
    assert r_finish(0, 0) == 1.0 and r_finish(0, 0, finish_if_none=0.0) == 0.0
    with pytest.raises(ValueError, match="n_finished"):
        r_finish(5, 4)
    with pytest.raises(ValueError, match="cap"):
        r_parallel(1, 0)


def test_reward_formula_by_hand():
    r, parts = parl_reward(0.6, n_subagents=3, n_finished=2, lambda1=0.2, lambda2=0.1, cap=4)
    assert r == pytest.approx(0.2 * 0.75 + 0.1 * (2 / 3) + 0.6)
    assert parts["r_parallel"] == 0.75 and parts["r_finish"] == pytest.approx(2 / 3)


def test_anneal_is_linear_then_exactly_zero_forever():
    total, end = 1000, 0.3
    assert anneal_weight(0.5, 0, total, end) == 0.5
    assert anneal_weight(0.5, 150, total, end) == pytest.approx(0.25)
    ws = [anneal_weight(0.5, s, total, end) for s in range(total + 50)]
    assert all(w > 0 for w in ws[:300])
    assert all(w == 0.0 for w in ws[300:])  # exactly 0.0 from step 300 on, including past the end
    assert all(a >= b for a, b in zip(ws, ws[1:]))  # monotone


@pytest.mark.parametrize("total,end", [(7, 0.33), (10, 1.0), (1, 0.5), (999, 0.123)])
def test_config_lambdas_reach_zero_and_reward_equals_r_perf_exactly(total, end):
    cfg = PARLConfig(lambda1=0.3, lambda2=0.7, parallel_cap=5, anneal_end=end)
    fn = PARLReward(cfg, total_steps=total)
    episode = {"n_assigned": 4, "n_finished": 1}
    seen_zero = False
    for step in range(total + 3):
        l1, l2 = cfg.lambdas(step, total)
        r_perf = 0.1234567 + step * 1e-3
        r, parts = fn(r_perf, episode, step)
        if step >= end * total:
            seen_zero = True
            assert (l1, l2) == (0.0, 0.0)
            assert r == r_perf  # bit-for-bit
        else:
            assert l1 > 0 and l2 > 0 and r > r_perf
    assert seen_zero


def test_ablations():
    ep = {"n_assigned": 2, "n_finished": 0}
    no_anneal = PARLConfig(lambda1=0.3, lambda2=0.2, anneal=False)
    assert no_anneal.lambdas(10**6, 10) == (0.3, 0.2)
    no_par = PARLConfig(lambda1=0.3, lambda2=0.2, use_parallel=False)
    r, parts = PARLReward(no_par, 100)(0.5, ep, 0)
    assert parts["lambda1"] == 0.0 and r == 0.5 + 0.2 * 0.0
    no_fin = PARLConfig(lambda1=0.3, lambda2=0.2, use_finish=False, parallel_cap=2)
    r, parts = PARLReward(no_fin, 100)(0.5, ep, 0)
    assert parts["lambda2"] == 0.0 and r == pytest.approx(0.5 + 0.3)


def test_reward_reads_episode_attributes():
    class Ep:
        n_assigned, n_finished = 2, 2

    r, _ = PARLReward(PARLConfig(lambda1=0.0, lambda2=0.5), 10)(0.0, Ep(), 0)
    assert r == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lambda1": -1}, "lambda1"), ({"parallel_cap": 0}, "parallel_cap"), ({"anneal_end": 0}, "anneal_end"),
     ({"anneal_end": 1.5}, "anneal_end"), ({"finish_if_none": 2}, "finish_if_none")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PARLConfig(**kwargs)


def test_bad_schedule_args_and_nonfinite_r_perf():
    with pytest.raises(ValueError, match="total_steps"):
        anneal_weight(1.0, 0, 0, 0.5)
    with pytest.raises(ValueError, match="step"):
        anneal_weight(1.0, -1, 10, 0.5)
    with pytest.raises(ValueError, match="r_perf"):
        parl_reward(float("nan"), 1, 1, lambda1=0.1, lambda2=0.1)
