"""A byte-pair-encoding tokenizer on top of the toy byte tokenizer, for agents whose contexts are long text.

The toy :class:`~k25mini.data.tokenizer.Tokenizer` spends one token per byte. That keeps the round trip exact and
the vocabulary tiny, but an agent that reads a dozen web pages then needs contexts of thousands of positions, and
a nano model must copy names across all of them. Kimi K2 reads text through a BPE vocabulary of about 160k
entries (arXiv 2507.20534 §2); this module gives the toy world the same kind of tokenizer at a small size.

Ids: bytes ``0..255`` and the special tokens ``256..274`` keep their ids (so every id the byte tokenizer
produces means the same here); merge ``k`` gets id ``275 + k``. A merge joins two ids into one; training picks,
again and again, the adjacent pair that occurs most often in the corpus (ties: the smallest pair of ids, so a
corpus always gives the same merges).

Pre-tokenization: special tokens are never merged, and the text between them is cut into *chunks* by
``pattern`` before merging. Merges never cross a chunk boundary, so a chunk's encoding depends on the chunk
alone (:meth:`BPETokenizer.encode` memoises it). The default pattern keeps words apart from punctuation, as
GPT-2's does: a run of letters (``_`` counts as one, and a trailing ``/`` joins it, so ``entity/`` is one chunk),
a run of digits, or a run of punctuation, each with at most one space in front; and runs of spaces. So a name
is the same tokens wherever it stands (`` Soka`` in a page, a list or a table cell), which is what copying it
needs. Cutting only at spaces compresses the swarm's traces more (3.7× instead of 2.9× with 749 merges) but
glues a name's last syllable to the punctuation after it (`` S|ok|a,`` in a list, ``|ok|a"}`` in a page id),
and a nano model then learns to copy more slowly (docs/swarm_learned.md).

    tok = BPETokenizer.train(texts, vocab_size=1024)
    tok.save("bpe.json"); tok = BPETokenizer.load("bpe.json")
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from k25mini.data.tokenizer import SPECIAL_TOKENS, Tokenizer, _as_id

__all__ = ["BPETokenizer", "DEFAULT_PATTERN", "FIRST_MERGE_ID"]

#: id of the first merge: right after the byte tokenizer's special tokens
FIRST_MERGE_ID = 256 + len(SPECIAL_TOKENS)
#: chunks: letters (with ``_`` and one trailing ``/``), digits or punctuation, each with at most one space in
#: front; and runs of spaces
DEFAULT_PATTERN = r" ?[A-Za-z_]+/?| ?[0-9]+| ?[^A-Za-z0-9_ ]+| +"
_FORMAT = "k25mini-bpe-1"


class BPETokenizer(Tokenizer):
    """Byte-level BPE with the toy tokenizer's special tokens. ``merges[k] = (a, b)`` makes id ``275 + k``.

    ``vocab_size`` defaults to ``275 + len(merges)``; a model may have more rows (ids past the merges decode to
    nothing, as unused ids do in the byte tokenizer)."""

    def __init__(self, merges: Sequence[tuple[int, int]], pattern: str = DEFAULT_PATTERN,
                 vocab_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty regular expression string, got {pattern!r}")
        try:
            self._chunk = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"pattern must be a valid regular expression, got {pattern!r}: {e}") from None
        self.pattern = pattern
        self.merges: list[tuple[int, int]] = []
        self._bytes: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for k, pair in enumerate(merges):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"merges[{k}] must be a pair of ids, got {pair!r}")
            a, b = (_as_id(x, f"merges[{k}]") for x in pair)
            for x in (a, b):
                if x not in self._bytes:
                    raise ValueError(f"merges[{k}] = {pair!r}: id {x} is neither a byte nor an earlier merge "
                                     f"(ids 0..255 and {FIRST_MERGE_ID}..{FIRST_MERGE_ID + k - 1})")
            self.merges.append((a, b))
            self._bytes[FIRST_MERGE_ID + k] = self._bytes[a] + self._bytes[b]
        self._rank = {p: FIRST_MERGE_ID + k for k, p in enumerate(self.merges)}
        need = FIRST_MERGE_ID + len(self.merges)
        if vocab_size is None:
            vocab_size = need
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < need:
            raise ValueError(f"vocab_size must be an int >= {need} (bytes, specials and {len(self.merges)} merges), "
                             f"got {vocab_size!r}")
        self.vocab_size = vocab_size
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = DEFAULT_PATTERN) -> BPETokenizer:
        """Learn ``vocab_size - 275`` merges (fewer when no pair occurs twice) from ``texts``."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < FIRST_MERGE_ID:
            raise ValueError(f"vocab_size must be an int >= {FIRST_MERGE_ID}, got {vocab_size!r}")
        if isinstance(texts, str):
            raise ValueError("texts must be an iterable of strings, not one string")
        base = cls([], pattern)
        counts: Counter[str] = Counter()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts must hold strings; item {i} is {type(t).__name__}")
            counts.update(base._chunks(t))
        words = [list(c.encode("utf-8")) for c in counts]
        freq = list(counts.values())
        pairs: Counter[tuple[int, int]] = Counter()
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for i, w in enumerate(words):
            for p in zip(w, w[1:]):
                pairs[p] += freq[i]
                where[p].add(i)
        merges: list[tuple[int, int]] = []
        while FIRST_MERGE_ID + len(merges) < vocab_size and pairs:
            best = max(pairs.items(), key=lambda kv: (kv[1], (-kv[0][0], -kv[0][1])))
            (a, b), n = best
            if n < 2:
                break
            new = FIRST_MERGE_ID + len(merges)
            merges.append((a, b))
            for i in sorted(where.pop((a, b))):
                w, f = words[i], freq[i]
                for p in zip(w, w[1:]):
                    pairs[p] -= f
                    if pairs[p] <= 0:
                        del pairs[p]
                words[i] = w = _merge(w, a, b, new)
                for p in zip(w, w[1:]):
                    pairs[p] += f
                    where[p].add(i)
        return cls(merges, pattern)

    # ------------------------------------------------------------------ encode / decode

    def _chunks(self, text: str) -> Iterable[str]:
        for part in self._split.split(text):
            if part and part not in self.special_tokens:
                yield from self._pieces(part)

    def _pieces(self, part: str) -> Iterable[str]:
        """The chunks of text without special tokens; text the pattern does not cover is a chunk of its own, so
        any pattern round-trips and training sees what encoding will."""
        pos = 0
        for m in self._chunk.finditer(part):
            if m.start() > pos:
                yield part[pos:m.start()]
            if m.end() > m.start():
                yield m.group()
            pos = max(pos, m.end())
        if pos < len(part):
            yield part[pos:]

    def _encode_chunk(self, chunk: str) -> list[int]:
        got = self._cache.get(chunk)
        if got is None:
            w = list(chunk.encode("utf-8"))  # valid: encode() had the byte tokenizer check the text
            while len(w) > 1:  # apply the earliest-learned merge present, as training did
                r, p = min((self._rank.get(p, 1 << 30), p) for p in zip(w, w[1:]))
                if r == 1 << 30:
                    break
                w = _merge(w, p[0], p[1], r)
            got = w
            if len(self._cache) < 200_000:
                self._cache[chunk] = got
        return list(got)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Specials become their ids; the text between them is chunked by ``pattern`` and each chunk merged."""
        out: list[int] = []
        run = bytearray()  # the bytes of one stretch of text between special tokens
        for i in [*super().encode(text, add_bos, add_eos), -1]:  # the byte tokenizer checks the input
            if 0 <= i < 256:
                run.append(i)
                continue
            if run:
                out.extend(self._encode_text(run.decode("utf-8")))
                run.clear()
            if i >= 0:
                out.append(i)
        return out

    def _encode_text(self, part: str) -> list[int]:
        return [i for chunk in self._pieces(part) for i in self._encode_chunk(chunk)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Inverse of :meth:`encode` (also for token sequences encode would not produce). Invalid UTF-8 becomes
        U+FFFD; ids past the merges but below ``vocab_size`` decode to nothing."""
        flat: list[int] = []  # merges spelled out as their bytes; the byte tokenizer decodes the rest
        for i in ids:
            i = _as_id(i)
            b = self._bytes.get(i) if i >= FIRST_MERGE_ID else None
            if b is None:
                flat.append(i)
            else:
                flat.extend(b)
        return super().decode(flat, skip_special)

    def token_bytes(self, i: int) -> bytes:
        """The bytes id ``i`` stands for (``b''`` for special and unused ids)."""
        return self._bytes.get(_as_id(i), b"")

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "pattern": self.pattern, "vocab_size": self.vocab_size,
                "specials": list(SPECIAL_TOKENS), "merges": [list(p) for p in self.merges]}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"not a k25mini BPE tokenizer (expected format {_FORMAT!r})")
        if list(d.get("specials", [])) != list(SPECIAL_TOKENS):
            raise ValueError("the file's special tokens differ from this k25mini's SPECIAL_TOKENS; ids would shift")
        return cls([tuple(p) for p in d["merges"]], d["pattern"], d["vocab_size"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, atomically (a crash leaves the old file or none, never half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"path must name a BPE tokenizer file written by BPETokenizer.save, got {str(path)!r}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _merge(w: list[int], a: int, b: int, new: int) -> list[int]:
    out: list[int] = []
    j = 0
    while j < len(w):
        if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
            out.append(new)
            j += 2
        else:
            out.append(w[j])
            j += 1
    return out
