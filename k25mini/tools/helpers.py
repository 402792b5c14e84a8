"""Image helpers preloaded into every code-tool kernel (numpy only; no scipy, no torch).

The sandbox sends this file's source to the kernel at start, so inside the tool the model can call, e.g.::

    g = to_gray(image); m = threshold(g); count_components(m)
    bar_heights(color_mask(image, (200, 40, 40)))
    show(crop(image, 0, 0, 24, 24))     # hand an image back to the model as an observation

Every helper takes and returns plain numpy arrays / Python numbers and is importable outside the sandbox too
(``k25mini.tools.helpers``), which is how the tests check them. ``HELPERS`` lists them with one line each.
"""

from __future__ import annotations

import base64
import io

import numpy as np

SHOW_MIME = "application/x-k25mini-npy"  # display_data type for images handed back to the model


def _as_array(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    return x


def crop(img, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels ``img[y0:y1, x0:x1]`` (x = column, y = row; end exclusive), bounds clipped to the image."""
    img = _as_array(img, "img")
    h, w = img.shape[:2]
    x0, x1 = max(0, int(x0)), min(w, int(x1))
    y0, y1 = max(0, int(y0)), min(h, int(y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop: x {x0}..{x1}, y {y0}..{y1} of a {w}x{h} image")
    return img[y0:y1, x0:x1].copy()


def to_gray(img) -> np.ndarray:
    """Float luminance in [0, 255] (ITU-R 601 weights); a 2-D input is returned as float."""
    img = _as_array(img, "img").astype(np.float64)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] >= 3:
        return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    raise ValueError(f"img must be HxW or HxWx3(+), got shape {img.shape}")


def threshold(img, t: float | None = None, dark: bool = True) -> np.ndarray:
    """Boolean mask of foreground pixels: darker than ``t`` (``dark=True``) or brighter. ``t`` defaults to the
    midpoint between the darkest and brightest grey level."""
    g = to_gray(img)
    if t is None:
        t = (float(g.min()) + float(g.max())) / 2.0
    return g < t if dark else g > t


def color_mask(img, rgb, tol: float = 30.0) -> np.ndarray:
    """Boolean mask of pixels within ``tol`` (max abs difference per channel) of colour ``rgb``."""
    img = _as_array(img, "img")
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"img must be HxWx3, got shape {img.shape}")
    ref = np.asarray(rgb, dtype=np.float64).reshape(1, 1, -1)[..., :3]
    return np.abs(img[..., :3].astype(np.float64) - ref).max(axis=-1) <= tol


def unique_colors(img, top: int = 8) -> list[tuple[tuple[int, ...], int]]:
    """The ``top`` most frequent colours as ``((r, g, b), pixel_count)``, most frequent first."""
    img = _as_array(img, "img")
    flat = img.reshape(-1, img.shape[-1]) if img.ndim == 3 else img.reshape(-1, 1)
    colors, counts = np.unique(flat, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[: int(top)]
    return [(tuple(int(v) for v in colors[i]), int(counts[i])) for i in order]


def label_components(mask, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: ``(labels, n)``; labels 1..n, 0 for background.

    A vectorised flood fill: every foreground pixel starts with its own index and repeatedly takes the minimum
    over its neighbours, with pointer jumping (``lab = lab[lab]``) so long thin shapes converge quickly.
    """
    mask = np.asarray(_as_array(mask, "mask"), dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    offsets = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        offsets += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    pad = np.full((h + 2, w + 2), big, dtype=lab.dtype)
    while True:
        pad[1:-1, 1:-1] = lab
        best = lab
        for dy, dx in offsets:
            best = np.minimum(best, pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        new = np.where(mask, best, big)
        flat = new.reshape(-1)
        fg = flat < big
        flat[fg] = flat[flat[fg]]  # pointer jumping: a label is a pixel index of the same component
        if np.array_equal(new, lab):
            break
        lab = new
    roots, labels = np.unique(lab[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int64)
    out[mask] = labels + 1
    return out, int(len(roots))


def count_components(mask, connectivity: int = 4, min_size: int = 1) -> int:
    """How many connected blobs of at least ``min_size`` pixels the boolean mask holds."""
    labels, n = label_components(mask, connectivity)
    if n == 0 or min_size <= 1:
        return n
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
    return int((sizes >= min_size).sum())


def bar_heights(mask) -> list[int]:
    """Heights in pixels of the vertical bars in a boolean mask, left to right: each run of adjacent columns
    holding foreground is one bar, its height the largest foreground count of its columns."""
    mask = np.asarray(_as_array(mask, "mask"), dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    cols = mask.sum(axis=0)
    heights, cur = [], 0
    for c in cols.tolist() + [0]:
        if c > 0:
            cur = max(cur, c)
        elif cur:
            heights.append(int(cur))
            cur = 0
    return heights


def foreground(img, tol: float = 40.0) -> np.ndarray:
    """Boolean mask of pixels that differ from the background colour (the top-left pixel) by more than ``tol``
    (summed abs difference over the channels)."""
    img = _as_array(img, "img")
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"img must be HxWx3, got shape {img.shape}")
    diff = np.abs(img[..., :3].astype(np.int64) - img[0, 0, :3].astype(np.int64)).sum(axis=-1)
    return diff > tol


def centroid(mask) -> tuple[float, float]:
    """``(x, y)`` mean position of the foreground pixels of a boolean mask (x = column, y = row)."""
    mask = np.asarray(_as_array(mask, "mask"), dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("centroid of an empty mask")
    return float(xs.mean()), float(ys.mean())


def chart_unit(img, rgb=(170, 170, 170)) -> float:
    """Pixels per unit of a bar chart: the mean spacing of its horizontal gridlines (rows where more than a quarter
    of the pixels have the gridline colour ``rgb``), so ``bar rows / chart_unit(img)`` is a bar's value."""
    g = np.flatnonzero(color_mask(img, rgb).sum(axis=1) > np.asarray(img).shape[1] // 4)
    if len(g) < 2:
        raise ValueError(f"chart_unit: fewer than two gridlines of colour {tuple(rgb)} found")
    return float(g[-1] - g[0]) / (len(g) - 1)


def cell_of(mask, n: int = 3) -> tuple[int, int]:
    """``(row, col)`` of the cell holding the centre of the mask's bounding box, in an ``n`` x ``n`` grid laid over
    the image (row 0 at the top, col 0 at the left)."""
    mask = np.asarray(_as_array(mask, "mask"), dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("cell_of an empty mask")
    h, w = mask.shape
    cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
    return min(n - 1, n * cy // h), min(n - 1, n * cx // w)


def step(frames) -> tuple[float, float]:
    """``(dx, dy)``: how far the foreground's centroid moves from the first frame to the last (x right, y down)."""
    frames = _as_array(frames, "frames")
    if frames.ndim != 4:
        raise ValueError(f"frames must be TxHxWx3, got shape {frames.shape}")
    x0, y0 = centroid(foreground(frames[0]))
    x1, y1 = centroid(foreground(frames[-1]))
    return x1 - x0, y1 - y0


def heading(dx: float, dy: float) -> str:
    """The compass word of a move in image coordinates: 'left', 'right', 'up' or 'down' (the larger axis wins)."""
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def show(img) -> None:
    """Hand an image (HxW or HxWx3 uint8, or a bool mask) back to the model as an observation image."""
    img = _as_array(img, "img")
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"show() takes HxW / HxWx3 uint8 or bool arrays, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(img), allow_pickle=False)
    from IPython.display import display  # only inside the kernel

    display({SHOW_MIME: base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": f"<image {img.shape}>"},
            raw=True)


HELPERS = {
    "crop": "crop(img, x0, y0, x1, y1) -> img[y0:y1, x0:x1]",
    "to_gray": "to_gray(img) -> float HxW luminance",
    "threshold": "threshold(img, t=None, dark=True) -> bool mask",
    "color_mask": "color_mask(img, rgb, tol=30) -> bool mask of pixels near a colour",
    "unique_colors": "unique_colors(img, top=8) -> [((r, g, b), count), ...]",
    "label_components": "label_components(mask, connectivity=4) -> (labels, n)",
    "foreground": "foreground(img, tol=40) -> bool mask of pixels unlike the top-left (background) pixel",
    "centroid": "centroid(mask) -> (x, y) mean foreground position",
    "cell_of": "cell_of(mask, n=3) -> (row, col) of the mask's box centre in an n x n grid",
    "step": "step(frames) -> (dx, dy) move of the foreground centroid, first frame to last",
    "heading": "heading(dx, dy) -> 'left' | 'right' | 'up' | 'down'",
    "count_components": "count_components(mask, connectivity=4, min_size=1) -> int",
    "bar_heights": "bar_heights(mask) -> heights of vertical bars, left to right",
    "chart_unit": "chart_unit(img) -> pixels per unit of a bar chart (its gridline spacing)",
    "show": "show(img) -> hand an image back to the model",
}
