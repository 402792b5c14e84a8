"""The swarm's web: search/browse, wide/deep task generators against brute force, WideSearch scorer."""

import re

import pytest

from k25mini.world import (
    Web,
    World,
    make_deep_tasks,
    make_wide_tasks,
    parse_markdown_table,
    score_deep,
    score_table,
    table_to_markdown,
)
from k25mini.world.web import WideSearchTask


@pytest.fixture(scope="module")
def world():
    return World(seed=0, scale="smoke")


def test_search_finds_entity_page_first(world):
    web = Web(world)
    assert len(world.entities) > 0
    for e in world.entities:
        assert web.search(e.name, 3)[0] == f"entity/{e.name.lower()}"
        assert web.search(f"the {e.colour} {e.shape}", 1) == [f"entity/{e.name.lower()}"]  # looks are unique
    assert web.search("zzzz qqqq", 5) == []
    assert len(web.search("lives in the north", 4)) <= 4
    assert web.search("", 3) == [] and web.search(None, 3) == []


def test_browse_and_costs(world):
    web = Web(world, search_latency=0.25, browse_latency=1.0, search_steps=1, browse_steps=2)
    e = world.entities[0]
    page = web.browse(f"entity/{e.name.lower()}")
    assert page.startswith(e.name) and f"weighs {e.weight} kg" in page
    web.search("north", 2)
    assert web.steps == 3 and web.elapsed == pytest.approx(1.25)
    assert web.calls == [("browse", f"entity/{e.name.lower()}"), ("search", "north")]
    assert web.cost("browse") == (2, 1.0)
    with pytest.raises(KeyError):
        web.browse("entity/nobody")
    assert web.steps == 5  # a failed browse still costs its step
    web.reset_counters()
    assert (web.steps, web.elapsed, web.calls) == (0, 0.0, [])


def test_web_bad_arguments(world):
    web = Web(world)
    for k in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="k"):
            web.search("north", k)
    with pytest.raises(ValueError, match="action"):
        web.cost("fly")
    with pytest.raises(ValueError, match="search_latency"):
        Web(world, search_latency=-1)
    with pytest.raises(ValueError, match="browse_steps"):
        Web(world, browse_steps=-2)


def _brute_force(world, task):
    kind, arg = task.meta["predicate"], task.meta["argument"]
    test = {
        "region": lambda e: e.region in arg,
        "colour": lambda e: e.colour == arg,
        "shape": lambda e: e.shape == arg,
        "weight>": lambda e: e.weight > arg,
        "weight<=": lambda e: e.weight <= arg,
        "speed>": lambda e: e.speed > arg,
    }[kind]
    return sorted(e.name for e in world.entities if test(e))


def test_wide_tasks_match_brute_force(world):
    tasks = make_wide_tasks(world, n=12, min_rows=2, max_rows=8, n_columns=3)
    assert len(tasks) == 12 and len({t.task_id for t in tasks}) == 12
    for t in tasks:
        assert [r["name"] for r in t.rows] == _brute_force(world, t)
        assert 2 <= len(t.rows) <= 8 and t.columns[0] == "name" and len(t.columns) == 3 and t.key_columns == ["name"]
        for r in t.rows:
            e = world.entity(r["name"])
            assert all(r[c] == e.value(c) for c in t.columns)
        assert t.meta["lookups"] == len(t.rows) + 1
        assert t.query.startswith("Make a table of all creatures") and all(c in t.query for c in t.columns)
    again = make_wide_tasks(World(seed=0, scale="smoke"), n=12, min_rows=2, max_rows=8)
    assert [t.rows for t in again] == [t.rows for t in tasks]


def test_wide_task_bad_arguments(world):
    with pytest.raises(ValueError, match="n"):
        make_wide_tasks(world, n=-1)
    with pytest.raises(ValueError, match="max_rows"):
        make_wide_tasks(world, min_rows=5, max_rows=2)
    with pytest.raises(ValueError, match="n_columns"):
        make_wide_tasks(world, n_columns=1)
    with pytest.raises(ValueError, match="min_rows"):
        make_wide_tasks(world, min_rows=len(world.entities) + 1)


def _follow(web, task):
    """An oracle agent: search for the start, then browse friend links; read the final fact."""
    start = task.meta["start"]
    query = start if not task.meta["by_look"] else task.question.split("the friend of ")[-1].split("?")[0]
    pid = web.search(query.replace("the ", ""), 1)[0]
    path = [pid]
    for _ in range(task.meta["hops"] - 1):
        friend = re.search(r"friend is (\w+)\.", web.browse(path[-1])).group(1)
        path.append(f"entity/{friend.lower()}")
    return path, web.browse(path[-1])


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_deep_tasks_are_answerable_by_hopping(world, hops):
    web = Web(world)
    tasks = make_deep_tasks(world, n=6, hops=hops)
    assert len(tasks) == 6
    for t in tasks:
        path, page = _follow(web, t)
        assert path == t.hops and len(t.hops) == hops
        assert t.answer in page
        assert score_deep(t, t.answer) == 1.0 and score_deep(t, None) == 0.0 and score_deep(t, "wrong") == 0.0
    with pytest.raises(ValueError, match="hops"):
        make_deep_tasks(world, n=1, hops=0)


