"""Training corpora: which documents and questions each corpus mixes, row by row.

Row ``i`` of corpus ``c`` is drawn from its own stream ``rng_for(seed, "corpus", c, i)``, so rows do
not depend on each other and every corpus is reproducible byte for byte. Everything here is on the
``train`` side of every split; eval suites live in :mod:`k25mini.world.evals`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from k25mini.world.entities import article, fact_sentences
from k25mini.world.items import IMAGE, Item, video_tag
from k25mini.world.render import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    boxes_to_units,
    render_chart,
    render_icon,
    render_scene,
    render_video,
    sample_chart_spec,
    sample_icon_spec,
    sample_scene_spec,
    sample_video_spec,
)
from k25mini.world.rng import rng_for
from k25mini.world.skills import SUITE_SKILLS, chart_values, pick_one, plural, scene_looks
from k25mini.world.world import World

__all__ = ["CORPORA", "TEXT_CORPORA", "VISION_CORPORA", "corpus_item", "iter_corpus", "check_corpus"]

Doc = Callable[[World, np.random.Generator], Item]


def _train_spec(world: World, rng, draw: Callable[[], dict], prefix: str) -> dict:
    """Draw specs until one lands on the train side of the split (eval renders never leak)."""
    while True:
        spec = draw()
        if world.accepts(f"{prefix}:{spec}", "train"):
            return spec


def _icon(world: World, rng, e) -> np.ndarray:
    spec = _train_spec(
        world, rng, lambda: sample_icon_spec(rng, e.colour, e.shape, world.sizes.icon_side, world.sizes.side_step),
        f"icon:{e.name}",
    )
    return render_icon(spec)[0]


def _scene_draw(world: World, rng, looks):
    return lambda: sample_scene_spec(rng, looks, world.sizes.scene_side, world.sizes.side_step, world.sizes.scene_grid)


def _page_doc(world: World, rng) -> Item:
    """An encyclopedia page with its sentences in a random order (facts, not their position, matter)."""
    e = pick_one(rng, world.entities)
    s = fact_sentences(e)
    text = f"{e.name}\n" + " ".join(s[int(i)] for i in rng.permutation(len(s)))
    return Item("TextKnow", text, [], "", {"skill": "page", "entity": e.name})


def _caption_entity(world: World, rng) -> Item:
    """Icon -> name and look only (never a page fact: that is what VisKnow must compose)."""
    e = pick_one(rng, world.entities)
    return Item(
        "VisKnow",
        f"{IMAGE}This is {e.name}, {article(e.colour)} {e.colour} {e.shape}.",
        [_icon(world, rng, e)],
        "",
        {"skill": "caption_entity", "entity": e.name},
    )


def _caption_scene(world: World, rng) -> Item:
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    spec = _train_spec(world, rng, _scene_draw(world, rng, looks), "scene")
    img, truth = render_scene(spec)
    counts: dict[tuple[str, str], int] = {}
    for lk in looks:
        counts[lk] = counts.get(lk, 0) + 1
    parts = [f"{k} {c} {plural(s) if k > 1 else s}" for (c, s), k in sorted(counts.items())]
    return Item("VisReason", f"{IMAGE}{', '.join(parts)}.", [img], "", {"skill": "caption_scene", "truth": truth})


def _caption_ground(world: World, rng) -> Item:
    """Grounding caption: every object with its 3x3 cell and its box (in tenths; thirds in the cpu world), in
    reading order. The only caption that states *where* things are, so the ViT stage learns to carry position (the
    paper's vision data includes grounding); never phrased as a question."""
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    spec = _train_spec(world, rng, _scene_draw(world, rng, looks), "scene")
    img, truth = render_scene(spec)
    objs = sorted(truth["objects"], key=lambda o: (o["cell"], o["box"]))
    boxes = boxes_to_units([o["box"] for o in objs], spec["h"], spec["w"], world.sizes.box_unit)
    parts = [
        f"{o['colour']} {o['shape']} at {o['cell'][0]} {o['cell'][1]}: {' '.join(str(v) for v in b)}"
        for o, b in zip(objs, boxes)
    ]
    return Item("VisReason", f"{IMAGE}{'; '.join(parts)}.", [img], "", {"skill": "caption_ground", "truth": truth})


def _interleaved(world: World, rng) -> Item:
    """A page with its entity's picture (and sometimes the friend's): only entities outside the
    held-out set, so image->fact links for held-out entities are never shown."""
    pool = [e for e in world.entities if e.name not in world.heldout_entities]
    e = pick_one(rng, pool)
    s = fact_sentences(e)
    body = " ".join(s[int(i)] for i in rng.permutation(len(s)))
    images = [_icon(world, rng, e)]
    text = f"{e.name}\n{IMAGE}{body}"
    if rng.random() < 0.5:  # the friend's picture with its name only
        f = world.entity(e.friend)
        images.append(_icon(world, rng, f))
        text += f" {f.name} looks like this: {IMAGE}"
    return Item("VisKnow", text, images, "", {"skill": "interleaved", "entity": e.name})


def _chart_caption(world: World, rng) -> Item:
    sz = world.sizes
    cols, vals = chart_values(rng, sz.chart_bars, sz.chart_max)
    spec = _train_spec(world, rng, lambda: sample_chart_spec(rng, cols, vals, sz.scene_side, sz.side_step,
                                                             sz.chart_max, sz.chart_grid), "chart")
    img, truth = render_chart(spec)
    table = ", ".join(f"{c} {v}" for c, v in zip(cols, vals))
    return Item("VisReason", f"{IMAGE}{table}.", [img], "", {"skill": "chart_caption", "truth": truth})


def _video_caption(world: World, rng) -> Item:
    sz = world.sizes
    t = int(rng.integers(sz.min_frames, sz.max_frames + 1))
    d = "still" if t == 1 else pick_one(rng, list(DIRECTIONS))
    c, s = pick_one(rng, list(COLOURS)), pick_one(rng, SHAPES)
    spec = _train_spec(world, rng, lambda: sample_video_spec(rng, c, s, d, t, sz.video_side, sz.side_step,
                                                             sz.video_speed), "video")
    vid, truth = render_video(spec)
    verb = "sits still" if d == "still" else f"moves {d}"
    return Item(
        "VisReason",
        f"{video_tag(t)}{article(c).capitalize()} {c} {s} {verb}.",
        [vid],
        "",
        {"skill": "video_caption", "truth": truth},
    )


def _skill(name: str) -> Doc:
    return lambda world, rng: world.sample(name, "train", rng)


# name -> [(weight, generator)]; weights are relative
CORPORA: dict[str, list[tuple[float, Doc]]] = {
    "text_knowledge": [(1.0, _page_doc), (1.0, _skill("text_knowledge"))],
    "text_reasoning": [(1.0, _skill(s)) for s in SUITE_SKILLS["TextReason"]],
    "code": [(1.0, _skill(s)) for s in SUITE_SKILLS["Code"]],
    "captions": [(1.0, _caption_entity), (1.0, _caption_scene), (1.0, _caption_ground)],
    "interleaved": [(1.0, _interleaved)],
    "ocr": [(1.0, _skill("ocr"))],
    "charts": [(1.0, _chart_caption), (1.0, _skill("chart"))],
    "video": [(1.0, _video_caption), (1.0, _skill("motion"))],
    "vis_reasoning": [(1.0, _skill(s)) for s in ("count", "compare", "locate", "box")],
    "vis_knowledge": [(1.0, _skill("vis_knowledge")), (1.0, _skill("vis_name"))],
}
TEXT_CORPORA: tuple[str, ...] = ("text_knowledge", "text_reasoning", "code")
VISION_CORPORA: tuple[str, ...] = tuple(c for c in CORPORA if c not in TEXT_CORPORA)


def check_corpus(name: str) -> str:
    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {sorted(CORPORA)}, got {name!r}")
    return name


def corpus_item(world: World, name: str, index: int) -> Item:
    """Row ``index`` of corpus ``name`` (independent of every other row)."""
    parts = CORPORA[check_corpus(name)]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an int >= 0, got {index!r}")
    rng = rng_for(world.seed, "corpus", name, int(index))
    w = np.array([p[0] for p in parts], dtype=np.float64)
    k = int(rng.choice(len(parts), p=w / w.sum()))
    item = parts[k][1](world, rng)
    item.meta.setdefault("skill", "doc")
    return item


def iter_corpus(world: World, name: str, n_rows: int | None = None) -> Iterator[Item]:
    """The first ``n_rows`` rows (default: the world's ``corpus_rows`` for its scale)."""
    n = world.sizes.corpus_rows if n_rows is None else n_rows
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n_rows must be an int >= 0, got {n!r}")
    check_corpus(name)
    for i in range(int(n)):
        yield corpus_item(world, name, i)
