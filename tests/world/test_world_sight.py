"""The cpu-scale world shaped for a model that must learn to see (issue #15): image sides on the token grid,
slotted OCR strips, distinct entity looks; the smoke/gpu worlds keep their old draws."""

import numpy as np
import pytest

from k25mini.world import World, make_eval_suite
from k25mini.world.corpora import corpus_item
from k25mini.world.entities import make_entities
from k25mini.world.render import (
    COLOURS,
    DIRECTIONS,
    _draw_side,
    boxes_to_tenths,
    boxes_to_units,
    render_chart,
    render_scene,
    render_text,
    render_video,
    sample_chart_spec,
    sample_icon_spec,
    sample_scene_spec,
    sample_text_spec,
    sample_video_spec,
)
from k25mini.world.sizes import sizes


@pytest.mark.parametrize("lo,hi,step", [(32, 48, 16), (14, 64, 16), (48, 48, 16), (20, 90, 7)])
def test_draw_side_is_a_multiple_in_range(lo, hi, step):
    rng = np.random.default_rng(0)
    got = {_draw_side(rng, lo, hi, step) for _ in range(200)}
    assert all(v % step == 0 and lo <= v <= hi for v in got)
    assert got == {v for v in range(lo, hi + 1) if v % step == 0}  # every multiple is reachable


def test_draw_side_step_one_keeps_the_old_draw():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [_draw_side(a, 24, 64) for _ in range(50)] == [int(b.integers(24, 65)) for _ in range(50)]


@pytest.mark.parametrize("step", [0, -16, 2.5, True])
def test_draw_side_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        _draw_side(np.random.default_rng(0), 32, 48, step)


def test_draw_side_no_multiple_in_range():
    with pytest.raises(ValueError, match="no multiple of step=16"):
        _draw_side(np.random.default_rng(0), 33, 47, 16)


def test_spec_samplers_respect_step():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = sample_icon_spec(rng, "red", "circle", (32, 48), step=16)
        assert s["h"] in (32, 48) and s["w"] in (32, 48)
        sc = sample_scene_spec(rng, [("red", "circle"), ("blue", "star")], (48, 48), step=16)
        assert (sc["h"], sc["w"]) == (48, 48)


def test_slotted_text_puts_character_i_in_slot_i_plus_1():
    spec = sample_text_spec(np.random.default_rng(0), "407", max_zoom=2, min_zoom=2, slot=16)
    img, truth = render_text(spec)
    assert truth == {"text": "407"} and img.shape == (32, 64, 3)
    bg = np.array(spec["bg"], np.uint8)
    ink = (img != bg).any(-1)
    cols = [bool(ink[:, 16 * k : 16 * (k + 1)].any()) for k in range(4)]
    assert cols == [False, True, True, True]  # the margin slot is empty, each character slot has ink
    # each character lies wholly inside its slot: the slot borders carry no ink
    assert not ink[:, [16, 32, 48]].any() and not ink[:, 63].any()
    # the same character renders the same pixels in any slot
    s2 = dict(spec, text="440")
    img2, _ = render_text(s2)
    assert np.array_equal(img2[:, 16:32], img2[:, 32:48])


def test_slotted_text_bad_args():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="slot"):
        sample_text_spec(rng, "12", slot=-1)
    with pytest.raises(ValueError, match="zoom"):
        sample_text_spec(rng, "12", max_zoom=2, min_zoom=3)
    spec = sample_text_spec(rng, "12", max_zoom=3, min_zoom=3, slot=8)  # zoom-3 glyphs are wider than 8 px
    with pytest.raises(ValueError, match="does not fit"):
        render_text(spec)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_up_to_8_even_looks_share_no_colour_and_no_shape(n):
    es = make_entities(np.random.default_rng(3), n, even_looks=True)
    assert len({e.colour for e in es}) == n and len({e.shape for e in es}) == n
    assert all(e.friend != e.name for e in es)


@pytest.mark.parametrize("n", [9, 12, 16])
def test_up_to_16_even_looks_wear_each_colour_and_shape_at_most_twice(n):
    es = make_entities(np.random.default_rng(3), n, even_looks=True)
    assert len({e.look for e in es}) == n
    for attr in ("colour", "shape"):
        counts = [sum(getattr(e, attr) == v for e in es) for v in {getattr(e, attr) for e in es}]
        assert max(counts) <= 2


