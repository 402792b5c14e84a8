"""Worked solutions of the world's arithmetic questions, in three lengths: the data that gives Toggle room to move.

Toggle (K2.5, arXiv 2602.02276 §4.4) shortens responses only if the policy *can* answer at more than one length.
The world's ``arith`` questions (``Q: 4 * 5 + 7 = ? A:``, Python precedence) are answered here in three styles,
all ending in ``answer <n>``:

* ``verbose``  - ``4 * 5 + 7: first 4 * 5 = 20, then 20 + 7 = 27. answer 27`` (restates the question);
* ``concise``  - ``4 * 5 = 20, 20 + 7 = 27, answer 27`` (the same two steps, nothing else);
* ``terse``    - ``answer 27`` (no steps: the model must add and multiply "in its head").

The verbose and concise styles carry the same information, so a model can drop the restatement for free; the
terse style removes the intermediate results, which a small model needs. :func:`worked_reward` is the outcome
reward: 1 when the response ends in ``answer <n>`` with the right ``n``, else 0 (a missing or malformed ending
scores 0, whatever came before).

    traj = worked_trajectory(item, "concise")       # an SFT row (direct answer, no tool)
    worked_reward(item, "2 + 9 = 11, 11 + 0 = 11, answer 11")   # 1.0 when item.answer == "11"
"""

from __future__ import annotations

import re

from k25mini.sft.trajectories import Trajectory
from k25mini.world import Item

__all__ = ["WORKED_STYLES", "arith_expression", "arith_steps", "worked_solution", "worked_trajectory",
           "final_answer", "worked_reward", "response_style"]

WORKED_STYLES: tuple[str, ...] = ("verbose", "concise", "terse")
_EXPR = re.compile(r"^Q: (-?\d+) ([-+*]) (-?\d+) ([-+*]) (-?\d+) = \? A:$")
_FINAL = re.compile(r"(?:^|[ ,.])answer (-?\d+)$")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def arith_expression(item: Item) -> str:
    """``"4 * 5 + 7"`` from an ``arith`` item's prompt; ValueError for any other item."""
    if not isinstance(item, Item):
        raise ValueError(f"item must be a world Item, got {type(item).__name__}")
    m = _EXPR.match(item.prompt)
    if item.meta.get("skill") != "arith" or m is None:
        raise ValueError(f"item must be an 'arith' item ('Q: a op b op c = ? A:'), got {item.prompt[:60]!r}")
    return " ".join(m.groups())


def arith_steps(expr: str) -> tuple[list[tuple[str, int]], int]:
    """The two steps of ``"a o1 b o2 c"`` in evaluation order (``*`` before ``+``/``-``, else left to right), as
    ``[(sub-expression, value), ...]``, and the result."""
    parts = expr.split() if isinstance(expr, str) else []
    if len(parts) != 5 or parts[1] not in "+-*" or parts[3] not in "+-*" or len(parts[1]) != 1 or len(parts[3]) != 1:
        raise ValueError(f"expr must look like 'a op b op c' with op in + - *, got {expr!r}")
    try:
        a, b, c = int(parts[0]), int(parts[2]), int(parts[4])
    except ValueError:
        raise ValueError(f"expr must have integer operands, got {expr!r}") from None
    o1, o2 = parts[1], parts[3]
    if o2 == "*" and o1 != "*":  # b * c binds first
        t = _apply(b, "*", c)
        r = _apply(a, o1, t)
        return [(f"{b} * {c}", t), (f"{a} {o1} {t}", r)], r
    t = _apply(a, o1, b)
    r = _apply(t, o2, c)
    return [(f"{a} {o1} {b}", t), (f"{t} {o2} {c}", r)], r


def worked_solution(item: Item, style: str) -> str:
    """The response text of ``style`` (one of :data:`WORKED_STYLES`) for an ``arith`` item; its final answer is
    checked against ``item.answer``."""
    if style not in WORKED_STYLES:
        raise ValueError(f"style must be one of {WORKED_STYLES}, got {style!r}")
    expr = arith_expression(item)
    steps, r = arith_steps(expr)
    if str(r) != item.answer:
        raise ValueError(f"the steps of {expr!r} give {r}, but the item's answer is {item.answer!r}")
    if style == "terse":
        return f"answer {r}"
    if style == "concise":
        return ", ".join(f"{e} = {v}" for e, v in steps) + f", answer {r}"
    (e1, v1), (e2, v2) = steps
    return f"{expr}: first {e1} = {v1}, then {e2} = {v2}. answer {r}"


def worked_trajectory(item: Item, style: str) -> Trajectory:
    """An SFT row: the item's prompt, then :func:`worked_solution` as the assistant's direct answer."""
    text = worked_solution(item, style)
    row = Item(item.suite, item.prompt, [], text, {**item.meta, "final": item.answer})
    return Trajectory(row, meta={"source": "worked", "skill": item.meta.get("skill"), "style": style,
                                 "kind": "direct"})


def final_answer(text: str) -> str | None:
    """The ``n`` of a response ending in ``answer <n>`` (surrounding whitespace ignored), else None."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    m = _FINAL.search(text.strip())
    return None if m is None else m.group(1)


def worked_reward(item: Item, text: str) -> float:
    """1.0 when the response's final answer equals ``item.answer``, else 0.0."""
    return float(final_answer(text) == item.answer)


def response_style(text: str) -> str:
    """Which style a response looks like: ``verbose`` (restates the question), ``concise`` (steps, no
    restatement), ``terse`` (only the answer) or ``other``."""
    t = text.strip()
    if final_answer(t) is None:
        return "other"
    if ": first " in t:
        return "verbose"
    if t.startswith("answer "):
        return "terse"
    return "concise" if " = " in t else "other"
