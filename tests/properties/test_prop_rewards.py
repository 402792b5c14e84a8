"""Properties of the rewards: answer scorers (k25mini.world.scoring) and the PARL reward (k25mini.rl.parl).

Invariants checked:

* ``score`` returns a float in [0, 1] for any prediction (arbitrary text, answers cut at special tokens,
  non-strings) and any scorer kind, and never raises on a prediction;
* each scorer agrees with an independent reference: exact match after normalisation is reflexive,
  ``count`` is ``max(0, 1 - |p - g| / max(|g|, 1))``, ``edit`` is one minus a textbook Levenshtein distance
  over the longer length, ``iou_f1`` of the gold boxes themselves is 1;
* Levenshtein is a metric on random strings (zero iff equal, symmetric, triangle inequality);
* the swarm episode reward (``score_answer``) lies in [0, 1] for any answer, success implies a perfect item
  score, and the swarm task parser never raises on arbitrary text;
* ``parl_reward`` equals ``r_perf + l1 * min(n, cap)/cap + l2 * finished/assigned`` (float reference), its shaping
  parts lie in [0, 1], and malformed arguments (also of ``PARLConfig``) raise ValueError naming the argument.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from k25mini.rl.parl import PARLConfig, parl_reward
from k25mini.swarm.tasks import SwarmTask, parse_task, score_answer
from k25mini.world.scoring import SCORERS, levenshtein, normalize, score, score_count, score_edit, score_iou_f1
from k25mini.world.web import DeepSearchTask, WideSearchTask

SPECIALS = ["<|im_end|>", "<|eos|>", "<|media_pad|>", "<|", "|>", "\n", "A:", "."]
# model-like text: random unicode interleaved with the pieces the scorers look for
answers = st.lists(st.text(max_size=12) | st.sampled_from(SPECIALS) | st.from_regex(r"-?\d{1,4}(\.\d{1,2})?",
                                                                                    fullmatch=True),
                   max_size=6).map("".join)
non_strings = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.binary(max_size=8))
boxes = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 50), st.integers(1, 50))
                 .map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]), min_size=0, max_size=4)


def _item(kind, answer, **meta):
    return SimpleNamespace(answer=answer, meta={"scorer": kind, **meta})


@given(st.sampled_from(SCORERS), answers, answers | non_strings, boxes)
def test_score_is_a_float_in_unit_interval_for_any_prediction(kind, gold, pred, gold_boxes):
    s = score(_item(kind, gold, boxes=gold_boxes), pred)
    assert type(s) is float and 0.0 <= s <= 1.0, s


@given(answers)
def test_exact_match_is_reflexive_on_nonempty_answers(gold):
    assume(normalize(gold) != "")
    assert score(_item("exact", gold), gold) == 1.0


@given(st.floats(-1e4, 1e4, allow_nan=False).map(lambda x: round(x, 2)),
       st.floats(-1e4, 1e4, allow_nan=False).map(lambda x: round(x, 2)))
def test_count_score_matches_its_formula(g, p):
    gs, ps = f"{g:.2f}", f"{p:.2f}"
    want = max(0.0, 1.0 - abs(float(ps) - float(gs)) / max(abs(float(gs)), 1.0))
    assert math.isclose(score_count(gs, ps), want, rel_tol=1e-9, abs_tol=1e-12)


def _lev_reference(a: str, b: str) -> int:
    """Full-table dynamic programme (not the two-row version under test)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]


@given(st.text(max_size=15), st.text(max_size=15), st.text(max_size=15))
def test_levenshtein_is_a_metric_and_matches_the_full_table(a, b, c):
    ab = levenshtein(a, b)
    assert ab == _lev_reference(a, b)
    assert ab == levenshtein(b, a)
    assert (ab == 0) == (a == b)
    assert levenshtein(a, c) <= ab + levenshtein(b, c)


@given(answers, answers)
def test_edit_score_matches_normalised_levenshtein(gold, pred):
    g, p = normalize(gold), normalize(pred)
    want = 1.0 if not g and not p else 1.0 - _lev_reference(g, p) / max(len(g), len(p))
    assert math.isclose(score_edit(gold, pred), want)
    assert 0.0 <= score_edit(gold, pred) <= 1.0


@given(boxes.filter(bool))
def test_iou_f1_of_the_gold_boxes_is_one(gold_boxes):
    text = " ".join(" ".join(str(v) for v in b) for b in gold_boxes)
    # duplicate gold boxes would each need their own prediction: the text holds every one of them
    assert score_iou_f1(gold_boxes, text) == 1.0


