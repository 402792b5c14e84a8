"""Notebook 00b's helpers agree with the package: page reader, markdown writer, budgeted agent."""

import pytest

from k25mini.world import ATTRIBUTES, Web, World, make_wide_tasks, parse_markdown_table, score_table, table_to_markdown
from seam import load_notebook_defs

NB = "notebooks/00b_toy_world.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.fixture(scope="module")
def world():
    return World(seed=3, scale="smoke")


def test_read_page_recovers_entity_facts(nb, world):
    assert set(nb.PAGE_FACTS) == set(ATTRIBUTES) and len(world.entities) > 0
    for e in world.entities:
        facts = nb.read_page(world.pages[f"entity/{e.name.lower()}"])
        assert facts == {"name": e.name, **{a: e.value(a) for a in ATTRIBUTES}}


def test_rows_to_markdown_matches_package(nb, world):
    tasks = make_wide_tasks(world, n=4, min_rows=1)
    assert len(tasks) == 4
    for task in tasks:
        md = nb.rows_to_markdown(task.rows, task.columns)
        assert md == table_to_markdown(task.rows, task.columns)
        assert parse_markdown_table(md) == task.rows


def test_budgeted_agent_recall_grows_with_budget(nb, world):
    task = max(make_wide_tasks(world, n=4, min_rows=2), key=lambda t: len(t.rows))
    web = Web(world)
    names = [r["name"] for r in task.rows]
    scores = [score_table(nb.budgeted_agent(web, names, task.columns, b), task) for b in range(len(names) + 1)]
    assert scores[-1]["success"] == 1.0 and scores[0]["item_f1"] == 0.0
    recalls = [s["recall"] for s in scores]
    assert recalls == sorted(recalls) and all(s["precision"] == 1.0 for s in scores[1:])
    assert web.steps == sum(range(len(names) + 1))  # one browse per row filled
