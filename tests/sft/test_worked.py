"""Worked arithmetic solutions (chapter 07's Toggle task): hand-computed cases, every precedence pair against
Python's own evaluation, the reward on malformed responses."""

import itertools

import numpy as np
import pytest

from k25mini.sft.worked import (
    WORKED_STYLES,
    arith_expression,
    arith_steps,
    final_answer,
    response_style,
    worked_reward,
    worked_solution,
    worked_trajectory,
)
from k25mini.world import Item, World


def arith(expr: str) -> Item:
    return Item("TextReason", f"Q: {expr} = ? A:", [], str(eval(expr)), {"skill": "arith", "scorer": "exact"})


def test_hand_computed_styles():
    it = arith("4 * 5 + 7")
    assert worked_solution(it, "verbose") == "4 * 5 + 7: first 4 * 5 = 20, then 20 + 7 = 27. answer 27"
    assert worked_solution(it, "concise") == "4 * 5 = 20, 20 + 7 = 27, answer 27"
    assert worked_solution(it, "terse") == "answer 27"
    assert worked_solution(arith("2 - 3 * 4"), "concise") == "3 * 4 = 12, 2 - 12 = -10, answer -10"
    assert worked_solution(arith("9 - 3 - 4"), "concise") == "9 - 3 = 6, 6 - 4 = 2, answer 2"


@pytest.mark.parametrize("o1,o2", list(itertools.product("+-*", repeat=2)))
def test_steps_follow_python_precedence(o1, o2):
    for a, b, c in [(0, 0, 0), (9, 8, 7), (3, 0, 9), (1, 9, 2)]:
        expr = f"{a} {o1} {b} {o2} {c}"
        steps, r = arith_steps(expr)
        assert r == eval(expr)
        assert [v for _, v in steps] == [eval(e) for e, _ in steps]  # each step's value is its sub-expression's


def test_world_items_round_trip_every_style():
    w = World(0, scale="smoke")
    for j in range(60):
        it = w.sample("arith", "train", np.random.default_rng(j))
        assert arith_expression(it) in it.prompt
        for s in WORKED_STYLES:
            text = worked_solution(it, s)
            assert worked_reward(it, text) == 1.0 and response_style(text) == s
        row = worked_trajectory(it, "concise")
        assert row.item.prompt == it.prompt and row.item.answer.endswith(f"answer {it.answer}")
        assert row.meta["style"] == "concise" and not row.uses_tool


def test_reward_on_malformed_and_wrong_answers():
    it = arith("4 * 5 + 7")
    assert worked_reward(it, "answer 27") == 1.0
    assert worked_reward(it, "  answer 27 \n") == 1.0
    for bad in ["27", "answer 26", "answer 27.", "answer 27 answer 26", "answer27", "the answer 2 7", "",
                "answer -27", "xanswer 27", "answer 27x"]:
        assert worked_reward(it, bad) == 0.0, bad
    assert final_answer("3 * 4 = 12, answer -10") == "-10" and final_answer("no answer here") is None
    assert response_style("random text") == "other" and response_style("5 5 answer 3") == "other"


def test_bad_inputs_are_named():
    it = arith("1 + 2 + 3")
    with pytest.raises(ValueError, match="style"):
        worked_solution(it, "short")
    with pytest.raises(ValueError, match="arith"):
        worked_solution(Item("TextReason", "Q: 1 + 2 = ? A:", [], "3", {"skill": "arith"}), "terse")
    with pytest.raises(ValueError, match="arith"):
        arith_expression(Item("TextReason", "Q: 1 + 2 + 3 = ? A:", [], "6", {"skill": "fact_sum"}))
    with pytest.raises(ValueError, match="answer"):
        worked_solution(Item("TextReason", "Q: 1 + 2 + 3 = ? A:", [], "7", {"skill": "arith"}), "terse")
    with pytest.raises(ValueError, match="expr"):
        arith_steps("1 + 2")
    with pytest.raises(ValueError, match="expr"):
        arith_steps("1 / 2 + 3")
    with pytest.raises(ValueError, match="text"):
        final_answer(None)
    with pytest.raises(ValueError, match="item"):
        arith_expression("Q: 1 + 2 + 3 = ? A:")