# ------------------------------------------------------------------------------------------ scorer
GOLD = WideSearchTask(
    "t",
    "q",
    ["name", "region", "weight"],
    ["name"],
    [{"name": "Bolo", "region": "north", "weight": "12"}, {"name": "Kira", "region": "east", "weight": "7"}],
)


def test_perfect_table_markdown_and_rows():
    for pred in (GOLD.gold_markdown, GOLD.rows, list(reversed(GOLD.rows))):
        r = score_table(pred, GOLD)
        assert r["item_f1"] == r["row_f1"] == r["success"] == r["precision"] == r["recall"] == 1.0
    assert parse_markdown_table(table_to_markdown(GOLD.rows, GOLD.columns)) == GOLD.rows


def test_hand_computed_partial_tables():
    # one wrong cell, one missing row: Bolo scores key 1 + region 1 + weight 0 = 2 of 3 cells; Kira is missing
    pred = [{"name": "Bolo", "region": "north", "weight": "13"}]
    r = score_table(pred, GOLD)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 6)
    assert r["item_f1"] == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))
    assert r["row_f1"] == 0.0 and r["success"] == 0.0
    # all gold rows right + one invented row: P = 6/9, R = 1
    extra = GOLD.rows + [{"name": "Zuzu", "region": "west", "weight": "1"}]
    r = score_table(extra, GOLD)
    assert r["precision"] == pytest.approx(6 / 9) and r["recall"] == 1.0 and r["success"] == 0.0
    assert r["row_precision"] == pytest.approx(2 / 3) and r["row_f1"] == pytest.approx(0.8)


def test_formatting_noise_is_tolerated():
    md = (
        "Here you go:\n\n| Name | **Region** | Weight |\n|:---|---|---:|\n"
        "| bolo | North | 12 kg |\n| Kira | east | 7.0 |\n\nDone."
    )
    r = score_table(md, GOLD)
    assert r["success"] == 1.0 and r["item_f1"] == 1.0  # case, units, 7.0, bold header, alignment colons


def test_extra_or_missing_column_scores_zero_as_in_widesearch():
    extra = table_to_markdown([{**r, "colour": "red"} for r in GOLD.rows], GOLD.columns + ["colour"])
    assert score_table(extra, GOLD)["item_f1"] == 0.0
    assert score_table([{**r, "colour": "red"} for r in GOLD.rows], GOLD)["item_f1"] == 0.0
    assert score_table(table_to_markdown(GOLD.rows, GOLD.columns[:2]), GOLD)["item_f1"] == 0.0
    # the same columns in another order are the same table
    assert score_table(table_to_markdown(GOLD.rows, GOLD.columns[::-1]), GOLD)["success"] == 1.0


@pytest.mark.parametrize("sep", ["|-|-|-|", "| - | - | - |", "|:-:|:-|-:|", "---|---|---", "| --- | --- | --- |"])
def test_separator_rows_of_single_dashes_and_colons(sep):
    md = "| name | region | weight |\n" + sep + "\n| Bolo | north | 12 |\n| Kira | east | 7 |"
    assert parse_markdown_table(md) == [{"name": "Bolo", "region": "north", "weight": "12"},
                                        {"name": "Kira", "region": "east", "weight": "7"}]
    assert score_table(md, GOLD)["success"] == 1.0


def test_fenced_markdown_block_is_read_first_and_inner_separators_skipped():
    md = ("draft: | name | x |\n|---|---|\n| a | b |\n\n```markdown\n| name | region | weight |\n|-|-|-|\n"
          "| Bolo | north | 12 |\n|---|---|---|\n| Kira | east | 7 |\n```")
    assert [r["name"] for r in parse_markdown_table(md)] == ["Bolo", "Kira"]
    assert score_table(md, GOLD)["success"] == 1.0


def test_duplicates_count_once():
    r = score_table(GOLD.rows + [dict(GOLD.rows[0])], GOLD)
    assert r["success"] == 1.0 and r["item_f1"] == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "no table here",
        "| a | b |\n| c | d |",
        42,
        3.5,
        [1, 2],
        ["x"],
        {"name": "Bolo"},
        [{"name": "Bolo"}],
        "| name |\n|---|\n| Bolo |",
        "|||\n|---|---|\n|||",
        "| name | region | weight |\n|---|---|---|\n| Bolo",
        [{"name": None, "region": object(), "weight": float("nan")}],
        object(),
    ],
)
def test_malformed_predictions_score_zero_without_raising(bad):
    r = score_table(bad, GOLD)
    assert set(r) >= {"item_f1", "row_f1", "success", "precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in r.values())
    assert r["success"] == 0.0


def test_truncated_row_gets_partial_credit():
    md = "| name | region | weight |\n|---|---|---|\n| Bolo | north | 12 |\n| Kira"
    r = score_table(md, GOLD)
    assert r["recall"] == pytest.approx(3 / 6 + 1 / 6)  # Kira joins on its key, its other cells are empty
    assert r["success"] == 0.0
