"""The six eval suites of Table 1 on held-out items, and their chance baselines."""

from __future__ import annotations

import functools

import numpy as np

from k25mini.scale import current_scale, validate_scale
from k25mini.world.items import SUITES, Item, check_suite
from k25mini.world.rng import rng_for
from k25mini.world.scoring import score
from k25mini.world.skills import SUITE_SKILLS
from k25mini.world.world import World, check_seed

__all__ = ["make_eval_suite", "make_all_evals", "random_guess", "chance_baseline", "chance_by_skill", "SUITES"]

_CHANCE_GUESSES = 16


def make_eval_suite(world: World, suite: str, n: int | None = None) -> list[Item]:
    """``n`` held-out items of ``suite`` (default: the fixed count for the world's scale).

    Skills are mixed round-robin (``SUITE_SKILLS``), so the mix is the same at every size; items are
    unique by content key when the held-out pool allows it.
    """
    check_suite(suite)
    n = world.sizes.eval_items if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    skills = SUITE_SKILLS[suite]
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for i in range(int(n)):
        skill = skills[i % len(skills)]
        for attempt in range(20):
            item = world.sample(skill, "eval", rng_for(world.seed, "eval", suite, i, attempt))
            ident = (item.meta["key"], item.prompt)
            if ident not in seen:
                break
        seen.add(ident)
        item.suite = suite
        item.meta["index"] = i
        items.append(item)
    return items


def make_all_evals(world: World, n: int | None = None) -> dict[str, list[Item]]:
    return {s: make_eval_suite(world, s, n) for s in SUITES}


def random_guess(item: Item, rng: np.random.Generator) -> str:
    """A uniformly random well-formed answer from the item's answer domain (the chance-level model)."""
    m = item.meta
    if "choices" in m:
        return str(m["choices"][int(rng.integers(len(m["choices"])))])
    if m.get("scorer") == "iou_f1":
        out = []
        for _ in range(max(1, len(m.get("boxes", [])))):
            x0, x1 = sorted(int(v) for v in rng.choice(11, size=2, replace=False))
            y0, y1 = sorted(int(v) for v in rng.choice(11, size=2, replace=False))
            out.append(f"{x0} {y0} {x1} {y1}")
        return "; ".join(out)
    if "alphabet" in m:
        letters = m["alphabet"]
        n = len(item.answer.replace(" ", ""))
        word = "".join(letters[int(rng.integers(len(letters)))] for _ in range(n))
        return " ".join(word) if " " in item.answer else word
    if "range" in m:
        lo, hi = m["range"]
        return str(int(rng.integers(lo, hi + 1)))
    raise ValueError(f"item.meta has no answer domain (choices/range/alphabet/boxes): skill {m.get('skill')!r}")


def _item_chances(suite: str, seed: int, scale: str, n: int | None) -> list[tuple[str, float]]:
    """(skill, expected score of random well-formed answers) for each item of the suite, in order."""
    world = World(seed=seed, scale=scale)
    items = make_eval_suite(world, suite, n)
    rng = rng_for(seed, "chance", suite)
    out = []
    for it in items:
        guesses = sum(score(it, random_guess(it, rng)) for _ in range(_CHANCE_GUESSES))
        out.append((it.meta["skill"], guesses / _CHANCE_GUESSES))
    return out


@functools.lru_cache(maxsize=64)
def _chance(suite: str, seed: int, scale: str, n: int | None) -> float:
    rows = _item_chances(suite, seed, scale, n)
    return sum(c for _, c in rows) / len(rows) if rows else 0.0


def _check_n(n):
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be None (the scale's eval size) or an int >= 1, got {n!r}")
    return None if n is None else int(n)


def chance_baseline(suite: str, seed: int = 0, scale: str | None = None, n: int | None = None) -> float:
    """Expected score of random well-formed answers on the suite (Monte Carlo, fixed seed, deterministic).
    ``n``: the suite's size, as passed to :func:`make_eval_suite` (default: the scale's eval size)."""
    check_suite(suite)
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    return _chance(suite, check_seed(seed), sc, _check_n(n))


def chance_by_skill(suite: str, seed: int = 0, scale: str | None = None, n: int | None = None) -> dict[str, float]:
    """:func:`chance_baseline` per skill of the suite (the items of each skill only)."""
    check_suite(suite)
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    groups: dict[str, list[float]] = {}
    for skill, c in _item_chances(suite, check_seed(seed), sc, _check_n(n)):
        groups.setdefault(skill, []).append(c)
    return {k: sum(v) / len(v) for k, v in groups.items()}
