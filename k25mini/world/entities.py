"""Entities ("creatures") with attributes, a visual look, and short encyclopedia pages about them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from k25mini.world.render import COLOURS, SHAPES

__all__ = [
    "article",
    "Entity",
    "REGIONS",
    "ATTRIBUTES",
    "make_entities",
    "entity_page",
    "region_page",
    "fact_sentences",
]

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "hills", "coast")
# attributes a page states (and TextKnow asks about); colour/shape are also the entity's look
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "region", "weight", "speed", "friend")
_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
MAX_ENTITIES = len(COLOURS) * len(SHAPES)  # every entity has its own (colour, shape) look


@dataclass(frozen=True)
class Entity:
    name: str  # "Bolo"
    colour: str
    shape: str
    region: str
    weight: int  # kg, 1..50
    speed: int  # km/h, 1..20
    friend: str  # another entity's name

    def value(self, attr: str) -> str:
        if attr not in ATTRIBUTES and attr != "name":
            raise ValueError(f"attr must be one of {('name',) + ATTRIBUTES}, got {attr!r}")
        return str(getattr(self, attr))

    @property
    def look(self) -> tuple[str, str]:
        return (self.colour, self.shape)


def _names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct two-syllable names (consonant-vowel pairs): short and easy to spell."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        s = "".join(rng.choice(list(_CONS)) + rng.choice(list(_VOWELS)) for _ in range(2))
        if s not in seen:
            seen.add(s)
            names.append(s.capitalize())
    return names


def make_entities(rng: np.random.Generator, n: int, even_looks: bool = False) -> list[Entity]:
    """``n`` entities, each with a unique look and a friend (never itself). ``even_looks`` (n <= 16) spreads the
    looks evenly: up to 8 entities share no colour and no shape; up to 16, each colour and each shape is worn by
    at most two (so an icon is recognised by its colour *and* its shape). Otherwise looks are drawn at random."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= MAX_ENTITIES:
        raise ValueError(f"n_entities must be an int in 2..{MAX_ENTITIES}, got {n!r}")
    names = _names(rng, n)
    k = min(len(COLOURS), len(SHAPES))
    if even_looks:
        if n > 2 * k:
            raise ValueError(f"even_looks needs n_entities <= {2 * k}, got {n}")
        # few entities: looks spread evenly (no colour or shape on more than ceil(n / 8) entities)
        cols, shs = rng.permutation(len(COLOURS))[:k], rng.permutation(len(SHAPES))[:k]
        # entity i: colour i mod k, shape (i + i // k) mod k -> the second round pairs each colour with another shape
        looks = [(list(COLOURS)[int(cols[i % k])], SHAPES[int(shs[(i + i // k) % k])]) for i in range(n)]
        order = np.arange(n)
    else:
        looks = [(c, s) for c in COLOURS for s in SHAPES]
        order = rng.permutation(len(looks))[:n]
    friends = rng.integers(0, n - 1, size=n)
    out = []
    for i, name in enumerate(names):
        f = int(friends[i]) + (1 if friends[i] >= i else 0)  # skip self
        colour, shape = looks[int(order[i])]
        out.append(
            Entity(
                name=name,
                colour=colour,
                shape=shape,
                region=REGIONS[int(rng.integers(len(REGIONS)))],
                weight=int(rng.integers(1, 51)),
                speed=int(rng.integers(1, 21)),
                friend=names[f],
            )
        )
    return out


def article(word: str) -> str:
    """'a' or 'an' before ``word``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def fact_sentences(e: Entity) -> list[str]:
    """One short sentence per attribute, in ATTRIBUTES order (colour and shape share one)."""
    return [
        f"{e.name} is {article(e.colour)} {e.colour} {e.shape}.",
        f"{e.name} lives in the {e.region}.",
        f"{e.name} weighs {e.weight} kg.",
        f"{e.name} runs at {e.speed} km/h.",
        f"{e.name}'s friend is {e.friend}.",
    ]


def entity_page(e: Entity, order: list[int] | None = None) -> str:
    """The encyclopedia page: title line, then the facts (optionally in another sentence order)."""
    s = fact_sentences(e)
    if order is not None:
        s = [s[i] for i in order]
    return f"{e.name}\n" + " ".join(s)


def region_page(region: str, members: list[Entity]) -> str:
    names = ", ".join(e.name for e in members) if members else "none"
    return f"The {region}\nCreatures of the {region}: {names}."
