"""Seeds and splits: every random choice in the world comes from a stream named by string keys.

``rng_for(seed, "captions", 17)`` is the generator for row 17 of the captions corpus under world
seed ``seed``. Streams are derived with BLAKE2b, so they do not depend on the order in which rows
are built (a corpus can be built in any order, or partly, and still match byte for byte).

Held-out splits are decided by hashing an item's *content key* (``heldout_key``), not by the row
index, so an eval item can never reappear in a training corpus under a different index.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["stable_hash", "rng_for", "in_heldout", "check_split", "SPLITS"]

SPLITS: tuple[str, ...] = ("train", "eval")


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same on every machine and Python run."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x1f")  # separator, so ("ab", "c") != ("a", "bc")
    return int.from_bytes(h.digest(), "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """An independent numpy Generator for the stream named ``keys`` under world seed ``seed``."""
    return np.random.default_rng(stable_hash("rng", int(seed), *keys))


def in_heldout(seed: int, key: str, frac: float) -> bool:
    """True if the content ``key`` belongs to the held-out (eval) side of the split."""
    return (stable_hash("heldout", int(seed), key) % 10_000) < int(round(frac * 10_000))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
