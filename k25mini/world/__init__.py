"""The toy world: one seeded generator for every chapter's data (DESIGN §4).

from k25mini.world import World, make_eval_suite, score, chance_baseline, Web
world = World(seed=0)                      # sizes from K25_SCALE
item = world.sample("count", "train")      # Item(suite, prompt, images, answer, meta)
suite = make_eval_suite(world, "VisKnow")  # held-out eval items
score(suite[0], "north")                   # float in [0, 1]
"""

from k25mini.world.corpora import CORPORA, TEXT_CORPORA, VISION_CORPORA, corpus_item, iter_corpus
from k25mini.world.entities import ATTRIBUTES, REGIONS, Entity
from k25mini.world.evals import chance_baseline, chance_by_skill, make_all_evals, make_eval_suite, random_guess
from k25mini.world.items import IMAGE, SUITES, EvalItem, Item, video_tag
from k25mini.world.render import (
    COLOURS,
    DIRECTIONS,
    MIN_SIDE,
    SHAPES,
    render_chart,
    render_icon,
    render_scene,
    render_text,
    render_video,
)
from k25mini.world.scoring import score
from k25mini.world.sizes import WorldSizes, sizes
from k25mini.world.skills import SKILLS, SUITE_SKILLS, TWINS
from k25mini.world.web import (
    DeepSearchTask,
    Web,
    WideSearchTask,
    make_deep_tasks,
    make_wide_tasks,
    parse_markdown_table,
    score_deep,
    score_table,
    table_to_markdown,
)
from k25mini.world.world import HELDOUT_FRAC, World

__all__ = [
    "World",
    "Entity",
    "Item",
    "EvalItem",
    "SUITES",
    "SKILLS",
    "SUITE_SKILLS",
    "TWINS",
    "ATTRIBUTES",
    "REGIONS",
    "COLOURS",
    "SHAPES",
    "DIRECTIONS",
    "MIN_SIDE",
    "IMAGE",
    "video_tag",
    "HELDOUT_FRAC",
    "WorldSizes",
    "sizes",
    "render_icon",
    "render_scene",
    "render_text",
    "render_chart",
    "render_video",
    "CORPORA",
    "TEXT_CORPORA",
    "VISION_CORPORA",
    "corpus_item",
    "iter_corpus",
    "make_eval_suite",
    "make_all_evals",
    "random_guess",
    "chance_baseline",
    "chance_by_skill",
    "score",
    "Web",
    "WideSearchTask",
    "DeepSearchTask",
    "make_wide_tasks",
    "make_deep_tasks",
    "score_table",
    "score_deep",
    "parse_markdown_table",
    "table_to_markdown",
]