@given(st.floats(-1e6, 1e6), st.integers(0, 40), st.data(), st.floats(0, 5), st.floats(0, 5), st.integers(1, 16),
       st.floats(0, 1))
def test_parl_reward_matches_its_formula(r_perf, n_assigned, data, l1, l2, cap, if_none):
    n_finished = data.draw(st.integers(0, n_assigned))
    r, parts = parl_reward(r_perf, n_assigned, n_finished, lambda1=l1, lambda2=l2, cap=cap, finish_if_none=if_none)
    rp = min(n_assigned, cap) / cap
    rf = if_none if n_assigned == 0 else n_finished / n_assigned
    assert 0.0 <= parts["r_parallel"] <= 1.0 and 0.0 <= parts["r_finish"] <= 1.0
    assert math.isclose(r, r_perf + l1 * rp + l2 * rf, rel_tol=1e-12, abs_tol=1e-9)
    assert parts["r"] == r and math.isfinite(r)


@given(st.floats(-1e6, 1e6), st.integers(0, 40))
def test_parl_reward_without_shaping_is_the_performance_reward(r_perf, n):
    r, _ = parl_reward(r_perf, n, 0, lambda1=0.0, lambda2=0.0)
    assert r == r_perf


_WIDE = WideSearchTask("w", "Make a table", ["name", "colour"], ["name"],
                       [{"name": "ash", "colour": "red"}, {"name": "bo", "colour": "blue"}])
_DEEP = DeepSearchTask("d", "What colour is ash?", "red", ["entity/ash"])


@given(st.sampled_from(["wide", "deep"]), st.none() | answers | st.sampled_from([_WIDE.gold_markdown, "red", "Red."]))
def test_swarm_episode_reward_in_unit_interval(kind, answer):
    task = SwarmTask(kind, "t", wide=_WIDE) if kind == "wide" else SwarmTask(kind, "t", deep=_DEEP)
    s = score_answer(task, answer)
    assert set(s) == {"item_f1", "success"}
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in s.values()), s
    assert s["success"] <= s["item_f1"]  # an exact table / answer is a perfect item score
    if (kind, answer) in (("wide", _WIDE.gold_markdown), ("deep", "red"), ("deep", "Red.")):
        assert s["success"] == 1.0


@given(answers)
def test_swarm_task_parser_never_raises(text):
    out = parse_task(text)
    assert out["kind"] in ("wide", "sub", "deep") and out["hops"] >= 0 and isinstance(out["items"], list)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"r_perf": float("nan")}, "r_perf"),
        ({"r_perf": float("inf")}, "r_perf"),
        ({"r_perf": "high"}, "r_perf"),
        ({"r_perf": None}, "r_perf"),
        ({"n_subagents": -1}, "n_subagents"),
        ({"n_finished": 5}, "n_finished"),
        ({"n_finished": -1}, "n_finished"),
        ({"cap": 0}, "cap"),
        ({"lambda1": float("nan")}, "lambda1"),
        ({"lambda2": -float("inf")}, "lambda2"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_parl_reward_bad_arguments_name_the_argument(kw, field):
    args = {"r_perf": 0.5, "n_subagents": 3, "n_finished": 2, "lambda1": 0.1, "lambda2": 0.1, **kw}
    with pytest.raises(ValueError, match=field):
        parl_reward(args.pop("r_perf"), args.pop("n_subagents"), args.pop("n_finished"), **args)


@pytest.mark.parametrize(
    "kw, field",
    [({"lambda1": math.nan}, "lambda1"), ({"lambda2": math.inf}, "lambda2"), ({"lambda1": -0.1}, "lambda1"),
     ({"parallel_cap": True}, "parallel_cap"), ({"parallel_cap": 0}, "parallel_cap"),
     ({"anneal_end": math.nan}, "anneal_end"), ({"finish_if_none": 1.5}, "finish_if_none")],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_parl_config_bad_fields_name_the_field(kw, field):
    """NaN / inf lambdas used to pass the `< 0` check and make every shaped reward NaN."""
    with pytest.raises(ValueError, match=field):
        PARLConfig(**kw)


@pytest.mark.parametrize(
    "pred",
    [None, "", "   \n  ", "<|im_end|>", "A:", 42, 3.5, float("nan"), [], {"answer": 1}, b"\xff\xfe", "x" * 5000],
    ids=lambda v: repr(v)[:20],
)
def test_malformed_answers_score_in_unit_interval(pred):
    got = {kind: score(_item(kind, "3", boxes=[[0, 0, 10, 10]]), pred) for kind in SCORERS}
    assert len(got) == len(SCORERS) == 4
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in got.values()), got
