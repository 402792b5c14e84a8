"""Skill generators: every question the world can ask, for training (``split='train'``) and eval.

A generator ``g(world, rng, split)`` returns ``(key, build)`` or ``None`` (draw again): ``key`` is
the content identity that decides the split by hash (``None`` when the generator split its own
pool, e.g. by held-out (entity, attribute) pairs), ``build()`` renders the :class:`Item`. Keys are
checked before rendering so rejected draws cost nothing.

Cross-modal twins (DESIGN §4): each visual skill has a text skill of the same shape, see ``TWINS``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from k25mini.world.entities import ATTRIBUTES, REGIONS
from k25mini.world.items import IMAGE, Item, video_tag
from k25mini.world.render import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    boxes_to_units,
    render_chart,
    render_icon,
    render_scene,
    render_text,
    render_video,
    sample_chart_spec,
    sample_icon_spec,
    sample_scene_spec,
    sample_text_spec,
    sample_video_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    from k25mini.world.world import World

__all__ = [
    "Skill",
    "SKILLS",
    "SUITE_SKILLS",
    "TWINS",
    "run_code",
    "plural",
    "make_word",
    "pick_one",
    "scene_looks",
    "chart_values",
    "VISKNOW_ATTRS",
]

Gen = Callable[["World", np.random.Generator, str], "tuple[str | None, Callable[[], Item]] | None"]


@dataclass(frozen=True)
class Skill:
    name: str
    suite: str
    gen: Gen
    modality: str  # "text" | "image" | "video"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def pick_one(rng: np.random.Generator, seq):
    """One element of ``seq``, drawn uniformly with ``rng``."""
    return seq[int(rng.integers(len(seq)))]


def make_word(rng: np.random.Generator) -> str:
    """An OCR/spelling target: a 2-3 syllable lowercase word or a 1-4 digit number."""
    if rng.random() < 0.6:
        return "".join(pick_one(rng, "bdfgklmnprstvz") + pick_one(rng, "aeiou") for _ in range(int(rng.integers(2, 4))))
    return str(int(rng.integers(0, 10 ** int(rng.integers(1, 5)))))


def run_code(code: str) -> str:
    """Run a generated (trusted, tiny) snippet and return what it printed, stripped."""
    buf = io.StringIO()
    safe = {
        "print": print,
        "len": len,
        "sum": sum,
        "max": max,
        "min": min,
        "sorted": sorted,
        "range": range,
        "abs": abs,
        "str": str,
        "int": int,
        "list": list,
        "reversed": reversed,
    }
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<world>", "exec"), {"__builtins__": safe})  # noqa: S102 - our own generated code
    return buf.getvalue().strip()


# ============================================================================================ VisKnow
VISKNOW_ATTRS = ("region", "weight", "speed", "friend")
_VISKNOW_Q = {
    "region": "Where does this creature live?",
    "weight": "How heavy is this creature?",
    "speed": "How fast is this creature?",
    "friend": "Who is this creature's friend?",
}


def _attr_domain(world: World, attr: str) -> dict:
    if attr == "region":
        return {"choices": list(REGIONS)}
    if attr == "friend":
        return {"choices": [e.name for e in world.entities]}
    if attr == "colour":
        return {"choices": list(COLOURS)}
    if attr == "shape":
        return {"choices": list(SHAPES)}
    if attr == "weight":
        return {"range": [1, 50]}
    return {"range": [1, 20]}  # speed


def _vis_knowledge(world: World, rng, split):
    """Icon of an entity -> a fact stated only in its text page (needs recognition AND knowledge)."""
    pool = world.entities if split == "eval" else [e for e in world.entities if e.name not in world.heldout_entities]
    e = pick_one(rng, pool)
    attr = pick_one(rng, VISKNOW_ATTRS)
    spec = sample_icon_spec(rng, e.colour, e.shape, world.sizes.icon_side, world.sizes.side_step)
    key = f"icon:{e.name}:{spec}"  # the entity-image pair; split by hash of the render

    def build() -> Item:
        img, truth = render_icon(spec)
        meta = {
            "entity": e.name,
            "attr": attr,
            "heldout_entity": e.name in world.heldout_entities,
            "scorer": "exact",
            **_attr_domain(world, attr),
            "truth": truth,
        }
        return Item("VisKnow", f"{IMAGE}Q: {_VISKNOW_Q[attr]} A:", [img], e.value(attr), meta)

    return key, build


def _vis_name(world: World, rng, split):
    """Icon -> the entity's name (recognition; the caption skill that links pixels to pages)."""
    e = pick_one(rng, world.entities)
    spec = sample_icon_spec(rng, e.colour, e.shape, world.sizes.icon_side, world.sizes.side_step)

    def build() -> Item:
        img, truth = render_icon(spec)
        meta = {"entity": e.name, "scorer": "exact", "choices": [x.name for x in world.entities], "truth": truth}
        return Item("VisKnow", f"{IMAGE}Q: Who is this? A:", [img], e.name, meta)

    return f"icon:{e.name}:{spec}", build