def test_even_looks_bad_n():
    with pytest.raises(ValueError, match="even_looks"):
        make_entities(np.random.default_rng(3), 17, even_looks=True)


def test_many_entities_have_unique_looks():
    es = make_entities(np.random.default_rng(3), 24)
    assert len({e.look for e in es}) == 24


def test_cpu_world_images_sit_on_the_token_grid():
    w = World(0, scale="cpu")
    step = w.sizes.side_step
    assert step == 16 and len(w.entities) == 16
    items = [it for s in ("VisKnow", "VisReason", "OCR") for it in make_eval_suite(w, s, 48)]
    items += [corpus_item(w, c, r) for c in ("captions", "ocr", "charts", "video", "vis_reasoning") for r in range(20)]
    assert sum(len(it.images) for it in items) > 0
    for it in items:
        for img in it.images:
            h, wd = img.shape[-3:-1]
            assert h % step == 0 and wd % step == 0, (it.meta.get("skill"), img.shape)
    ocr = make_eval_suite(w, "OCR", 48)
    lo, hi = w.sizes.ocr_len
    assert all(it.answer.isdigit() and lo <= len(it.answer) <= hi for it in ocr)
    assert all(it.meta["alphabet"] == "0123456789" for it in ocr)


def test_ocr_eval_strings_never_appear_in_training():
    w = World(0, scale="cpu")
    eval_words = {it.answer for it in make_eval_suite(w, "OCR", 64)}
    train_words = {corpus_item(w, "ocr", r).text().rsplit(" ", 1)[-1] for r in range(300)}
    assert eval_words and not eval_words & train_words


def test_smoke_and_gpu_sizes_keep_the_old_draws():
    for scale in ("smoke", "gpu"):
        s = sizes(scale)
        assert s.side_step == 1 and s.ocr_chars == "" and s.ocr_slot == 0 and s.ocr_zoom == (1, 3)
        assert s.scene_grid == 0 and s.box_unit == 10 and s.chart_bars == (3, 5) and s.chart_max == 9
        assert not s.chart_grid and s.min_frames == 1 and s.video_speed == 0


# ------------------------------------------------------------------ world v4: everything on the token grid (cpu)
def test_grid_scene_puts_one_object_centred_in_each_chosen_cell():
    rng = np.random.default_rng(4)
    looks = [("red", "circle"), ("blue", "star"), ("green", "ring"), ("red", "cross")]
    for _ in range(30):
        spec = sample_scene_spec(rng, looks, (48, 48), step=16, grid=3)
        img, truth = render_scene(spec)
        cells = [tuple(o["cell"]) for o in truth["objects"]]
        assert len(set(cells)) == len(looks)  # distinct cells
        bg = np.array(spec["bg"], np.uint8)
        ink = (img != bg).any(-1)
        for o in truth["objects"]:  # the object's pixel box stays inside its 16x16 cell, and the cell has ink
            r, c = o["cell"]
            x0, y0, x1, y1 = o["box"]
            assert 16 * c <= x0 and x1 <= 16 * (c + 1) and 16 * r <= y0 and y1 <= 16 * (r + 1)
            assert ink[16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)].any()
        empty = {(r, c) for r in range(3) for c in range(3)} - set(cells)
        assert all(not ink[16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)].any() for r, c in empty)
        # a box in thirds is exactly the object's cell
        for o in truth["objects"]:
            (b,) = boxes_to_units([o["box"]], 48, 48, 3)
            assert b == [o["cell"][1], o["cell"][0], o["cell"][1] + 1, o["cell"][0] + 1]


def test_grid_scene_bad_args():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="grid"):
        sample_scene_spec(rng, [("red", "circle")], (48, 48), grid=-1)
    with pytest.raises(ValueError, match="at most grid"):
        sample_scene_spec(rng, [("red", "circle")] * 5, (48, 48), grid=2)


