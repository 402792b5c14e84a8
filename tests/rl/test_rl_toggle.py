"""Toggle (k25mini.rl.toggle): budgets, phases and shaping against the paper's formula written out by hand."""

from __future__ import annotations

import math
import random

import pytest

from k25mini.rl.toggle import Toggle, budgets_from_lengths, percentile_budget


def _nearest_rank(xs, rho):
    """Reference: scan the sorted lengths for the first with at least rho % at or below it."""
    xs = sorted(xs)
    for L in xs:
        if sum(x <= L for x in xs) * 100 >= rho * len(xs):
            return L
    raise AssertionError


def test_percentile_budget_by_hand_and_against_a_scan():
    assert percentile_budget([10, 20, 30, 40], 50) == 20
    assert percentile_budget([10, 20, 30, 40], 51) == 30
    assert percentile_budget([10, 20, 30, 40], 100) == 40
    assert percentile_budget([7], 1) == 7
    assert percentile_budget([5, 5, 9], 60) == 5
    rng = random.Random(0)
    for _ in range(300):
        xs = [rng.randrange(0, 60) for _ in range(rng.randrange(1, 12))]
        rho = rng.choice([1, 10, 25, 33.3, 50, 66.7, 75, 90, 99.9, 100])
        assert percentile_budget(xs, rho) == _nearest_rank(xs, rho)


def test_budgets_skip_keys_without_correct_responses():
    assert budgets_from_lengths({"a": [3, 9, 6], "b": []}, 50) == {"a": 6}


def test_phases():
    tg = Toggle({"a": 5}, lam=0.5, m=3)
    assert [tg.phase(t) for t in range(13)] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0]
    assert {Toggle({}, mode="always").phase(t) for t in range(20)} == {0}
    assert {Toggle({}, mode="off").phase(t) for t in range(20)} == {1}


def _paper(t, m, lam, budget, rewards, lengths):
    """r~ = r * 1[mean r < lam or |y| <= budget] in phase 0, r in phase 1."""
    if (t // m) % 2 == 1:
        return list(rewards)
    mean = sum(rewards) / len(rewards)
    return [r * float(mean < lam or n <= budget) for r, n in zip(rewards, lengths)]


def test_shape_equals_the_formula():
    rng = random.Random(1)
    for _ in range(500):
        m, lam, budget = rng.randrange(1, 5), rng.choice([0.0, 0.3, 0.5, 1.0]), rng.randrange(0, 30)
        K = rng.randrange(1, 8)
        rewards = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(K)]
        lengths = [rng.randrange(0, 40) for _ in range(K)]
        t = rng.randrange(0, 20)
        got = Toggle({"x": budget}, lam=lam, m=m).shape(t, "x", rewards, lengths)
        assert got == pytest.approx(_paper(t, m, lam, budget, rewards, lengths))


def test_shape_cases_by_hand():
    tg = Toggle({"x": 10}, lam=0.5, m=2)
    # phase 0, a group the model solves (mean 0.75 >= lam): over-budget correct answers earn nothing
    assert tg.shape(0, "x", [1, 1, 1, 0], [8, 12, 10, 5]) == [1, 0, 1, 0]
    # phase 0, a group it still fails (mean 0.25 < lam): plain reward, long or not
    assert tg.shape(1, "x", [1, 0, 0, 0], [30, 5, 5, 5]) == [1, 0, 0, 0]
    # phase 1: plain reward
    assert tg.shape(2, "x", [1, 1], [99, 1]) == [1, 1]
    # a key without a budget is never shaped; "off" never shapes; "always" shapes at every t
    assert tg.shape(0, "y", [1, 1], [99, 1]) == [1, 1]
    assert Toggle({"x": 10}, mode="off").shape(0, "x", [1, 1], [99, 1]) == [1, 1]
    assert Toggle({"x": 10}, mode="always").shape(3, "x", [1, 1], [99, 1]) == [0, 1]


@pytest.mark.parametrize("call,match", [
    (lambda: percentile_budget([], 50), "lengths"),
    (lambda: percentile_budget([1, 2], 0), "rho"),
    (lambda: percentile_budget([1, 2], 101), "rho"),
    (lambda: percentile_budget([1, 2.5], 50), "lengths"),
    (lambda: percentile_budget([1, 2], float("nan")), "rho"),
    (lambda: budgets_from_lengths([1, 2], 50), "correct_lengths"),
    (lambda: Toggle({"x": 1}, mode="sometimes"), "mode"),
    (lambda: Toggle({"x": -1}), r"budgets\['x'\]"),
    (lambda: Toggle({"x": 1}, m=0), "m must"),
    (lambda: Toggle({"x": 1}, lam=math.inf), "lam"),
    (lambda: Toggle({"x": 1}).phase(-1), "t must"),
    (lambda: Toggle({"x": 1}).shape(0, "x", [1.0], [1, 2]), "equal length"),
    (lambda: Toggle({"x": 1}).shape(0, "x", [float("nan")], [1]), "rewards"),
])
def test_bad_arguments_name_themselves(call, match):
    with pytest.raises(ValueError, match=match):
        call()