# ============================================================================================ VisReason
def scene_looks(rng, n: int) -> list[tuple[str, str]]:
    """Looks drawn from 3 colours x 3 shapes so that repeats (and interesting counts) are common."""
    cols = list(rng.choice(list(COLOURS), size=3, replace=False))
    shs = list(rng.choice(list(SHAPES), size=3, replace=False))
    return [(str(pick_one(rng, cols)), str(pick_one(rng, shs))) for _ in range(n)]


def _count_query(rng, looks, n_max: int):
    by_colour = rng.random() < 0.5
    present = sorted({lk[0] if by_colour else lk[1] for lk in looks})
    absent = sorted(set(COLOURS if by_colour else SHAPES) - set(present))
    # ask about a random object's colour/shape (weighted by frequency, so counts > 1 are common)
    obj = looks[int(rng.integers(len(looks)))]
    target = pick_one(rng, absent) if (rng.random() < 0.15 and absent) else (obj[0] if by_colour else obj[1])
    count = sum(1 for lk in looks if (lk[0] if by_colour else lk[1]) == target)
    what = f"{target} objects" if by_colour else plural(target)
    return what, count


def _count(world: World, rng, split):
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    what, count = _count_query(rng, looks, n)
    spec = sample_scene_spec(rng, looks, world.sizes.scene_side, world.sizes.side_step, world.sizes.scene_grid)
    q = f"How many {what}?"

    def build() -> Item:
        img, truth = render_scene(spec)
        meta = {"scorer": "count", "range": [0, world.sizes.max_objects], "truth": truth}
        return Item("VisReason", f"{IMAGE}Q: {q} A:", [img], str(count), meta)

    return f"scene:{spec}", build


def _compare_query(rng, looks):
    counts: dict[str, int] = {}
    for c, _ in looks:
        counts[c] = counts.get(c, 0) + 1
    cols = sorted(counts)
    pairs = [(a, b) for a in cols for b in cols if a < b and counts[a] != counts[b]]
    if not pairs:
        return None
    a, b = pick_one(rng, pairs)
    if rng.random() < 0.5:
        a, b = b, a
    return a, b, (a if counts[a] > counts[b] else b)


def _compare(world: World, rng, split):
    n = int(rng.integers(3, max(3, world.sizes.max_objects) + 1))
    looks = scene_looks(rng, n)
    qa = _compare_query(rng, looks)
    if qa is None:
        return None
    a, b, ans = qa
    spec = sample_scene_spec(rng, looks, world.sizes.scene_side, world.sizes.side_step, world.sizes.scene_grid)
    q = f"More {a} or {b}?"

    def build() -> Item:
        img, truth = render_scene(spec)
        return Item(
            "VisReason", f"{IMAGE}Q: {q} A:", [img], ans, {"scorer": "exact", "choices": [a, b], "truth": truth}
        )

    return f"scene:{spec}", build


def _unique_look(rng, looks):
    uniq = [lk for lk in looks if looks.count(lk) == 1]
    return pick_one(rng, uniq) if uniq else None


_CELLS = [f"{r} {c}" for r in range(3) for c in range(3)]


def _locate(world: World, rng, split):
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    target = _unique_look(rng, looks)
    if target is None:
        return None
    spec = sample_scene_spec(rng, looks, world.sizes.scene_side, world.sizes.side_step, world.sizes.scene_grid)
    q = f"Which cell holds the {target[0]} {target[1]}?"

    def build() -> Item:
        img, truth = render_scene(spec)
        ans = locate_answer(truth, target)
        return Item(
            "VisReason", f"{IMAGE}Q: {q} A:", [img], ans, {"scorer": "exact", "choices": _CELLS, "truth": truth}
        )

    return f"scene:{spec}", build