def test_boxes_to_units_matches_tenths_and_checks_unit():
    boxes = [[3, 5, 17, 40], [0, 0, 48, 48]]
    assert boxes_to_units(boxes, 48, 48, 10) == boxes_to_tenths(boxes, 48, 48) == [[0, 1, 4, 9], [0, 0, 10, 10]]
    assert boxes_to_units(boxes, 48, 48, 3) == [[0, 0, 2, 3], [0, 0, 3, 3]]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="unit"):
            boxes_to_units(boxes, 48, 48, bad)


def test_grid_chart_puts_bar_i_in_token_column_i_at_8px_per_unit():
    rng = np.random.default_rng(2)
    spec = sample_chart_spec(rng, ["red", "blue", "green"], [1, 6, 3], (48, 48), step=16, vmax=6, grid=True)
    img, truth = render_chart(spec)
    assert truth["bars"] == [{"colour": c, "value": v} for c, v in zip(["red", "blue", "green"], [1, 6, 3])]
    for i, (c, v) in enumerate(zip(["red", "blue", "green"], [1, 6, 3])):
        col = (img[:, 16 * i : 16 * (i + 1)] == np.array(COLOURS[c], np.uint8)).all(-1)
        rows = np.flatnonzero(col.any(1))
        assert 8 * v - 1 <= len(rows) <= 8 * v + 1  # 8 px per unit
        assert not (img[:, 16 * (i + 1) : 16 * (i + 2)] == np.array(COLOURS[c], np.uint8)).all(-1).any()
    with pytest.raises(ValueError, match="values must be ints in 0..6"):
        sample_chart_spec(rng, ["red"], [7], (48, 48), vmax=6)
    with pytest.raises(ValueError, match="vmax"):
        sample_chart_spec(rng, ["red"], [1], (48, 48), vmax=0)
    # the default draw is unchanged: no extra keys in the spec (the held-out split hashes it)
    assert set(sample_chart_spec(rng, ["red"], [7], (48, 48))) == {"kind", "h", "w", "bg", "colours", "values"}


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_fixed_speed_video_moves_16px_between_its_two_chunks(direction):
    rng = np.random.default_rng(7)
    for _ in range(10):
        spec = sample_video_spec(rng, "red", "circle", direction, 8, (48, 48), step=16, speed=4)
        vid, truth = render_video(spec)
        c = np.array(truth["centres"], float)
        assert vid.shape == (8, 48, 48, 3)
        shift = c[4:].mean(0) - c[:4].mean(0)
        dx, dy = DIRECTIONS[direction]
        assert np.allclose(shift, [16 * dx, 16 * dy])
        bg = np.array(spec["bg"], np.uint8)
        assert all((f != bg).any() for f in vid)  # the object never leaves the frame
        r = spec["r"]
        assert (c - r >= 0).all() and (c + r < 48).all()
    with pytest.raises(ValueError, match="speed"):
        sample_video_spec(rng, "red", "circle", direction, 16, (48, 48), speed=4)
    with pytest.raises(ValueError, match="speed"):
        sample_video_spec(rng, "red", "circle", direction, 8, (48, 48), speed=-1)


def test_cpu_world_v4_items():
    w = World(0, scale="cpu")
    vr = make_eval_suite(w, "VisReason", 96)
    by = {}
    for it in vr:
        by.setdefault(it.meta["skill"], []).append(it)
    assert all(len(v) >= 10 for v in by.values()) and set(by) == {"count", "compare", "locate", "box", "chart",
                                                                     "motion"}
    for it in by["box"]:
        for b in it.meta["boxes"]:
            assert 0 <= b[0] < b[2] <= 3 and 0 <= b[1] < b[3] <= 3 and b[2] - b[0] == 1 and b[3] - b[1] == 1
    for it in by["chart"]:
        assert len(it.meta["truth"]["bars"]) == 3
        assert all(1 <= bar["value"] <= 6 for bar in it.meta["truth"]["bars"])
    for it in by["motion"]:
        assert it.images[0].shape == (8, 48, 48, 3)
    for it in by["locate"]:
        obj = [o for o in it.meta["truth"]["objects"] if it.answer == f"{o['cell'][0]} {o['cell'][1]}"]
        assert len(obj) == 1
