"""k25mini.rl.rewards: hand-computed values, an exhaustive reference for the optimal matching, malformed answers."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from k25mini.rl.rewards import (
    count_reward,
    exact_reward,
    format_reward,
    grounding_reward,
    ocr_reward,
    optimal_assignment,
    parse_points,
    points_reward,
    reward,
    soft_f1,
)
from k25mini.world import Item


def _brute(sim):
    """Best summed similarity over every one-to-one matching (rows x columns), by enumeration."""
    n, m = len(sim), len(sim[0]) if sim else 0
    best = 0.0
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            best = max(best, sum(sim[i][c] for i, c in enumerate(cols)))
    else:
        for rows in itertools.permutations(range(n), m):
            best = max(best, sum(sim[r][j] for j, r in enumerate(rows)))
    return best


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 3), (2, 5), (5, 2), (4, 4), (6, 6), (3, 7)])
def test_optimal_assignment_equals_enumeration(shape):
    rng = random.Random(sum(shape))
    for _ in range(30):
        sim = [[rng.choice([0.0, rng.random(), 1.0]) for _ in range(shape[1])] for _ in range(shape[0])]
        pairs, total = optimal_assignment(sim)
        assert abs(total - _brute(sim)) < 1e-12
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs}) == min(shape)
        assert abs(sum(sim[r][c] for r, c in pairs) - total) < 1e-12


def test_optimal_assignment_beats_greedy():
    # greedy takes (0,0)=0.9 first and is left with 0.1; the optimum pairs 0-1 and 1-0 for 0.8 + 0.8
    sim = [[0.9, 0.8], [0.8, 0.1]]
    pairs, total = optimal_assignment(sim)
    assert pairs == [(0, 1), (1, 0)] and total == pytest.approx(1.6)


def test_optimal_assignment_bad_input():
    assert optimal_assignment([]) == ([], 0.0)
    with pytest.raises(ValueError, match="rectangular"):
        optimal_assignment([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="finite"):
        optimal_assignment([[float("nan")]])


def test_soft_f1_edges():
    assert soft_f1([], 0, 0) == 1.0
    assert soft_f1([], 0, 2) == 0.0 and soft_f1([[]], 1, 0) == 0.0
    assert soft_f1([[1.0, 0.0]], 1, 2) == pytest.approx(2 / 3)  # precision 1, recall 1/2


def test_count_reward_is_absolute_difference():
    assert count_reward("4", "4") == 1.0
    assert count_reward("4", "3") == pytest.approx(0.75)
    assert count_reward("4", "9") == 0.0
    assert count_reward("0", "1") == 0.0 and count_reward("0", "0") == 1.0
    assert count_reward("4", "four") == 0.0 and count_reward("4", None) == 0.0


def test_ocr_reward_is_normalised_edit_distance():
    assert ocr_reward("KAB", "KAB") == 1.0
    assert ocr_reward("KAB", "KAX") == pytest.approx(2 / 3)
    assert ocr_reward("KAB", "") == 0.0
    assert ocr_reward("abcd", "abcdef") == pytest.approx(1 - 2 / 6)


def test_exact_reward():
    assert exact_reward("red", " Red. ") == 1.0 and exact_reward("red", "blue") == 0.0
    assert exact_reward("Ab", "ab", case=True) == 0.0


def test_grounding_reward_soft_iou_f1_by_hand():
    gold = [[0, 0, 2, 2], [5, 5, 7, 7]]
    assert grounding_reward(gold, "0 0 2 2; 5 5 7 7") == 1.0
    assert grounding_reward(gold, "5 5 7 7; 0 0 2 2") == 1.0  # order does not matter
    # one box shifted right by 1: IoU = 2/6 = 1/3 -> F1 = 2 * (1 + 1/3) / 4
    assert grounding_reward(gold, "1 0 3 2; 5 5 7 7") == pytest.approx(2 * (1 + 1 / 3) / 4)
    # a single perfect box: precision 1, recall 1/2
    assert grounding_reward(gold, "0 0 2 2") == pytest.approx(2 / 3)
    # an extra spurious box costs precision
    assert grounding_reward(gold, "0 0 2 2; 5 5 7 7; 8 8 9 9") == pytest.approx(2 * 2 / 5)
    # soft: a box below the evaluation's IoU 0.5 threshold still earns credit
    assert 0 < grounding_reward([[0, 0, 2, 2]], "1 0 3 2") < 0.5
    assert grounding_reward([], "none") == 1.0 and grounding_reward([], "0 0 1 1") == 0.0


def test_points_reward_gaussian_by_hand():
    gold = [[1, 1], [5, 5]]
    assert points_reward(gold, "(1, 1), (5, 5)") == 1.0
    d2 = 1.0
    assert points_reward(gold, "1 2; 5 5") == pytest.approx(2 * (1 + math.exp(-d2 / 2)) / 4)
    assert points_reward(gold, "1 2; 5 5", sigma=2.0) == pytest.approx(2 * (1 + math.exp(-d2 / 8)) / 4)
    assert points_reward(gold, "5 5 1 1") == 1.0
    assert parse_points("3 4 5") == [[3.0, 4.0]]
    with pytest.raises(ValueError, match="sigma"):
        points_reward(gold, "1 1", sigma=0)


@pytest.mark.parametrize("garbage", [None, "", "<|eos|>", "nan nan nan nan", "1e400 0 1e401 1", "\x00\xff",
                                     "9" * 5000, 12, ["a"], "-1 -1 -2 -2"])
def test_rewards_of_garbage_are_in_range_and_never_raise(garbage):
    items = [
        Item("VisReason", "Q", [], "3", {"scorer": "count"}),
        Item("OCR", "Q", [], "KAB", {"scorer": "edit"}),
        Item("VisReason", "Q", [], "0 0 2 2", {"scorer": "iou_f1", "boxes": [[0, 0, 2, 2]]}),
        Item("VisReason", "Q", [], "1 1", {"scorer": "points", "points": [[1, 1]]}),
        Item("VisKnow", "Q", [], "red", {"scorer": "exact", "choices": ["red", "blue"]}),
    ]
    for it in items:
        r = reward(it, garbage, format_weight=0.3)
        assert 0.0 <= r <= 1.0 and math.isfinite(r)


def test_format_reward_and_mix():
    count = Item("VisReason", "Q", [], "3", {"scorer": "count"})
    choice = Item("VisKnow", "Q", [], "red", {"scorer": "exact", "choices": ["red", "blue"]})
    box = Item("VisReason", "Q", [], "0 0 2 2", {"scorer": "iou_f1", "boxes": [[0, 0, 2, 2]]})
    assert format_reward(count, "5") == 1.0 and format_reward(count, "five") == 0.0
    assert format_reward(choice, "Blue") == 1.0 and format_reward(choice, "green") == 0.0
    assert format_reward(box, "1 1 3 3") == 1.0 and format_reward(box, "1 1 3") == 0.0
    assert format_reward(box, "none") == 1.0
    assert reward(count, "5", format_weight=0.2) == pytest.approx(0.8 * count_reward("3", "5") + 0.2)
    assert reward(choice, "green", format_weight=0.2) == 0.0
    assert reward(choice, "red", format_weight=0.2) == 1.0


def test_reward_bad_arguments_name_themselves():
    it = Item("VisReason", "Q", [], "3", {"scorer": "count"})
    with pytest.raises(ValueError, match="format_weight"):
        reward(it, "3", format_weight=1.5)
    with pytest.raises(ValueError, match="sigma"):
        reward(it, "3", sigma=float("nan"))
    with pytest.raises(ValueError, match="scorer"):
        reward(Item("X", "Q", [], "3", {"scorer": "bleu"}), "3")
    with pytest.raises(ValueError, match="meta"):
        reward("not an item", "3")


def test_reward_matches_the_world_scorer_where_the_rules_agree():
    from k25mini.world import score

    for it, pred in [(Item("V", "Q", [], "3", {"scorer": "count"}), "2"),
                     (Item("O", "Q", [], "KAB", {"scorer": "edit"}), "KB"),
                     (Item("V", "Q", [], "red", {"scorer": "exact"}), "red")]:
        assert reward(it, pred) == score(it, pred)