def locate_answer(truth: dict, target: tuple[str, str]) -> str:
    """'row col' of the (unique) object with look ``target`` in a rendered scene's truth."""
    obj = next(o for o in truth["objects"] if (o["colour"], o["shape"]) == target)
    return f"{obj['cell'][0]} {obj['cell'][1]}"


def box_query(rng, looks):
    """A box question and its object selector: one object by its unique look, or every object of a colour
    (None when the draw needs a unique look and there is none)."""
    if rng.random() < 0.5:
        target = _unique_look(rng, looks)
        if target is None:
            return None
        return f"Box of the {target[0]} {target[1]}?", lambda o: (o["colour"], o["shape"]) == target
    colour = pick_one(rng, sorted({lk[0] for lk in looks}))
    return f"Boxes of {colour} objects?", lambda o: o["colour"] == colour


def box_answer(truth: dict, sel, h: int, w: int, unit: int = 10) -> tuple[str, list[list[int]]]:
    """The selected objects' boxes in ``1/unit`` of the sides (tenths by default), left to right, as the answer
    string and as numbers."""
    objs = sorted((o for o in truth["objects"] if sel(o)), key=lambda o: (o["box"][0], o["box"][1]))
    boxes = boxes_to_units([o["box"] for o in objs], h, w, unit)
    return "; ".join(" ".join(str(v) for v in b) for b in boxes), boxes


def _box(world: World, rng, split):
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    spec = sample_scene_spec(rng, looks, world.sizes.scene_side, world.sizes.side_step, world.sizes.scene_grid)
    query = box_query(rng, looks)
    if query is None:
        return None
    q, sel = query

    def build() -> Item:
        img, truth = render_scene(spec)
        ans, boxes = box_answer(truth, sel, spec["h"], spec["w"], world.sizes.box_unit)
        return Item("VisReason", f"{IMAGE}Q: {q} A:", [img], ans, {"scorer": "iou_f1", "boxes": boxes, "truth": truth})

    return f"scene:{spec}", build


def chart_values(rng, bars: tuple[int, int] = (3, 5), vmax: int = 9) -> tuple[list[str], list[int]]:
    """Bar colours and values: ``bars`` = (fewest, most) bars, values 1..``vmax``."""
    n = int(rng.integers(bars[0], bars[1] + 1))
    cols = [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]
    vals = [int(v) for v in rng.integers(1, vmax + 1, size=n)]
    return cols, vals


def _chart_question(rng, cols, vals, vmax: int = 9):
    if rng.random() < 0.5:
        i = int(rng.integers(len(cols)))
        return f"Value of the {cols[i]} bar?", str(vals[i]), {"choices": [str(v) for v in range(vmax + 1)]}
    if vals.count(max(vals)) != 1:
        return None
    return "Which bar is tallest?", cols[vals.index(max(vals))], {"choices": cols}


def _chart(world: World, rng, split):
    sz = world.sizes
    cols, vals = chart_values(rng, sz.chart_bars, sz.chart_max)
    qa = _chart_question(rng, cols, vals, sz.chart_max)
    if qa is None:
        return None
    q, ans, dom = qa
    spec = sample_chart_spec(rng, cols, vals, sz.scene_side, sz.side_step, sz.chart_max, sz.chart_grid)

    def build() -> Item:
        img, truth = render_chart(spec)
        return Item("VisReason", f"{IMAGE}Q: {q} A:", [img], ans, {"scorer": "exact", **dom, "truth": truth})

    return f"chart:{spec}", build


def _motion(world: World, rng, split):
    sz = world.sizes
    t = int(rng.integers(max(2, sz.min_frames), sz.max_frames + 1))
    d = pick_one(rng, list(DIRECTIONS))
    spec = sample_video_spec(rng, pick_one(rng, list(COLOURS)), pick_one(rng, SHAPES), d, t, sz.video_side,
                             sz.side_step, sz.video_speed)

    def build() -> Item:
        vid, truth = render_video(spec)
        meta = {"scorer": "exact", "choices": list(DIRECTIONS), "truth": truth}
        return Item("VisReason", f"{video_tag(t)}Q: Which way does it move? A:", [vid], d, meta)

    return f"video:{spec}", build


