"""Code that answers a visual question through the code tool: the programs of chapter 06's trajectories.

A *program* is short Python that, run in the sandboxed kernel (:mod:`k25mini.tools`) where the question's image
is the array ``image`` (a video: ``frames``) and the helpers of :mod:`k25mini.tools.helpers` are loaded, prints
the answer. :func:`program_for` reads the question text (never the image or the truth) and writes the program
in a ``concise`` (one expression) and a ``verbose`` (named steps) style, or returns None when the question is
one no short colour-based program answers (shape counts, OCR, who-is-this, boxes).

The kernel also gets :func:`palette_setup`: every world colour as a named RGB tuple (``red``, ``blue`` ...)
that prints as its name, and ``COLOURS``, the list of them; so ``print(max(red, blue, key=...))`` prints
``red``. That is a fact about the world's palette (as a person would know what "red" means), not about any
one image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from k25mini.world.render import COLOURS

__all__ = ["Program", "program_for", "palette_setup", "all_programs", "PROGRAM_KINDS"]


@dataclass(frozen=True)
class Program:
    """``kind`` (which question form), and its code in two styles."""

    kind: str
    concise: str
    verbose: str

    def code(self, style: str) -> str:
        if style not in ("concise", "verbose"):
            raise ValueError(f"style must be 'concise' or 'verbose', got {style!r}")
        return self.concise if style == "concise" else self.verbose


def palette_setup() -> str:
    """Setup code for an episode's kernel: the world's colours as named tuples (they print as their names)."""
    lines = [
        "class Colour(tuple):",
        "    def __new__(cls, name, rgb):",
        "        c = super().__new__(cls, rgb)",
        "        c.name = name",
        "        return c",
        "    def __str__(self):",
        "        return self.name",
        "    __repr__ = __str__",
    ]
    for name, rgb in COLOURS.items():
        lines.append(f"{name} = Colour({name!r}, {tuple(int(v) for v in rgb)!r})")
    lines.append(f"COLOURS = [{', '.join(COLOURS)}]")
    return "\n".join(lines)


_COL = "|".join(COLOURS)
_FORMS: list[tuple[str, re.Pattern]] = [
    ("count_colour", re.compile(rf"How many ({_COL}) objects\?")),
    ("compare", re.compile(rf"More ({_COL}) or ({_COL})\?")),
    ("locate", re.compile(rf"Which cell holds the ({_COL}) [a-z]+\?")),
    ("chart_value", re.compile(rf"Value of the ({_COL}) bar\?")),
    ("chart_max", re.compile(r"Which bar is tallest\?")),
    ("motion", re.compile(r"Which way does it move\?")),
]
PROGRAM_KINDS: tuple[str, ...] = tuple(k for k, _ in _FORMS)


def _question(prompt: str) -> str:
    """The question of a world prompt (``... Q: <question> A:``)."""
    m = re.search(r"Q: (.*?) A:\s*$", re.sub(r"\s*<\|media_begin\|>.*?<\|media_end\|>\s*", " ", prompt))
    return m.group(1) if m else prompt.strip()


def program_for(prompt: str) -> Program | None:
    """The program answering the question in ``prompt`` (a world prompt or just its question), or None."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    q = _question(prompt)
    for kind, pat in _FORMS:
        m = pat.fullmatch(q)
        if m is None:
            continue
        if kind == "count_colour":
            c = m.group(1)
            return Program(kind, f"print(count_components(color_mask(image, {c})))",
                           f"mask = color_mask(image, {c})\nn = count_components(mask)\nprint(n)")
        if kind == "compare":
            a, b = m.group(1), m.group(2)
            return Program(kind, f"print(max({a}, {b}, key=lambda c: count_components(color_mask(image, c))))",
                           f"na = count_components(color_mask(image, {a}))\n"
                           f"nb = count_components(color_mask(image, {b}))\nprint({a} if na > nb else {b})")
        if kind == "locate":
            c = m.group(1)
            return Program(kind, f"print(*cell_of(color_mask(image, {c})))",
                           f"mask = color_mask(image, {c})\nrow, col = cell_of(mask)\nprint(row, col)")
        if kind == "chart_value":
            c = m.group(1)
            return Program(kind, f"print(round(color_mask(image, {c}).any(1).sum() / chart_unit(image)))",
                           f"rows = color_mask(image, {c}).any(1).sum()\nunit = chart_unit(image)\n"
                           "print(round(rows / unit))")
        if kind == "chart_max":
            return Program(kind, "print(max(COLOURS, key=lambda c: color_mask(image, c).any(1).sum()))",
                           "heights = {c: color_mask(image, c).any(1).sum() for c in COLOURS}\n"
                           "print(max(heights, key=heights.get))")
        if kind == "motion":
            return Program(kind, "print(heading(*step(frames)))",
                           "dx, dy = step(frames)\nprint(heading(dx, dy))")
    return None


def all_programs() -> list[str]:
    """Every program :func:`program_for` can write (both styles), for checks and for the trusted local runner."""
    qs = [f"How many {c} objects?" for c in COLOURS]
    qs += [f"More {a} or {b}?" for a in COLOURS for b in COLOURS if a != b]
    qs += [f"Which cell holds the {c} circle?" for c in COLOURS]
    qs += [f"Value of the {c} bar?" for c in COLOURS]
    qs += ["Which bar is tallest?", "Which way does it move?"]
    out = []
    for q in qs:
        p = program_for(q)
        assert p is not None, q
        out += [p.concise, p.verbose]
    return out
