"""Eval suites and scorers: hand-made cases, malformed answers, chance baselines."""

import math

import numpy as np
import pytest

from k25mini.world import (
    SUITE_SKILLS,
    SUITES,
    Item,
    World,
    chance_baseline,
    chance_by_skill,
    make_eval_suite,
    random_guess,
    score,
)
from k25mini.world.scoring import levenshtein, parse_boxes, score_count, score_edit, score_exact, score_iou_f1

MALFORMED = [
    None,
    "",
    "   ",
    "\n\n",
    "<|eos|>",
    123,
    4.5,
    ["a"],
    {"x": 1},
    "¯\\_(ツ)_/¯",
    "A:",
    "| a | b |",
    "1e999",
    "nan",
    "-",
    "0 0 0 0",
    "9 9 1 1",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def world():
    return World(seed=0, scale="smoke")


@pytest.fixture(scope="module")
def suites(world):
    out = {s: make_eval_suite(world, s) for s in SUITES}
    assert len(out) == len(SUITES) > 0 and all(len(v) > 0 for v in out.values())  # tests loop over these
    return out


def _item(answer, **meta):
    return Item("X", "Q: ? A:", [], answer, {"scorer": "exact", **meta})


def test_exact_match_normalisation():
    it = _item("north")
    for good in ["north", " North ", "north.", "NORTH\nmore text", "north<|im_end|>", "A: north", "'north'"]:
        assert score(it, good) == 1.0, good
    for bad in ["south", "north east", "nort", "", "n o r t h"]:
        assert score(it, bad) == 0.0, bad
    code = _item("PUDO", case=True)
    assert score(code, "PUDO") == 1.0 and score(code, "pudo") == 0.0
    assert score_exact("", "") == 0.0  # an empty gold never matches


def test_count_abs_difference():
    it = _item("4", scorer="count")
    assert score(it, "4") == 1.0 and score(it, "5") == 0.75 and score(it, "2") == 0.5 and score(it, "9") == 0.0
    assert score(it, "there are 4 of them") == 1.0
    assert score(_item("0", scorer="count"), "1") == 0.0 and score(_item("0", scorer="count"), "0") == 1.0
    assert score_count("3", "three") == 0.0


def test_edit_distance_scorer():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("ab", "ab") == 0
    assert score_edit("kirapo", "kirapo") == 1.0
    assert score_edit("kirapo", "kiropo") == pytest.approx(1 - 1 / 6)
    assert score_edit("1234", "") == 0.0 and score_edit("ab", "abcd") == pytest.approx(0.5)


def test_levenshtein_matches_brute_force():
    def ref(a, b):  # plain recursion, memoised
        from functools import lru_cache

        @lru_cache(None)
        def d(i, j):
            if i == 0 or j == 0:
                return i + j
            return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

        return d(len(a), len(b))

    rng = np.random.default_rng(0)
    for _ in range(100):
        a = "".join(rng.choice(list("abc"), size=rng.integers(0, 7)))
        b = "".join(rng.choice(list("abc"), size=rng.integers(0, 7)))
        assert levenshtein(a, b) == ref(a, b)


def test_iou_f1_boxes():
    gold = [[1, 1, 3, 3], [6, 2, 8, 4]]
    assert score_iou_f1(gold, "1 1 3 3; 6 2 8 4") == 1.0
    assert score_iou_f1(gold, "6 2 8 4; 1 1 3 3") == 1.0  # order does not matter
    assert score_iou_f1(gold, "1 1 3 3") == pytest.approx(2 / 3)  # P=1, R=1/2
    assert score_iou_f1(gold, "1 1 3 3; 6 2 8 4; 0 0 9 9") == pytest.approx(0.8)  # P=2/3, R=1
    assert score_iou_f1(gold, "1 1 3 3; 1 1 3 3") == pytest.approx(0.5)  # a duplicate matches once
    assert score_iou_f1(gold, "1 1 4 4; 6 2 8 4") == pytest.approx(0.5)  # IoU 4/9 < 0.5 for the first
    assert score_iou_f1([[0, 0, 4, 4]], "0 0 4 3") == 1.0  # IoU 0.75
    assert parse_boxes("3 3 1 1, 0 0 2 2") == [[0, 0, 2, 2]]  # inverted box dropped


@pytest.mark.parametrize("scorer", ["exact", "count", "edit", "iou_f1"])
def test_malformed_predictions_never_raise(scorer):
    it = _item("3 4 5 6" if scorer == "iou_f1" else "7", scorer=scorer, boxes=[[3, 4, 5, 6]])
    for bad in MALFORMED:
        s = score(it, bad)
        assert isinstance(s, float) and 0.0 <= s <= 1.0 and not math.isnan(s)


def test_unknown_scorer_is_a_bug_not_a_zero():
    with pytest.raises(ValueError, match="scorer"):
        score(_item("a", scorer="vibes"), "a")


# ------------------------------------------------------------------------------------------ suites
def test_suites_fixed_count_unique_and_deterministic(world, suites):
    for s, items in suites.items():
        assert len(items) == world.sizes.eval_items == 16
        assert len({(it.meta["key"], it.prompt) for it in items}) == len(items)
        skills = SUITE_SKILLS[s]
        assert [it.meta["skill"] for it in items] == [skills[i % len(skills)] for i in range(16)]
        assert all(it.suite == s and it.meta["split"] == "eval" for it in items)
    again = make_eval_suite(World(seed=0, scale="smoke"), "OCR")
    assert [it.answer for it in again] == [it.answer for it in suites["OCR"]]
    assert all(np.array_equal(a.images[0], b.images[0]) for a, b in zip(again, suites["OCR"]))
    other = make_eval_suite(World(seed=1, scale="smoke"), "OCR")
    assert [it.answer for it in other] != [it.answer for it in suites["OCR"]]


def test_eval_item_interface(suites):
    for items in suites.values():
        for it in items:
            assert isinstance(it.suite, str) and isinstance(it.prompt, str) and isinstance(it.answer, str)
            assert isinstance(it.images, list) and isinstance(it.meta, dict)
            assert score(it, it.answer) == 1.0
            assert score(it, "") == 0.0
    assert all(it.images for s in ("VisKnow", "VisReason", "OCR") for it in suites[s])
    assert not any(it.images for s in ("TextKnow", "TextReason", "Code") for it in suites[s])


def test_bad_suite_and_n(world):
    with pytest.raises(ValueError, match="suite"):
        make_eval_suite(world, "Vibes")
    with pytest.raises(ValueError, match="n"):
        make_eval_suite(world, "OCR", n=-1)
    with pytest.raises(ValueError, match="suite"):
        chance_baseline("Vibes")


def _analytic_chance(item) -> float | None:
    """Exact expected score of a uniform guess, for exact-match items with a finite domain."""
    m = item.meta
    if m["scorer"] != "exact":
        return None
    if "choices" in m:
        return m["choices"].count(item.answer) / len(m["choices"])
    if "alphabet" in m:
        return (1.0 / len(m["alphabet"])) ** len(item.answer)
    lo, hi = m["range"]
    ok = item.answer.lstrip("-").isdigit() and lo <= int(item.answer) <= hi
    return 1.0 / (hi - lo + 1) if ok else 0.0  # e.g. a printed list is never guessed by a number


@pytest.mark.parametrize("suite", ["VisKnow", "TextKnow", "Code"])
def test_chance_matches_analytic_value(suite, suites):
    items = suites[suite]
    vals = [_analytic_chance(it) for it in items]
    c = chance_baseline(suite, scale="smoke")
    assert abs(c - float(np.mean(vals))) < 0.06, (c, np.mean(vals))


def test_chance_is_low_and_deterministic():
    for s in SUITES:
        c = chance_baseline(s, scale="smoke")
        assert 0.0 <= c < 0.4, (s, c)
        assert chance_baseline(s, scale="smoke") == c


def test_random_guess_is_well_formed(suites):
    rng = np.random.default_rng(0)
    for items in suites.values():
        for it in items:
            g = random_guess(it, rng)
            assert isinstance(g, str) and g


def test_chance_by_skill_and_suite_size():
    world = World(seed=0, scale="smoke")
    for n in (6, 13):
        items = make_eval_suite(world, "VisReason", n)
        per = chance_by_skill("VisReason", scale="smoke", n=n)
        assert set(per) == {it.meta["skill"] for it in items}
        counts = {k: sum(it.meta["skill"] == k for it in items) for k in per}
        # the suite's chance is the item-weighted mean of its skills' chance
        assert chance_baseline("VisReason", scale="smoke", n=n) == pytest.approx(
            sum(per[k] * counts[k] for k in per) / n, abs=1e-12)
        assert all(0.0 <= v <= 1.0 for v in per.values())
    assert chance_by_skill("VisReason", scale="smoke")["compare"] > 0.3  # two choices
    assert chance_baseline("OCR", scale="smoke", n=None) == chance_baseline("OCR", scale="smoke")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            chance_baseline("OCR", scale="smoke", n=bad)
    with pytest.raises(ValueError, match="suite"):
        chance_by_skill("Vibes", scale="smoke")