# ============================================================================================ OCR
def ocr_word(rng: np.random.Generator, sizes) -> tuple[str, str]:
    """An OCR target and its alphabet: ``sizes.ocr_chars`` strings of ``sizes.ocr_len`` characters, or (when
    ``ocr_chars`` is empty) a :func:`make_word` word or number."""
    if sizes.ocr_chars:
        lo, hi = sizes.ocr_len
        n = int(rng.integers(lo, hi + 1))
        return "".join(pick_one(rng, sizes.ocr_chars) for _ in range(n)), sizes.ocr_chars
    word = make_word(rng)
    return word, "0123456789" if word.isdigit() else "abcdefghijklmnopqrstuvwxyz"


def _ocr(world: World, rng, split):
    word, alphabet = ocr_word(rng, world.sizes)
    zlo, zhi = world.sizes.ocr_zoom
    spec = sample_text_spec(rng, word, max_zoom=zhi, min_zoom=zlo, slot=world.sizes.ocr_slot)

    def build() -> Item:
        img, truth = render_text(spec)
        meta = {
            "scorer": "edit",
            "alphabet": alphabet,
            "truth": truth,
        }
        return Item("OCR", f"{IMAGE}Q: What does it say? A:", [img], word, meta)

    return f"word:{word}", build  # split by the word: an eval word is never read in training


# ============================================================================================ TextKnow
_TEXTKNOW_Q = {
    "colour": ("What colour is {n}?", "{n} has which colour?"),
    "shape": ("What shape is {n}?", "{n} has which shape?"),
    "region": ("Where does {n} live?", "{n} lives where?"),
    "weight": ("How heavy is {n}?", "{n} weighs how many kg?"),
    "speed": ("How fast is {n}?", "{n} runs how many km/h?"),
    "friend": ("Who is {n}'s friend?", "{n} is friends with whom?"),
}


def _text_knowledge(world: World, rng, split):
    """A fact question; (entity, attribute) pairs are split, the pages state every fact."""
    pairs = world.qa_pairs(split)
    name, attr = pick_one(rng, pairs)
    e = world.entity(name)
    q = pick_one(rng, _TEXTKNOW_Q[attr]).format(n=name)
    meta = {"entity": name, "attr": attr, "scorer": "exact", **_attr_domain(world, attr)}
    return None, lambda: Item("TextKnow", f"Q: {q} A:", [], e.value(attr), meta)


# ============================================================================================ TextReason
def _two_entities(world: World, rng):
    i, j = rng.choice(len(world.entities), size=2, replace=False)
    return world.entities[int(i)], world.entities[int(j)]


def _fact_compare(world: World, rng, split):
    a, b = _two_entities(world, rng)
    attr, adj = ("weight", "heavier") if rng.random() < 0.5 else ("speed", "faster")
    va, vb = getattr(a, attr), getattr(b, attr)
    if va == vb:
        return None
    q = f"Q: Who is {adj}, {a.name} or {b.name}? A:"
    ans = a.name if va > vb else b.name
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "choices": [a.name, b.name]})


def _fact_sum(world: World, rng, split):
    a, b = _two_entities(world, rng)
    attr = "weight" if rng.random() < 0.5 else "speed"
    q = f"Q: {a.name}'s {attr} plus {b.name}'s {attr}? A:"
    ans = str(getattr(a, attr) + getattr(b, attr))
    hi = 100 if attr == "weight" else 40
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "range": [2, hi]})


def _arith(world: World, rng, split):
    a, b, c = (int(x) for x in rng.integers(0, 10, size=3))
    o1, o2 = pick_one(rng, "+-*"), pick_one(rng, "+-*")
    expr = f"{a} {o1} {b} {o2} {c}"
    q = f"Q: {expr} = ? A:"
    ans = run_code(f"print({expr})")
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "range": [-81, 729]})


def _list_text(looks) -> str:
    return ", ".join(f"{c} {s}" for c, s in looks)


def _count_list(world: World, rng, split):
    """Twin of ``count``: the scene as a list of words."""
    n = int(rng.integers(1, world.sizes.max_objects + 1))
    looks = scene_looks(rng, n)
    what, count = _count_query(rng, looks, n)
    q = f"Q: {_list_text(looks)}. How many {what}? A:"
    meta = {"scorer": "count", "range": [0, world.sizes.max_objects], "looks": looks}
    return q, lambda: Item("TextReason", q, [], str(count), meta)


