"""The toy world: entities, renderers (ground truth checked on pixels), skills, splits, bad arguments."""

import numpy as np
import pytest

from k25mini.data import Tokenizer
from k25mini.world import (
    ATTRIBUTES,
    COLOURS,
    MIN_SIDE,
    SKILLS,
    SUITE_SKILLS,
    SUITES,
    TWINS,
    World,
    render_chart,
    render_icon,
    render_scene,
    render_text,
    render_video,
    score,
    sizes,
)
from k25mini.world.render import (
    sample_chart_spec,
    sample_icon_spec,
    sample_scene_spec,
    sample_text_spec,
    sample_video_spec,
)
from k25mini.world.rng import rng_for, stable_hash

TOK = Tokenizer()


@pytest.fixture(scope="module")
def world():
    return World(seed=0, scale="smoke")


def test_world_deterministic_by_seed(world):
    again = World(seed=0, scale="smoke")
    assert again.entities == world.entities and again.pages == world.pages
    assert again.heldout_entities == world.heldout_entities
    other = World(seed=1, scale="smoke")
    assert other.entities != world.entities
    assert stable_hash("a", 1) == stable_hash("a", 1) != stable_hash("a", 2)


def test_entities_are_well_formed(world):
    es = world.entities
    assert len(es) == sizes("smoke").n_entities
    assert len({e.name for e in es}) == len(es)
    assert len({e.look for e in es}) == len(es)  # every entity is recognisable from pixels
    for e in es:
        assert e.friend != e.name and e.friend in {x.name for x in es}
        assert 1 <= e.weight <= 50 and 1 <= e.speed <= 20 and 3 <= len(e.name) <= 5
        page = world.pages[f"entity/{e.name.lower()}"]
        for a in ATTRIBUTES:
            assert e.value(a) in page
        assert len(page) < 160
    assert 1 <= len(world.heldout_entities) < len(es)
    assert world.entity(es[0].name.lower()) == es[0]


@pytest.mark.parametrize("n", [-1, 0, 1, 65, "3", 2.0, True])
def test_bad_n_entities(n):
    with pytest.raises(ValueError, match="n_entities"):
        World(seed=0, n_entities=n, scale="smoke")


