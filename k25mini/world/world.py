"""The World: entities + encyclopedia + every skill, all derived from one seed."""

from __future__ import annotations

import numpy as np

from k25mini.scale import current_scale, validate_scale
from k25mini.world.entities import ATTRIBUTES, REGIONS, Entity, entity_page, make_entities, region_page
from k25mini.world.items import Item
from k25mini.world.rng import check_split, in_heldout, rng_for
from k25mini.world.sizes import WorldSizes, sizes
from k25mini.world.skills import SKILLS

__all__ = ["World", "HELDOUT_FRAC", "check_seed"]

HELDOUT_FRAC = 0.2  # share of content keys (renders, words, prompts) reserved for eval
_MAX_DRAWS = 2000


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


class World:
    """A seeded toy world. ``World(seed=0)`` at the current ``K25_SCALE``; ``n_entities`` overrides the size.

    * ``entities`` / ``entity(name)``: creatures with colour, shape (their look), region, weight, speed, friend.
    * ``pages``: the encyclopedia, ``page_id -> text`` (``entity/<name>``, ``region/<region>``).
    * ``heldout_entities``: a quarter of the entities whose image->fact questions never appear in training
      (their images are only ever captioned with their name), so VisKnow on them needs the composition
      pixels -> name (captions) + name -> fact (pages).
    * ``sample(skill, split, rng)``: one :class:`Item` of a skill on the train or eval side of the split.
    """

    def __init__(self, seed: int = 0, n_entities: int | None = None, scale: str | None = None) -> None:
        self.seed = check_seed(seed)
        self.scale = current_scale() if scale is None else validate_scale(scale, "scale")
        self.sizes: WorldSizes = sizes(self.scale)
        n = self.sizes.n_entities if n_entities is None else n_entities
        even = self.sizes.even_looks and n <= 16
        self.entities: list[Entity] = make_entities(rng_for(self.seed, "entities"), n, even)
        self._by_name = {e.name: e for e in self.entities}
        n = len(self.entities)
        perm = rng_for(self.seed, "heldout-entities").permutation(n)
        self.heldout_entities: frozenset[str] = frozenset(self.entities[int(i)].name for i in perm[: max(1, n // 4)])
        pairs = [(e.name, a) for e in self.entities for a in ATTRIBUTES]
        perm = rng_for(self.seed, "heldout-pairs").permutation(len(pairs))
        k = max(1, round(0.25 * len(pairs)))
        self._qa_eval = sorted(pairs[int(i)] for i in perm[:k])
        held = set(self._qa_eval)
        self._qa_train = [p for p in pairs if p not in held]
        self.pages: dict[str, str] = {f"entity/{e.name.lower()}": entity_page(e) for e in self.entities}
        for r in REGIONS:
            self.pages[f"region/{r}"] = region_page(r, [e for e in self.entities if e.region == r])

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, scale={self.scale!r}, n_entities={len(self.entities)})"

    # ------------------------------------------------------------------------------------ lookups
    def entity(self, name: str) -> Entity:
        key = name.strip().capitalize() if isinstance(name, str) else name
        if key not in self._by_name:
            raise ValueError(f"name must be an entity of this world, got {name!r}")
        return self._by_name[key]

    def qa_pairs(self, split: str) -> list[tuple[str, str]]:
        """(entity, attribute) pairs whose text questions belong to ``split`` (eval: a fixed quarter)."""
        return list(self._qa_eval if check_split(split) == "eval" else self._qa_train)

    def is_heldout_key(self, key: str) -> bool:
        return in_heldout(self.seed, key, HELDOUT_FRAC)

    def accepts(self, key: str | None, split: str) -> bool:
        """Does content ``key`` belong to ``split``? (``None``: the generator already split its pool.)"""
        return key is None or self.is_heldout_key(key) == (split == "eval")

    # ------------------------------------------------------------------------------------ sampling
    def sample(self, skill: str, split: str = "train", rng: np.random.Generator | None = None) -> Item:
        """One item of ``skill`` whose content lies on the ``split`` side; ``rng`` drives every choice."""
        if skill not in SKILLS:
            raise ValueError(f"skill must be one of {sorted(SKILLS)}, got {skill!r}")
        check_split(split)
        rng = rng_for(self.seed, "sample", skill, split) if rng is None else rng
        gen = SKILLS[skill].gen
        for _ in range(_MAX_DRAWS):
            out = gen(self, rng, split)
            if out is None:
                continue
            key, build = out
            if self.accepts(key, split):
                item = build()
                item.meta.setdefault("skill", skill)
                item.meta["key"] = key if key is not None else item.prompt
                item.meta["split"] = split
                return item
        raise RuntimeError(f"no {split} item of skill {skill!r} after {_MAX_DRAWS} draws")  # pragma: no cover