def _compare_list(world: World, rng, split):
    """Twin of ``compare``."""
    n = int(rng.integers(3, max(3, world.sizes.max_objects) + 1))
    looks = scene_looks(rng, n)
    qa = _compare_query(rng, looks)
    if qa is None:
        return None
    a, b, ans = qa
    q = f"Q: {_list_text(looks)}. More {a} or {b}? A:"
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "choices": [a, b], "looks": looks})


def _table_read(world: World, rng, split):
    """Twin of ``chart``: the bar chart as a table."""
    cols, vals = chart_values(rng)
    qa = _chart_question(rng, cols, vals)
    if qa is None:
        return None
    qq, ans, dom = qa
    table = ", ".join(f"{c} {v}" for c, v in zip(cols, vals))
    q = f"Q: {table}. {qq} A:"
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", **dom})


def _cell_locate(world: World, rng, split):
    """Twin of ``locate``: find a symbol in a 3x3 text grid, answer 'row col'."""
    k = int(rng.integers(1, 4))
    syms = list(rng.choice(list("abcdefgh"), size=k, replace=False))
    cells = rng.choice(9, size=k, replace=False)
    grid = ["."] * 9
    for s, c in zip(syms, cells):
        grid[int(c)] = str(s)
    t = int(rng.integers(k))
    rows = "/".join("".join(grid[3 * r : 3 * r + 3]) for r in range(3))
    q = f"Q: {rows}. Where is {syms[t]}? A:"
    ans = f"{int(cells[t]) // 3} {int(cells[t]) % 3}"
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "choices": _CELLS})


def _spell(world: World, rng, split):
    """Twin of ``ocr``: spell a word letter by letter."""
    word = make_word(rng)
    q = f"Q: Spell {word}. A:"
    meta = {"scorer": "edit", "alphabet": "0123456789" if word.isdigit() else "abcdefghijklmnopqrstuvwxyz"}
    return f"word:{word}", lambda: Item("TextReason", q, [], " ".join(word), meta)


def _motion_list(world: World, rng, split):
    """Twin of ``motion``: positions over time; y grows downwards as in images."""
    d = pick_one(rng, list(DIRECTIONS))
    n = int(rng.integers(2, 6))
    step = int(rng.integers(1, 4))
    dx, dy = DIRECTIONS[d]
    sign = dx if dx else dy
    start = int(rng.integers(0, 10)) + (step * (n - 1) if sign < 0 else 0)
    pos = [start + sign * step * i for i in range(n)]
    axis = "x" if dx else "y"
    q = f"Q: {axis}: {', '.join(map(str, pos))}. Which way? A:"
    return q, lambda: Item("TextReason", q, [], d, {"scorer": "exact", "choices": list(DIRECTIONS)})


def _grid(rng) -> list[list[int]]:
    r, c = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    return [[int(v) for v in rng.integers(0, 10, size=c)] for _ in range(r)]


def _grid_op(rng, g: list[list[int]]) -> tuple[str, str]:
    """(natural-language question, code that answers it on variable ``g``): code-space operations."""
    k = int(rng.integers(4))
    if k == 0:
        t = int(rng.integers(1, 9))
        return f"How many cells are above {t}?", f"print(sum(v > {t} for r in g for v in r))"
    if k == 1:
        return "Largest cell?", "print(max(max(r) for r in g))"
    if k == 2:
        i = int(rng.integers(len(g)))
        return f"Sum of row {i}?", f"print(sum(g[{i}]))"
    return "Row with the largest sum?", "print(max(range(len(g)), key=lambda i: sum(g[i])))"


def _grid_task(world: World, rng, split):
    """Text that describes an array, solved by short code (the operation a tool applies to images)."""
    g = _grid(rng)
    qq, code = _grid_op(rng, g)
    g_txt = str(g).replace(" ", "")
    q = f"Q: g={g_txt}. {qq} A:"
    ans = run_code(f"g={g_txt}; {code}")
    return q, lambda: Item("TextReason", q, [], ans, {"scorer": "exact", "range": [0, 27], "code": code})


# ============================================================================================ Code
def _code_item(code: str, extra: dict) -> Item:
    ans = run_code(code)
    return Item("Code", f"Q: {code} A:", [], ans, {"scorer": "exact", "case": True, "code": code, **extra})


def _code_expr(world: World, rng, split):
    a, b, c = (int(x) for x in rng.integers(0, 10, size=3))
    o1, o2 = pick_one(rng, ["+", "-", "*", "//", "%"]), pick_one(rng, ["+", "-", "*"])
    if o1 in ("//", "%") and b == 0:
        b = 1 + int(rng.integers(9))
    code = f"print({a} {o1} {b} {o2} {c})"
    return code, lambda: _code_item(code, {"range": [-81, 729]})