@pytest.mark.parametrize("seed", [-1, "0", 1.5, None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        World(seed=seed, scale="smoke")


def test_bad_skill_split_name_scale(world):
    with pytest.raises(ValueError, match="skill"):
        world.sample("juggling")
    with pytest.raises(ValueError, match="split"):
        world.sample("count", "test")
    with pytest.raises(ValueError, match="name"):
        world.entity("Nobody")
    with pytest.raises(ValueError, match="scale"):
        World(seed=0, scale="huge")


# ------------------------------------------------------------------------------------------ renderers
def _mask(img, colour):
    return np.all(np.abs(img.astype(int) - np.array(COLOURS[colour])) <= 2, axis=-1)


def test_icon_truth_matches_pixels():
    rng = rng_for(0, "t-icon")
    for shape in ("circle", "square", "star", "ring", "cross"):
        spec = sample_icon_spec(rng, "blue", shape, (24, 64))
        img, truth = render_icon(spec)
        assert img.dtype == np.uint8 and img.shape == (spec["h"], spec["w"], 3)
        ys, xs = np.nonzero(_mask(img, "blue"))
        x0, y0, x1, y1 = truth["box"]
        assert len(xs) > 5 and xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


def test_scene_truth_matches_pixels():
    rng = rng_for(0, "t-scene")
    looks = [("red", "circle"), ("blue", "square"), ("red", "star"), ("green", "triangle")]
    spec = sample_scene_spec(rng, looks, (48, 96))
    img, truth = render_scene(spec)
    assert len(truth["objects"]) == 4
    h, w = img.shape[:2]
    for o, (_, _, cx, cy, _r) in zip(truth["objects"], spec["objects"]):
        x0, y0, x1, y1 = o["box"]
        assert _mask(img[y0:y1, x0:x1], o["colour"]).sum() > 3  # the object is drawn inside its box
        assert o["cell"] == [3 * cy // h, 3 * cx // w]  # 3x3 cell of the object's centre
    centres = [(cx, cy, r) for _, _, cx, cy, r in spec["objects"]]
    for a in range(len(centres)):  # no two objects overlap
        for b in range(a):
            (xa, ya, ra), (xb, yb, rb) = centres[a], centres[b]
            assert (xa - xb) ** 2 + (ya - yb) ** 2 > (ra + rb) ** 2


def test_chart_bar_heights_follow_values():
    rng = rng_for(0, "t-chart")
    spec = sample_chart_spec(rng, ["red", "blue", "green"], [2, 9, 5], (48, 96))
    img, truth = render_chart(spec)
    heights = [int(_mask(img, c).any(axis=1).sum()) for c in ("red", "blue", "green")]
    assert heights[1] > heights[2] > heights[0] > 0
    assert [b["value"] for b in truth["bars"]] == [2, 9, 5]
    ratio = heights[1] / heights[0]
    assert 3.0 < ratio < 6.0  # ~ 9/2 up to pixel rounding


@pytest.mark.parametrize("direction", ["left", "right", "up", "down", "still"])
def test_video_object_moves_in_direction(direction):
    rng = rng_for(0, "t-video", direction)
    spec = sample_video_spec(rng, "purple", "circle", direction, 6, (32, 48))
    vid, truth = render_video(spec)
    assert vid.shape == (6, spec["h"], spec["w"], 3) and vid.dtype == np.uint8
    cents = []
    for f in vid:
        ys, xs = np.nonzero(_mask(f, "purple"))
        assert len(xs) > 0  # the object never leaves the frame
        cents.append((xs.mean(), ys.mean()))
    dx, dy = cents[-1][0] - cents[0][0], cents[-1][1] - cents[0][1]
    expect = {"left": (dx < -2), "right": (dx > 2), "up": (dy < -2), "down": (dy > 2), "still": abs(dx) + abs(dy) < 1}
    assert expect[direction], (dx, dy)


def test_text_strip_varies_with_word_and_zoom():
    rng = rng_for(0, "t-text")
    shapes = set()
    for w in ("7", "bo", "kirapo", "12345"):
        img, truth = render_text(sample_text_spec(rng, w))
        assert truth["text"] == w and min(img.shape[:2]) >= MIN_SIDE
        assert (img.min(axis=-1) < 100).any()  # dark ink is present
        shapes.add(img.shape[:2])
    assert len(shapes) == 4


def test_render_bad_arguments():
    rng = rng_for(0, "bad")
    spec = sample_icon_spec(rng, "red", "circle", (24, 32))
    with pytest.raises(ValueError, match="height"):
        render_icon({**spec, "h": MIN_SIDE - 1})
    with pytest.raises(ValueError, match="width"):
        render_scene({"h": 32, "w": 8, "bg": [255, 255, 255], "objects": []})
    with pytest.raises(ValueError, match="side"):
        sample_icon_spec(rng, "red", "circle", (8, 32))
    with pytest.raises(ValueError, match="side"):
        sample_scene_spec(rng, [("red", "circle")], (64, 32))
    with pytest.raises(ValueError, match="n_frames"):
        sample_video_spec(rng, "red", "circle", "left", -1, (32, 48))
    with pytest.raises(ValueError, match="n_frames"):
        sample_video_spec(rng, "red", "circle", "left", 17, (32, 48))
    with pytest.raises(ValueError, match="direction"):
        sample_video_spec(rng, "red", "circle", "sideways", 3, (32, 48))
    with pytest.raises(ValueError, match="colour"):
        render_icon({**spec, "colour": "mauve"})
    with pytest.raises(ValueError, match="shape"):
        render_icon({**spec, "shape": "blob"})
    with pytest.raises(ValueError, match="text"):
        sample_text_spec(rng, "")
    with pytest.raises(ValueError, match="values"):
        sample_chart_spec(rng, ["red"], [12], (48, 64))
    with pytest.raises(ValueError, match="looks"):
        sample_scene_spec(rng, [], (48, 64))


# ------------------------------------------------------------------------------------------ skills
@pytest.mark.parametrize("skill", sorted(SKILLS))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_skill_yields_valid_items(world, skill, split):
    for i in range(4):
        it = world.sample(skill, split, rng_for(0, "t-skill", skill, split, i))
        assert it.meta["skill"] == skill and it.meta["split"] == split and it.suite == SKILLS[skill].suite
        assert it.prompt.endswith("A:") and it.answer and len(it.answer) <= 40
        ids = TOK.encode(it.prompt)
        n_pad = TOK.count_media(ids)
        expect = sum(1 if a.ndim == 3 else -(-a.shape[0] // 4) for a in it.images)
        assert n_pad == expect
        assert it.prompt.count("<|media_begin|>") == len(it.images)
        text_only = TOK.decode(ids, skip_special=True)
        assert len(text_only) <= 140, text_only  # short prompts: learnable by a ~0.5M-param model
        for a in it.images:
            assert a.dtype == np.uint8 and a.shape[-1] == 3 and min(a.shape[-3:-1]) >= MIN_SIDE
        assert score(it, it.answer) == 1.0
        assert world.accepts(it.meta["key"] if it.meta["skill"] != "text_knowledge" else None, split)


def test_answers_agree_with_ground_truth(world):
    for i in range(6):
        it = world.sample("count", "eval", rng_for(1, i))
        objs = it.meta["truth"]["objects"]
        q = it.prompt.split("How many ")[1].split("?")[0]
        want = sum(1 for o in objs if (q == f"{o['colour']} objects") or q.startswith(o["shape"]))
        assert int(it.answer) == want
        it = world.sample("locate", "train", rng_for(2, i))
        target = it.prompt.split("holds the ")[1].split("?")[0]
        o = next(o for o in it.meta["truth"]["objects"] if f"{o['colour']} {o['shape']}" == target)
        assert it.answer == f"{o['cell'][0]} {o['cell'][1]}"
        it = world.sample("vis_knowledge", "eval", rng_for(3, i))
        e = world.entity(it.meta["entity"])
        assert (e.colour, e.shape) == (it.meta["truth"]["colour"], it.meta["truth"]["shape"])
        assert it.answer == e.value(it.meta["attr"])
        it = world.sample("motion", "train", rng_for(4, i))
        (x0, y0), (x1, y1) = it.meta["truth"]["centres"][0], it.meta["truth"]["centres"][-1]
        assert it.answer == ("right" if x1 > x0 else "left" if x1 < x0 else "down" if y1 > y0 else "up")
        it = world.sample("code_expr", "train", rng_for(5, i))
        assert it.answer == str(eval(it.meta["code"][len("print(") : -1]))  # noqa: S307 - our own expression


def test_images_vary_in_size_and_aspect(world):
    shapes = {
        world.sample(s, "train", rng_for(0, "size", s, i)).images[0].shape[:2]
        for s in ("vis_name", "count", "ocr", "chart")
        for i in range(8)
    }
    assert len({h for h, _ in shapes}) > 5 and len({w for _, w in shapes}) > 5
    assert sum(h != w for h, w in shapes) > len(shapes) // 2


def test_splits_are_disjoint(world):
    tr, ev = set(world.qa_pairs("train")), set(world.qa_pairs("eval"))
    assert tr.isdisjoint(ev) and len(tr | ev) == len(world.entities) * len(ATTRIBUTES)
    keys = [f"k{i}" for i in range(2000)]
    held = sum(world.is_heldout_key(k) for k in keys)
    assert 300 < held < 500  # about HELDOUT_FRAC = 0.2
    assert all(world.accepts(k, "eval") != world.accepts(k, "train") for k in keys[:100])


def test_suite_skills_and_twins_are_consistent():
    assert set(SUITE_SKILLS) == set(SUITES)
    for suite, skills in SUITE_SKILLS.items():
        assert all(SKILLS[s].suite == suite for s in skills)
    for vis, txt in TWINS.items():
        assert SKILLS[txt].modality == "text"
        assert vis in SKILLS


def test_grounding_caption_states_each_objects_cell_and_box():
    """caption_ground rows: one 'colour shape at r c: x0 y0 x1 y1' per object, in reading order, agreeing with
    the render's truth (boxes in tenths, as the box skill answers)."""
    from k25mini.world import corpus_item
    from k25mini.world.render import boxes_to_tenths

    w = World(seed=0, scale="smoke")
    seen = 0
    for i in range(200):
        it = corpus_item(w, "captions", i)
        if it.meta["skill"] != "caption_ground":
            continue
        seen += 1
        img = it.images[0]
        objs = it.meta["truth"]["objects"]
        parts = it.prompt.split("<|media_end|>")[1].rstrip(".").split("; ")
        assert len(parts) == len(objs) >= 1 and "?" not in it.prompt  # a caption, never a question
        cells = []
        for part in parts:
            look, rest = part.split(" at ")
            cell, box = rest.split(": ")
            colour, shape = look.split(" ")
            r, c = (int(v) for v in cell.split())
            box = [int(v) for v in box.split()]
            cands = [o for o in objs if (o["colour"], o["shape"], o["cell"]) == (colour, shape, [r, c])]
            assert any(boxes_to_tenths([o["box"]], img.shape[0], img.shape[1])[0] == box for o in cands), part
            cells.append((r, c))
        assert cells == sorted(cells)
    assert seen >= 10

