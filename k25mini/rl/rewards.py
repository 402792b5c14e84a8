"""Verifiable rewards for RL on the toy world (K2.5, arXiv 2602.02276 §4.4: rule-based outcome rewards).

The paper lists one rule per kind of visual task; each is here, on the world's answer formats:

* counting  - absolute difference: ``max(0, 1 - |pred - gold| / max(|gold|, 1))``;
* OCR       - normalised edit distance: ``1 - levenshtein / max(len)``;
* grounding - F1 with IoU *soft* matching: boxes are paired one-to-one to maximise the summed IoU, and
  ``F1 = 2 * sum(IoU of the pairs) / (n_pred + n_gold)`` (precision = sum / n_pred, recall = sum / n_gold);
* points    - the same with a Gaussian of the distance, ``exp(-d^2 / (2 sigma^2))``, as the similarity;
* charts and text - exact match after normalisation.

Unlike the evaluation scorer for boxes (:func:`k25mini.world.score_iou_f1`: greedy matching, a hard IoU >= 0.5
threshold, so Table-1-style accuracy stays comparable), the RL reward is soft: a box that is nearly right earns
nearly full credit, which gives the policy gradient a slope to follow. Every reward is in [0, 1] and none
raises on model output (garbage earns 0). :func:`format_reward` is 1 when the answer has the shape its task
asks for (a number, boxes, one of the choices, ...), whatever its correctness.

    r = reward(item, "3")                       # the outcome reward of one answer
    r = reward(item, text, format_weight=0.1)   # (1 - w) * outcome + w * format
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from k25mini.world.scoring import (
    _NUM,
    box_iou,
    first_answer,
    normalize,
    parse_boxes,
    parse_number,
    score_count,
    score_edit,
    score_exact,
)

__all__ = [
    "REWARD_KINDS",
    "optimal_assignment",
    "soft_f1",
    "parse_points",
    "count_reward",
    "ocr_reward",
    "exact_reward",
    "grounding_reward",
    "points_reward",
    "format_reward",
    "reward",
]

REWARD_KINDS: tuple[str, ...] = ("exact", "count", "edit", "iou_f1", "points")


def optimal_assignment(sim: Sequence[Sequence[float]]) -> tuple[list[tuple[int, int]], float]:
    """One-to-one pairs (row, column) of a rectangular similarity matrix with the largest summed similarity,
    and that sum (Hungarian algorithm with potentials, O(n^2 m)). Pairs of similarity 0 may be included."""
    n = len(sim)
    if n == 0:
        return [], 0.0
    m = len(sim[0])
    if any(len(r) != m for r in sim):
        raise ValueError("sim must be a rectangular matrix (every row the same length)")
    if m == 0:
        return [], 0.0
    vals = [[float(v) for v in r] for r in sim]
    if any(not math.isfinite(v) for r in vals for v in r):
        raise ValueError("sim must hold finite numbers")
    transpose = n > m  # the algorithm below wants rows <= columns
    if transpose:
        vals = [list(c) for c in zip(*vals)]
        n, m = m, n
    big = max((abs(v) for r in vals for v in r), default=0.0)
    cost = [[big - v for v in r] for r in vals]  # minimise cost == maximise similarity
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    match = [0] * (m + 1)  # match[j] = row (1-based) assigned to column j, 0 = free
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # augment along the alternating path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    pairs = [(match[j] - 1, j - 1) for j in range(1, m + 1) if match[j]]
    if transpose:
        pairs = [(c, r) for r, c in pairs]
    pairs.sort()
    total = sum(float(sim[r][c]) for r, c in pairs)
    return pairs, total


def soft_f1(sim: Sequence[Sequence[float]], n_pred: int, n_gold: int) -> float:
    """``2 * (best one-to-one summed similarity) / (n_pred + n_gold)``; 1 when both sides are empty."""
    if n_pred == 0 and n_gold == 0:
        return 1.0
    if n_pred == 0 or n_gold == 0:
        return 0.0
    _, total = optimal_assignment(sim)
    return 2.0 * total / (n_pred + n_gold)


def parse_points(s: Any) -> list[list[float]]:
    """Every pair of numbers in the answer, in order (an odd number out at the end is dropped)."""
    nums = [float(x) for x in _NUM.findall(first_answer(s))]
    return [nums[k : k + 2] for k in range(0, len(nums) - 1, 2)]


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if math.isfinite(x) else 0.0


def count_reward(gold: str, prediction: Any) -> float:
    """Absolute-difference reward for counting."""
    return _clip01(score_count(gold, prediction))


def ocr_reward(gold: str, prediction: Any) -> float:
    """Normalised edit-distance reward for OCR."""
    return _clip01(score_edit(gold, prediction))


def exact_reward(gold: str, prediction: Any, case: bool = False) -> float:
    """Exact match after normalisation (charts, text, multiple choice)."""
    return _clip01(score_exact(gold, prediction, case))


def grounding_reward(gold_boxes: Sequence[Sequence[float]], prediction: Any) -> float:
    """F1 with IoU soft matching (boxes ``x0 y0 x1 y1``; a gold list may be empty: then 'no box' scores 1)."""
    pred = parse_boxes(prediction)
    gold = [list(map(float, b)) for b in gold_boxes]
    return _clip01(soft_f1([[box_iou(p, g) for g in gold] for p in pred], len(pred), len(gold)))


def points_reward(gold_points: Sequence[Sequence[float]], prediction: Any, sigma: float = 1.0) -> float:
    """Gaussian-distance soft matching under the optimal one-to-one matching: similarity
    ``exp(-d^2 / (2 sigma^2))``, F1 as :func:`soft_f1` (``sigma`` in the answer's units, tenths of the image)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    pred = parse_points(prediction)
    gold = [list(map(float, p)) for p in gold_points]

    def sim(p, g) -> float:
        return math.exp(-((p[0] - g[0]) ** 2 + (p[1] - g[1]) ** 2) / (2.0 * sigma * sigma))

    return _clip01(soft_f1([[sim(p, g) for g in gold] for p in pred], len(pred), len(gold)))


def _kind(item: Any) -> str:
    meta = getattr(item, "meta", None)
    if not isinstance(meta, dict):
        raise ValueError(f"item must be a world Item with a meta dict, got {type(item).__name__}")
    kind = meta.get("scorer", "exact")
    if kind not in REWARD_KINDS:
        raise ValueError(f"item.meta['scorer'] must be one of {REWARD_KINDS}, got {kind!r}")
    return kind


def format_reward(item: Any, prediction: Any) -> float:
    """1 if the answer has its task's shape, else 0: a number (count), at least one well-formed box or an
    explicit 'none' (grounding), pairs of numbers (points), one of ``meta['choices']`` when the item lists
    them (exact), a non-empty line otherwise. Correctness is not checked."""
    kind = _kind(item)
    ans = first_answer(prediction)
    if not ans.strip():
        return 0.0
    if kind == "count":
        return float(parse_number(ans) is not None)
    if kind == "iou_f1":
        return float(bool(parse_boxes(ans)) or normalize(ans) == "none")
    if kind == "points":
        return float(bool(parse_points(ans)))
    choices = item.meta.get("choices")
    if kind == "exact" and choices:
        return float(normalize(ans) in {normalize(str(c)) for c in choices})
    return 1.0


def reward(item: Any, prediction: Any, format_weight: float = 0.0, sigma: float = 1.0) -> float:
    """The outcome reward of ``prediction`` (model text) for a world ``item``, by ``item.meta['scorer']``:
    ``(1 - format_weight) * outcome + format_weight * format_reward``. In [0, 1]; never raises on predictions."""
    if isinstance(format_weight, bool) or not isinstance(format_weight, (int, float)) or not 0 <= format_weight <= 1:
        raise ValueError(f"format_weight must be a number in [0, 1], got {format_weight!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    kind = _kind(item)
    try:
        if kind == "count":
            r = count_reward(item.answer, prediction)
        elif kind == "edit":
            r = ocr_reward(item.answer, prediction)
        elif kind == "iou_f1":
            r = grounding_reward(item.meta.get("boxes", []), prediction)
        elif kind == "points":
            r = points_reward(item.meta.get("points", []), prediction, sigma)
        else:
            r = exact_reward(item.answer, prediction, case=bool(item.meta.get("case", False)))
        f = format_reward(item, prediction) if format_weight else 0.0
    except Exception:  # a model can write anything (huge numbers, odd bytes); the reward of garbage is 0
        return 0.0
    return _clip01((1.0 - format_weight) * r + format_weight * f)