def _code_str(world: World, rng, split):
    w = make_word(rng)
    if w.isdigit():
        w = "ab" + w[:2]
    k = int(rng.integers(5))
    code = [
        f'print("{w}".upper())',
        f'print(len("{w}"))',
        f'print("{w}"[{int(rng.integers(0, 3))}])',
        f'print("{w}" * 2)',
        f'print("{w}"[::-1])',
    ][k]
    return code, lambda: _code_item(code, {"alphabet": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"})


def _code_list(world: World, rng, split):
    xs = [int(v) for v in rng.integers(0, 10, size=int(rng.integers(2, 5)))]
    xs_t = str(xs).replace(" ", "")
    k = int(rng.integers(5))
    code = [
        f"print(sum({xs_t}))",
        f"print(max({xs_t}))",
        f"print(sorted({xs_t}))",
        f"print(len({xs_t}))",
        f"print([x * 2 for x in {xs_t}])",
    ][k]
    return code, lambda: _code_item(code, {"range": [0, 36]})


def _code_grid(world: World, rng, split):
    """Code-space: grid operations (threshold-count, max, row sum, argmax) written as code."""
    g = _grid(rng)
    _, op = _grid_op(rng, g)
    code = f"g={str(g).replace(' ', '')}; {op}"
    return code, lambda: _code_item(code, {"range": [0, 27]})


# ============================================================================================ registry
SKILLS: dict[str, Skill] = {
    s.name: s
    for s in [
        Skill("vis_knowledge", "VisKnow", _vis_knowledge, "image"),
        Skill("vis_name", "VisKnow", _vis_name, "image"),
        Skill("count", "VisReason", _count, "image"),
        Skill("compare", "VisReason", _compare, "image"),
        Skill("locate", "VisReason", _locate, "image"),
        Skill("box", "VisReason", _box, "image"),
        Skill("chart", "VisReason", _chart, "image"),
        Skill("motion", "VisReason", _motion, "video"),
        Skill("ocr", "OCR", _ocr, "image"),
        Skill("text_knowledge", "TextKnow", _text_knowledge, "text"),
        Skill("fact_compare", "TextReason", _fact_compare, "text"),
        Skill("fact_sum", "TextReason", _fact_sum, "text"),
        Skill("arith", "TextReason", _arith, "text"),
        Skill("count_list", "TextReason", _count_list, "text"),
        Skill("compare_list", "TextReason", _compare_list, "text"),
        Skill("table_read", "TextReason", _table_read, "text"),
        Skill("cell_locate", "TextReason", _cell_locate, "text"),
        Skill("spell", "TextReason", _spell, "text"),
        Skill("motion_list", "TextReason", _motion_list, "text"),
        Skill("grid_task", "TextReason", _grid_task, "text"),
        Skill("code_expr", "Code", _code_expr, "text"),
        Skill("code_str", "Code", _code_str, "text"),
        Skill("code_list", "Code", _code_list, "text"),
        Skill("code_grid", "Code", _code_grid, "text"),
    ]
}

# The skills each eval suite mixes (round-robin, so the mix is fixed). ``vis_name`` is training-only.
SUITE_SKILLS: dict[str, tuple[str, ...]] = {
    "VisKnow": ("vis_knowledge",),
    "VisReason": ("count", "compare", "locate", "box", "chart", "motion"),
    "OCR": ("ocr",),
    "TextKnow": ("text_knowledge",),
    "TextReason": (
        "fact_compare",
        "fact_sum",
        "arith",
        "count_list",
        "compare_list",
        "table_read",
        "cell_locate",
        "spell",
        "motion_list",
        "grid_task",
    ),
    "Code": ("code_expr", "code_str", "code_list", "code_grid"),
}

# visual skill -> its text twin of the same shape (DESIGN §4, cross-modal twins)
TWINS: dict[str, str] = {
    "count": "count_list",
    "compare": "compare_list",
    "chart": "table_read",
    "locate": "cell_locate",
    "ocr": "spell",
    "motion": "motion_list",
    "code_grid": "grid_task",  # code-space: the same array operation as code and as a question
}
assert set(ATTRIBUTES) >= set(VISKNOW_ATTRS)
