"""Scorers for model answers. None of them raises on model output: garbage scores 0.

* ``exact``  - exact match after normalisation (case-insensitive unless ``case``), Table-1 style accuracy.
* ``count``  - ``max(0, 1 - |pred - gold| / max(gold, 1))``: partial credit by absolute difference.
* ``edit``   - ``1 - levenshtein / max(len)`` (OCR's normalised edit distance).
* ``iou_f1`` - boxes ``x0 y0 x1 y1`` (tenths) matched one-to-one at IoU >= 0.5; F1 of the matching.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "SCORERS",
    "normalize",
    "first_answer",
    "parse_number",
    "parse_boxes",
    "levenshtein",
    "box_iou",
    "score_exact",
    "score_count",
    "score_edit",
    "score_iou_f1",
    "score",
]

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
IOU_THRESHOLD = 0.5


def first_answer(prediction: Any) -> str:
    """The part of a model's output that is the answer: text before the first special token, first line."""
    if prediction is None:
        return ""
    s = prediction if isinstance(prediction, str) else str(prediction)
    s = s.split("<|", 1)[0]
    for line in s.splitlines():
        if line.strip():
            s = line
            break
    else:
        return ""
    s = s.strip()
    if s.startswith("A:"):  # a model that repeats the answer cue
        s = s[2:].strip()
    return s


def normalize(s: Any, case: bool = False) -> str:
    """Strip, collapse whitespace, drop wrapping quotes and a trailing full stop; lowercase unless ``case``."""
    s = first_answer(s)
    s = " ".join(s.split())
    s = s.strip("\"'`")
    if s.endswith(".") and not _NUM.fullmatch(s):
        s = s[:-1].rstrip()
    return s if case else s.lower()


def parse_number(s: Any) -> float | None:
    m = _NUM.search(first_answer(s))
    return float(m.group()) if m else None


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def parse_boxes(s: Any) -> list[list[float]]:
    """Every group of 4 numbers in the answer, in order; groups with x1<=x0 or y1<=y0 are dropped."""
    nums = [float(x) for x in _NUM.findall(first_answer(s))]
    out = []
    for k in range(0, len(nums) - 3, 4):
        x0, y0, x1, y1 = nums[k : k + 4]
        if x1 > x0 and y1 > y0:
            out.append([x0, y0, x1, y1])
    return out


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_exact(gold: str, prediction: Any, case: bool = False) -> float:
    return float(normalize(prediction, case) == normalize(gold, case) and normalize(gold, case) != "")


def score_count(gold: str, prediction: Any) -> float:
    g, p = parse_number(gold), parse_number(prediction)
    if g is None or p is None:
        return 0.0
    return max(0.0, 1.0 - abs(p - g) / max(abs(g), 1.0))


def score_edit(gold: str, prediction: Any) -> float:
    g, p = normalize(gold), normalize(prediction)
    if not g and not p:
        return 1.0
    return 1.0 - levenshtein(g, p) / max(len(g), len(p))


def score_iou_f1(gold_boxes: list[list[float]], prediction: Any) -> float:
    """Greedy one-to-one matching by IoU (highest first) at IoU >= 0.5; F1 = 2*matches / (n_pred + n_gold)."""
    pred = parse_boxes(prediction)
    if not gold_boxes:
        return float(not pred)
    if not pred:
        return 0.0
    pairs = sorted(((box_iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gold_boxes)), reverse=True)
    used_p, used_g, tp = set(), set(), 0
    for iou, i, j in pairs:
        if iou < IOU_THRESHOLD:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            tp += 1
    return 2.0 * tp / (len(pred) + len(gold_boxes))


SCORERS: tuple[str, ...] = ("exact", "count", "edit", "iou_f1")


def score(item: Any, prediction: Any) -> float:
    """Score ``prediction`` (model text) for an eval ``item`` -> float in [0, 1]; never raises on predictions."""
    kind = item.meta.get("scorer", "exact")
    if kind not in SCORERS:
        raise ValueError(f"item.meta['scorer'] must be one of {SCORERS}, got {kind!r}")
    try:
        if kind == "exact":
            s = score_exact(item.answer, prediction, case=bool(item.meta.get("case", False)))
        elif kind == "count":
            s = score_count(item.answer, prediction)
        elif kind == "edit":
            s = score_edit(item.answer, prediction)
        else:
            s = score_iou_f1(item.meta.get("boxes", []), prediction)
    except Exception:  # a model can write anything; a scorer crash must not end an eval
        return 0.0
    return float(min(1.0, max(0.0, s)))
