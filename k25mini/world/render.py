"""Renderers (numpy + Pillow only): entity icons, multi-object scenes, OCR strips, bar charts, videos.

Every renderer is a pure function of an explicit *spec* (a dict of plain ints/strings), so the spec
is the image's identity: held-out splits hash the spec, and the same spec always gives the same
bytes. ``sample_*_spec`` draw specs from a numpy Generator. Images are ``uint8 [H, W, 3]``; videos
``uint8 [T, H, W, 3]``; H and W vary independently (non-square).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLOURS",
    "SHAPES",
    "DIRECTIONS",
    "MIN_SIDE",
    "render_icon",
    "render_scene",
    "render_text",
    "render_chart",
    "render_video",
    "sample_icon_spec",
    "sample_scene_spec",
    "sample_text_spec",
    "sample_chart_spec",
    "sample_video_spec",
    "boxes_to_tenths",
    "boxes_to_units",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (215, 175, 0),
    "purple": (135, 50, 175),
    "orange": (240, 120, 10),
    "cyan": (0, 170, 190),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# One patch of the largest toy vision preset (``small``: patch 14): anything smaller is not an image.
MIN_SIDE = 14
_FONT = ImageFont.load_default_imagefont()  # Pillow's built-in bitmap font: no FreeType, same bytes everywhere


def _check_side(name: str, v: Any, lo: int = MIN_SIDE) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int (pixels), got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo} px (one vision patch), got {v}")
    return int(v)


def _check_range(name: str, rng_: Any) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in rng_)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of ints, got {rng_!r}") from None
    if lo < MIN_SIDE or hi < lo:
        raise ValueError(f"{name} must satisfy {MIN_SIDE} <= min <= max (one vision patch), got {rng_!r}")
    return lo, hi


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1 (px), got {step!r}")
    return int(step)


def _draw_side(rng: np.random.Generator, lo: int, hi: int, step: int = 1) -> int:
    """A side in ``[lo, hi]``, a multiple of ``step`` when ``step`` > 1 (at least one such value must exist)."""
    step = _check_step(step)
    if step == 1:
        return int(rng.integers(lo, hi + 1))
    first, last = -(-lo // step), hi // step
    if first > last:
        raise ValueError(f"no multiple of step={step} px lies in the side range ({lo}, {hi})")
    return step * int(rng.integers(first, last + 1))


def _colour(name: str) -> tuple[int, int, int]:
    if name not in COLOURS:
        raise ValueError(f"colour must be one of {sorted(COLOURS)}, got {name!r}")
    return COLOURS[name]


def _canvas(h: int, w: int, bg: list[int] | tuple[int, ...]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (w, h), tuple(int(c) for c in bg))
    return img, ImageDraw.Draw(img)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rgb: tuple) -> None:
    """Draw ``shape`` filling roughly the square [cx-r, cx+r] x [cy-r, cy+r]."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgb, width=max(1, round(r / 3)))
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
    elif shape == "cross":
        t = 0.32 * r
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=rgb)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=rgb)
    else:
        if shape == "triangle":
            pts = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
        elif shape == "diamond":
            pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        elif shape == "hexagon":
            pts = [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)]
        elif shape == "star":
            pts = []
            for k in range(10):
                rad = r if k % 2 == 0 else 0.45 * r
                a = -math.pi / 2 + k * math.pi / 5
                pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        else:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        draw.polygon(pts, fill=rgb)


def _bg(rng: np.random.Generator) -> list[int]:
    return [int(x) for x in rng.integers(215, 251, size=3)]


def _box(cx: int, cy: int, r: int, h: int, w: int) -> list[int]:
    """Pixel box [x0, y0, x1, y1] of an object, clipped to the image."""
    return [max(0, cx - r), max(0, cy - r), min(w, cx + r + 1), min(h, cy + r + 1)]


def boxes_to_units(boxes: list[list[int]], h: int, w: int, unit: int = 10) -> list[list[int]]:
    """Pixel boxes -> coarse boxes in ``1/unit`` of the width/height (ints 0..unit), the answer format: tenths by
    default, thirds (the 3x3 token grid) in the cpu world."""
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or unit < 1:
        raise ValueError(f"unit must be an int >= 1, got {unit!r}")
    out = []
    for x0, y0, x1, y1 in boxes:
        out.append([math.floor(unit * x0 / w), math.floor(unit * y0 / h), math.ceil(unit * x1 / w),
                    math.ceil(unit * y1 / h)])
    return out


