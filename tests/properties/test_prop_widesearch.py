"""Properties of the WideSearch table scorer (k25mini.world.web.score_table, parse_markdown_table).

Invariants checked:

* arbitrary text and random pipe-table markdown never raise, in the parser (which has no catch-all) or the
  scorer, and every score lies in [0, 1];
* on random gold tables and predictions (a subset of gold rows, some cells wrong, some invented rows), the
  scores equal an independent item/row precision-recall-F1 computation;
* scores are invariant to the order of the predicted rows and to duplicated rows, and to the input form
  (markdown string vs list of row dicts); rows that share a key but disagree count as the worst of them, in
  any order;
* the gold table scores 1 everywhere; a prediction missing a required column, or with an extra one, scores 0.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k25mini.world.web import WideSearchTask, parse_markdown_table, score_table, table_to_markdown

COLUMNS = ["name", "colour", "weight"]
KEYS = ("item_f1", "row_f1", "success", "precision", "recall", "row_precision", "row_recall")
# cells that normalisation leaves alone (lower-case words, small ints), so the reference can compare raw text
words = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
weights = st.integers(0, 999).map(str)


@st.composite
def tables(draw):
    """(task, predicted rows with unique keys)."""
    names = draw(st.lists(words, min_size=1, max_size=6, unique=True))
    gold = [{"name": n, "colour": draw(words), "weight": draw(weights)} for n in names]
    pred = []
    for row in gold:
        if draw(st.booleans()):
            r = dict(row)
            if draw(st.booleans()):
                r["colour"] = draw(words)
            if draw(st.booleans()):
                r["weight"] = draw(weights)
            pred.append(r)
    invented = draw(st.lists(words.filter(lambda w: w not in names), max_size=3, unique=True))
    pred += [{"name": n, "colour": draw(words), "weight": draw(weights)} for n in invented]
    task = WideSearchTask("t", "q", COLUMNS, ["name"], gold)
    return task, pred


def _reference(task, pred):
    gold = {r["name"]: r for r in task.rows}
    item_tp = row_tp = 0
    for r in pred:
        g = gold.get(r["name"])
        if g is None:
            continue
        hits = [c == "name" or r[c] == g[c] for c in COLUMNS]
        item_tp += sum(hits)
        row_tp += all(hits)
    if not pred:
        return dict.fromkeys(KEYS, 0.0)
    p, rc = item_tp / (len(pred) * 3), item_tp / (len(gold) * 3)
    rp, rr = row_tp / len(pred), row_tp / len(gold)
    return {
        "item_f1": 2 * p * rc / (p + rc) if p + rc else 0.0,
        "row_f1": 2 * rp * rr / (rp + rr) if rp + rr else 0.0,
        "success": float(len(pred) == len(gold) and row_tp == len(gold)),
        "precision": p, "recall": rc, "row_precision": rp, "row_recall": rr,
    }


def _close(a, b):
    assert set(a) == set(KEYS) == set(b)
    for k in KEYS:
        assert math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-12), (k, a, b)


def _in_unit(s):
    assert set(s) == set(KEYS)
    for k in KEYS:
        assert type(s[k]) is float and 0.0 <= s[k] <= 1.0, (k, s)


pipe_text = st.lists(st.one_of(st.text(max_size=10), st.sampled_from(
    ["|", "| --- |", "|---|---|", "\n", "| name | colour | weight |", ":--:", "*", "`", "<br>", " kg"])),
    max_size=20).map("".join)


@given(st.one_of(st.text(), pipe_text), tables())
def test_arbitrary_markdown_never_raises_and_scores_in_unit_interval(text, tp):
    task, _ = tp
    rows = parse_markdown_table(text)  # no catch-all in the parser: an exception here fails the test
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    _in_unit(score_table(text, task))


@given(tables())
def test_scores_match_an_independent_reference(tp):
    task, pred = tp
    want = _reference(task, pred)
    _close(score_table(pred, task), want)
    _close(score_table(table_to_markdown(pred, COLUMNS), task), want)


@given(tables(), st.randoms(use_true_random=False), st.data())
def test_scores_invariant_to_row_order_and_duplicates(tp, rnd, data):
    task, pred = tp
    base = score_table(pred, task)
    shuffled = list(pred)
    rnd.shuffle(shuffled)
    dup = list(pred)
    if pred:
        extra = data.draw(st.lists(st.sampled_from(pred), min_size=1, max_size=4))
        dup += [dict(r) for r in extra]
        rnd.shuffle(dup)
    _close(score_table(shuffled, task), base)
    _close(score_table(dup, task), base)
    _close(score_table(table_to_markdown(dup, COLUMNS), task), base)


@given(tables(), st.randoms(use_true_random=False), st.data())
def test_conflicting_rows_for_one_key_score_the_same_in_any_order(tp, rnd, data):
    """Rows that share a key but disagree: the worst one counts, whatever the order (reference: per key, the row
    with the fewest correct cells)."""
    task, pred = tp
    conflicts = [{**r, "colour": data.draw(words), "weight": data.draw(weights)}
                 for r in data.draw(st.lists(st.sampled_from(task.rows), max_size=4))]
    rows = pred + conflicts
    gold = {r["name"]: r for r in task.rows}

    def n_right(r):
        g = gold.get(r["name"])
        return -1 if g is None else sum(r[c] == g[c] for c in COLUMNS)

    worst = {}
    for r in rows:
        if r["name"] not in worst or n_right(r) < n_right(worst[r["name"]]):
            worst[r["name"]] = r
    want = _reference(task, list(worst.values()))
    for _ in range(3):
        rnd.shuffle(rows)
        _close(score_table(rows, task), want)


def test_regression_duplicate_key_order():
    """Found in review: the first of two rows sharing a key used to count, so reversing them changed the score."""
    task = WideSearchTask("t", "q", ["name", "w"], ["name"], [{"name": "a", "w": "1"}])
    rows = [{"name": "a", "w": "1"}, {"name": "a", "w": "2"}]
    assert score_table(rows, task) == score_table(rows[::-1], task)
    assert score_table(rows, task)["item_f1"] == 0.5


@given(tables(), st.lists(st.sampled_from(["notes", "source", "Colour "]), max_size=2, unique=True))
def test_gold_scores_one_extra_or_missing_column_zero(tp, extra_cols):
    task, _ = tp
    gold_plus = [{**r, **{c: "x" for c in extra_cols}} for r in task.rows]
    _close(score_table(task.gold_markdown, task), dict.fromkeys(KEYS, 1.0))
    s = score_table(table_to_markdown(gold_plus, ["weight", *extra_cols, "name", "colour"]), task)
    # "Colour " normalises to a required column (a repeated header, the last cell wins), the others are extra
    really_extra = [c for c in extra_cols if c.strip().lower() not in task.columns]
    assert s["success"] == float(not really_extra) and s["item_f1"] == float(not really_extra)
    missing = table_to_markdown(task.rows, ["name", "weight"])
    _close(score_table(missing, task), dict.fromkeys(KEYS, 0.0))


@pytest.mark.parametrize(
    "pred",
    [None, 7, 3.5, [], {}, [1, "a", None], {"name": "x"}, [{"name": "x"}], "", "| name |\n| --- |",
     "| name | colour | weight |", "no table here", "| a | b |\n|---|---|\n| 1 |", b"| name |"],
    ids=lambda v: repr(v)[:24],
)
def test_malformed_predictions_score_zero(pred):
    task = WideSearchTask("t", "q", COLUMNS, ["name"], [{"name": "a", "colour": "red", "weight": "3"}])
    s = score_table(pred, task)
    _close(s, dict.fromkeys(KEYS, 0.0))