def boxes_to_tenths(boxes: list[list[int]], h: int, w: int) -> list[list[int]]:
    """Pixel boxes -> coarse boxes in tenths of the width/height (ints 0..10)."""
    return boxes_to_units(boxes, h, w, 10)


# ---------------------------------------------------------------------------------------------- icons
def sample_icon_spec(rng: np.random.Generator, colour: str, shape: str, side: tuple[int, int], step: int = 1) -> dict:
    """Spec of one entity icon: its look plus size, position and background (the 'render'). Sides are multiples
    of ``step`` px."""
    lo, hi = _check_range("side", side)
    h, w = _draw_side(rng, lo, hi, step), _draw_side(rng, lo, hi, step)
    m = min(h, w)
    r = int(rng.integers(max(4, round(0.28 * m)), max(5, round(0.42 * m)) + 1))
    r = min(r, (m - 2) // 2)
    cx = int(rng.integers(r + 1, w - r)) if w - r > r + 1 else w // 2
    cy = int(rng.integers(r + 1, h - r)) if h - r > r + 1 else h // 2
    return {
        "kind": "icon",
        "colour": colour,
        "shape": shape,
        "h": h,
        "w": w,
        "cx": cx,
        "cy": cy,
        "r": r,
        "bg": _bg(rng),
    }


def render_icon(spec: dict) -> tuple[np.ndarray, dict]:
    """One object on a plain background -> (uint8 [H, W, 3], truth with its pixel box)."""
    h, w = _check_side("height", spec["h"]), _check_side("width", spec["w"])
    img, draw = _canvas(h, w, spec["bg"])
    _draw_shape(draw, spec["shape"], spec["cx"], spec["cy"], spec["r"], _colour(spec["colour"]))
    truth = {"colour": spec["colour"], "shape": spec["shape"], "box": _box(spec["cx"], spec["cy"], spec["r"], h, w)}
    return np.array(img, dtype=np.uint8), truth


# ---------------------------------------------------------------------------------------------- scenes
def sample_scene_spec(rng: np.random.Generator, looks: list[tuple[str, str]], side: tuple[int, int],
                      step: int = 1, grid: int = 0) -> dict:
    """Place ``looks`` (colour, shape) without overlap on a canvas of random size in ``side`` (sides multiples of
    ``step`` px). ``grid`` > 0 centres each object in its own cell of a ``grid`` x ``grid`` grid (distinct cells,
    radius 0.3-0.45 of a cell): with cells of one vision token, each token then holds one object or nothing."""
    lo, hi = _check_range("side", side)
    if len(looks) == 0:
        raise ValueError("looks must hold at least one (colour, shape)")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 0:
        raise ValueError(f"grid must be an int >= 0, got {grid!r}")
    if grid and len(looks) > grid * grid:
        raise ValueError(f"looks must hold at most grid*grid = {grid * grid} objects when grid={grid}, "
                         f"got {len(looks)}")
    h, w = _draw_side(rng, lo, hi, step), _draw_side(rng, lo, hi, step)
    if grid:
        cell = min(h, w) / grid
        r_lo, r_hi = max(3, round(0.3 * cell)), max(3, round(0.45 * cell))
        cells = rng.choice(grid * grid, size=len(looks), replace=False)
        objs = [[colour, shape, int((2 * (int(k) % grid) + 1) * w // (2 * grid)),
                 int((2 * (int(k) // grid) + 1) * h // (2 * grid)), int(rng.integers(r_lo, r_hi + 1))]
                for (colour, shape), k in zip(looks, cells)]
        return {"kind": "scene", "h": h, "w": w, "bg": _bg(rng), "objects": objs}
    m = min(h, w)
    scale = 0.16 if len(looks) <= 3 else 0.12
    for _ in range(50):  # shrink the objects until they fit
        objs: list[list] = []
        for colour, shape in looks:
            r = max(3, int(round(rng.uniform(0.75, 1.0) * scale * m)))
            for _try in range(60):
                cx, cy = int(rng.integers(r + 1, w - r)), int(rng.integers(r + 1, h - r))
                if all((cx - o[2]) ** 2 + (cy - o[3]) ** 2 > (r + o[4] + 2) ** 2 for o in objs):
                    objs.append([colour, shape, cx, cy, r])
                    break
            else:
                break
        if len(objs) == len(looks):
            return {"kind": "scene", "h": h, "w": w, "bg": _bg(rng), "objects": objs}
        scale *= 0.9
    raise ValueError(f"cannot place {len(looks)} objects in a {h}x{w} scene; lower max objects or raise side")


def render_scene(spec: dict) -> tuple[np.ndarray, dict]:
    """Several objects -> (uint8 [H, W, 3], truth: list of {colour, shape, box, cell})."""
    h, w = _check_side("height", spec["h"]), _check_side("width", spec["w"])
    img, draw = _canvas(h, w, spec["bg"])
    objects = []
    for colour, shape, cx, cy, r in spec["objects"]:
        _draw_shape(draw, shape, cx, cy, r, _colour(colour))
        cell = [min(2, 3 * cy // h), min(2, 3 * cx // w)]  # (row, col) in a 3x3 grid
        objects.append({"colour": colour, "shape": shape, "box": _box(cx, cy, r, h, w), "cell": cell})
    return np.array(img, dtype=np.uint8), {"objects": objects}


# ---------------------------------------------------------------------------------------------- OCR
def sample_text_spec(rng: np.random.Generator, text: str, max_zoom: int = 3, min_zoom: int = 1,
                     slot: int = 0) -> dict:
    """A word/number strip: zoom ``min_zoom..max_zoom`` of the bitmap font, margins, ink and paper colours.

    ``slot`` > 0 draws each character centred in its own ``slot``-px cell (after zoom) on a strip of two slots'
    height with a one-slot left margin: with ``slot`` = one vision token's side, character ``i`` sits in token
    column ``i + 1``. ``slot`` = 0 sets the text proportionally with random margins."""
    if not text or not text.isascii() or not text.isprintable():
        raise ValueError(f"text must be a non-empty printable ASCII string, got {text!r}")
    if isinstance(min_zoom, bool) or not isinstance(min_zoom, int) or not 1 <= min_zoom <= max_zoom:
        raise ValueError(f"zoom range must satisfy 1 <= min_zoom <= max_zoom, got {min_zoom}..{max_zoom}")
    if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
        raise ValueError(f"slot must be an int >= 0 (px), got {slot!r}")
    spec = {
        "kind": "text",
        "text": text,
        "zoom": int(rng.integers(min_zoom, max_zoom + 1)),
        "pad": [int(x) for x in rng.integers(2, 9, size=4)],  # top, right, bottom, left (px before zoom)
        "ink": [int(x) for x in rng.integers(0, 90, size=3)],
        "bg": _bg(rng),
    }
    if slot:
        spec["slot"] = slot
    return spec


def _render_slotted(spec: dict) -> np.ndarray:
    """Each character centred in its own ``slot`` x ``2*slot`` cell; one empty slot of margin on the left."""
    text, z, slot = spec["text"], int(spec["zoom"]), int(spec["slot"])
    h, w = 2 * slot, slot * (len(text) + 1)
    img, draw = _canvas(h, w, spec["bg"])
    for i, ch in enumerate(text):
        x0, y0, x1, y1 = _FONT.getbbox(ch)
        gw, gh = (x1 - x0) * z, (y1 - y0) * z
        if gw > slot or gh > h:
            raise ValueError(f"a zoom-{z} glyph ({gw}x{gh} px) does not fit a {slot}-px slot")
        glyph, gdraw = _canvas(y1 - y0, x1 - x0, spec["bg"])
        gdraw.text((-x0, -y0), ch, fill=tuple(spec["ink"]), font=_FONT)
        glyph = glyph.resize((gw, gh), Image.NEAREST)
        img.paste(glyph, (slot * (i + 1) + (slot - gw) // 2, (h - gh) // 2))
    return np.array(img, dtype=np.uint8)


def render_text(spec: dict) -> tuple[np.ndarray, dict]:
    """Rendered text strip (height ~ 11*zoom, width grows with the word) -> (uint8 [H, W, 3], truth)."""
    text = spec["text"]
    z = int(spec["zoom"])
    if z < 1:
        raise ValueError(f"zoom must be >= 1, got {z}")
    if spec.get("slot"):
        arr = _render_slotted(spec)
        _check_side("height", arr.shape[0])
        _check_side("width", arr.shape[1])
        return arr, {"text": text}
    x0, y0, x1, y1 = _FONT.getbbox(text)
    top, right, bottom, left = spec["pad"]
    # short strings (one digit) get extra right margin so the strip is at least one patch wide
    w0 = max((x1 - x0) + left + right, -(-MIN_SIDE // z))
    h0 = max(11 + top + bottom, -(-MIN_SIDE // z))
    img, draw = _canvas(h0, w0, spec["bg"])
    draw.text((left - x0, top), text, fill=tuple(spec["ink"]), font=_FONT)
    arr = np.array(img, dtype=np.uint8)
    arr = np.repeat(np.repeat(arr, z, axis=0), z, axis=1)  # nearest-neighbour zoom keeps glyphs crisp
    _check_side("height", arr.shape[0])
    _check_side("width", arr.shape[1])
    return np.ascontiguousarray(arr), {"text": text}


# ---------------------------------------------------------------------------------------------- charts
def sample_chart_spec(rng: np.random.Generator, colours: list[str], values: list[int], side: tuple[int, int],
                      step: int = 1, vmax: int = 9, grid: bool = False) -> dict:
    """A bar chart of ``values`` (0..``vmax``) in ``colours`` on a canvas of random size in ``side`` (at least 32
    px; sides multiples of ``step`` px). ``grid``: no margins, bar ``i`` centred in the ``i``-th equal column (with
    as many bars as token columns, one bar per column of vision tokens) and ``h / vmax`` px per unit."""
    lo, hi = _check_range("side", side)
    if len(colours) != len(values) or not values:
        raise ValueError(f"colours and values must have the same non-zero length, got {len(colours)}, {len(values)}")
    if isinstance(vmax, bool) or not isinstance(vmax, (int, np.integer)) or not 1 <= vmax <= 9:
        raise ValueError(f"vmax must be an int in 1..9, got {vmax!r}")
    for v in values:
        if not 0 <= int(v) <= vmax:
            raise ValueError(f"values must be ints in 0..{vmax}, got {values}")
    lo = max(lo, 32)  # ten gridlines need room
    hi = max(lo, hi)
    if step > 1 and hi // step * step < lo:
        hi = -(-lo // step) * step
    h, w = _draw_side(rng, lo, hi, step), _draw_side(rng, lo, hi, step)
    return {
        "kind": "chart",
        "h": h,
        "w": w,
        "bg": _bg(rng),
        "colours": list(colours),
        "values": [int(v) for v in values],
        **({"vmax": int(vmax), "grid": True} if grid or vmax != 9 else {}),
    }


def render_chart(spec: dict) -> tuple[np.ndarray, dict]:
    """Vertical bar chart on a 0..vmax grid (one gridline per unit; vmax 9 unless the spec says) ->
    (uint8 [H, W, 3], truth)."""
    h, w = _check_side("height", spec["h"]), _check_side("width", spec["w"])
    img, draw = _canvas(h, w, spec["bg"])
    vmax = int(spec.get("vmax", 9))
    if spec.get("grid"):  # no margins: bar i fills the middle of column i, h / vmax px per unit
        ml, mb, mt, mr = 0, 0, 0, 0
    else:
        ml, mb, mt, mr = 3, 3, 3, 2
    unit = (h - mb - mt) / float(vmax)
    base = h - mb
    for k in range(vmax + 1):  # gridlines: the model can count them to read a value
        y = min(h - 1, round(base - k * unit))
        draw.line([(ml, y), (w - 1 - mr, y)], fill=(170, 170, 170))
    n = len(spec["values"])
    slot = (w - ml - mr) / n
    for i, (c, v) in enumerate(zip(spec["colours"], spec["values"])):
        x0 = ml + i * slot + 0.2 * slot
        x1 = ml + (i + 1) * slot - 0.2 * slot - (1 if spec.get("grid") else 0)
        if v > 0:
            draw.rectangle([x0, round(base - v * unit), x1, min(h - 1, base)], fill=_colour(c))
    return np.array(img, dtype=np.uint8), {
        "bars": [{"colour": c, "value": v} for c, v in zip(spec["colours"], spec["values"])]
    }


# ---------------------------------------------------------------------------------------------- videos
def sample_video_spec(
    rng: np.random.Generator, colour: str, shape: str, direction: str, n_frames: int, side: tuple[int, int],
    step: int = 1, speed: int = 0,
) -> dict:
    """One object moving in ``direction`` for ``n_frames`` frames (1..16); constant speed; sides multiples of
    ``step`` px. ``speed`` > 0 fixes the px per frame (the object is then small enough, radius 0.1-0.15 of the
    side, for the whole path to fit); 0 draws it from the room there is."""
    lo, hi = _check_range("side", side)
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 1 <= n_frames <= 16:
        raise ValueError(f"n_frames must be an int in 1..16, got {n_frames!r}")
    if direction not in DIRECTIONS and direction != "still":
        raise ValueError(f"direction must be one of {list(DIRECTIONS) + ['still']}, got {direction!r}")
    if isinstance(speed, bool) or not isinstance(speed, (int, np.integer)) or speed < 0:
        raise ValueError(f"speed must be an int >= 0 (0: drawn), got {speed!r}")
    h, w = _draw_side(rng, lo, hi, step), _draw_side(rng, lo, hi, step)
    m = min(h, w)
    dx, dy = DIRECTIONS.get(direction, (0, 0))
    steps = max(1, n_frames - 1)
    if speed:
        r = max(3, int(round(rng.uniform(0.1, 0.15) * m)))
        if direction != "still" and speed * steps > (w if dx else h) - 2 * r - 4:
            raise ValueError(f"speed={speed} px over {n_frames} frames leaves a {w}x{h} frame; lower speed or frames")
    else:
        r = max(3, int(round(rng.uniform(0.12, 0.2) * m)))
    travel_room = (w if dx else h) - 2 * r - 4
    # fast enough to see (up to a sixth of the frame per step), slow enough to stay inside
    if direction == "still":
        speed = 0
    elif not speed:
        speed = int(max(1, min(travel_room // steps, max(2, m // 6))))
    travel = speed * steps if direction != "still" else 0
    # start so that the whole path stays inside the frame
    xs = (r + 2, w - r - 3) if dx == 0 else ((r + 2 + travel, w - r - 3) if dx < 0 else (r + 2, w - r - 3 - travel))
    ys = (r + 2, h - r - 3) if dy == 0 else ((r + 2 + travel, h - r - 3) if dy < 0 else (r + 2, h - r - 3 - travel))
    cx = int(rng.integers(xs[0], max(xs[0], xs[1]) + 1))
    cy = int(rng.integers(ys[0], max(ys[0], ys[1]) + 1))
    return {
        "kind": "video",
        "h": h,
        "w": w,
        "bg": _bg(rng),
        "colour": colour,
        "shape": shape,
        "r": r,
        "x": cx,
        "y": cy,
        "dx": dx * speed,
        "dy": dy * speed,
        "frames": int(n_frames),
        "direction": direction,
    }


def render_video(spec: dict) -> tuple[np.ndarray, dict]:
    """-> (uint8 [T, H, W, 3], truth with the object's centre in every frame)."""
    h, w = _check_side("height", spec["h"]), _check_side("width", spec["w"])
    frames, centres = [], []
    for t in range(spec["frames"]):
        cx, cy = spec["x"] + t * spec["dx"], spec["y"] + t * spec["dy"]
        img, draw = _canvas(h, w, spec["bg"])
        _draw_shape(draw, spec["shape"], cx, cy, spec["r"], _colour(spec["colour"]))
        frames.append(np.array(img, dtype=np.uint8))
        centres.append([int(cx), int(cy)])
    truth = {"colour": spec["colour"], "shape": spec["shape"], "direction": spec["direction"], "centres": centres}
    return np.stack(frames), truth
