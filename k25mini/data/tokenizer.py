"""The toy tokenizer: bytes 0..255 plus Kimi-style special tokens from id 256; ``vocab_size`` 512.

A byte vocabulary keeps the model tiny and the round trip exact for any string. Special tokens are
recognised when their literal text (e.g. ``<|media_pad|>``) appears in the input of :meth:`encode`.

Media: a prompt carries ONE ``<|media_pad|>`` per image (per 4-frame chunk for videos); once the vision
tower knows how many merged tokens each chunk yields, :meth:`Tokenizer.expand_media` repeats each
placeholder that many times, so the language model sees one pad position per vision token. The placeholder
text (``IMAGE_PLACEHOLDER``, ``media_placeholder``, ``num_video_chunks``) lives in :mod:`k25mini.world.media`
and is re-exported here.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence

from k25mini.world.media import IMAGE_PLACEHOLDER, media_placeholder, num_video_chunks

__all__ = [
    "SPECIAL_TOKENS",
    "Tokenizer",
    "media_placeholder",
    "IMAGE_PLACEHOLDER",
    "num_video_chunks",
]

# Order is part of the interface: ids are 256 + index. Append only (all ids must stay < 512).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|media_begin|>",  # 256
    "<|media_content|>",  # 257
    "<|media_pad|>",  # 258 == k25mini.config.TOY_MEDIA_PAD_ID
    "<|media_end|>",  # 259
    "<|im_end|>",  # 260
    "<|im_system|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|tool_call_begin|>",
    "<|tool_call_end|>",
    "<|tool_result_begin|>",
    "<|tool_result_end|>",
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|im_middle|>",  # Kimi's chat template separates the role name from the message with it
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_argument_begin|>",
)
VOCAB_SIZE = 512


def _as_id(i: object, name: str = "ids") -> int:
    """One token id as a Python int: ints, numpy integers and 0-d integer tensors pass; bools, floats (even 258.0)
    and anything else raise ValueError naming ``name`` (int() would silently truncate 1.5 to 1)."""
    if isinstance(i, bool):
        raise ValueError(f"{name} must hold integer token ids, got {i!r}")
    try:
        return operator.index(i)
    except TypeError:
        raise ValueError(f"{name} must hold integer token ids, got {i!r}") from None


class Tokenizer:
    """Byte-level tokenizer with special tokens. ``encode(str) -> list[int]``, ``decode(list[int]) -> str``."""

    def __init__(self) -> None:
        if 256 + len(SPECIAL_TOKENS) > VOCAB_SIZE:  # pragma: no cover - guards future additions
            raise ValueError("too many special tokens for a 512-entry vocabulary")
        self.vocab_size = VOCAB_SIZE
        self.special_tokens: dict[str, int] = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.id_to_special: dict[int, str] = {i: t for t, i in self.special_tokens.items()}
        # longest first, so a special that is a prefix of another can never shadow it
        alts = sorted(SPECIAL_TOKENS, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in alts) + ")")

    # ids of the specials, by their role
    @property
    def media_begin_id(self) -> int:
        return self.special_tokens["<|media_begin|>"]

    @property
    def media_content_id(self) -> int:
        return self.special_tokens["<|media_content|>"]

    @property
    def media_pad_id(self) -> int:
        return self.special_tokens["<|media_pad|>"]

    @property
    def media_end_id(self) -> int:
        return self.special_tokens["<|media_end|>"]

    @property
    def im_end_id(self) -> int:
        return self.special_tokens["<|im_end|>"]

    @property
    def bos_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    @property
    def eos_id(self) -> int:
        return self.special_tokens["<|eos|>"]

    @property
    def pad_id(self) -> int:
        return self.special_tokens["<|pad|>"]

    def token_id(self, special: str) -> int:
        """Id of a special token given its text, e.g. ``token_id('<|tool_call_begin|>')``."""
        if special not in self.special_tokens:
            raise ValueError(f"special must be one of {list(self.special_tokens)}, got {special!r}")
        return self.special_tokens[special]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text``; literal special-token strings become their single ids."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = [self.bos_id] if add_bos else []
        for part in self._split.split(text):
            if not part:
                continue
            sid = self.special_tokens.get(part)
            if sid is not None:
                ids.append(sid)
            else:
                try:
                    ids.extend(part.encode("utf-8"))
                except UnicodeEncodeError as e:  # a lone surrogate (e.g. from errors="surrogateescape")
                    raise ValueError(f"text must be valid Unicode; it holds {e.object[e.start:e.end]!r} at "
                                     f"position {e.start} of a segment, which UTF-8 cannot encode") from None
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Inverse of :meth:`encode`. Invalid UTF-8 (e.g. a cut multi-byte char) becomes U+FFFD."""
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = _as_id(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
            if i in self.id_to_special:
                if not skip_special:
                    out.append(self.id_to_special[i])
            elif not 0 <= i < self.vocab_size:
                raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {i}")
            # unused ids 275..511 decode to nothing: a model may emit them, they carry no text
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def count_media(self, ids: Sequence[int]) -> int:
        """Number of ``<|media_pad|>`` placeholders in ``ids``."""
        return sum(1 for i in ids if _as_id(i) == self.media_pad_id)

    def expand_media(self, ids: Sequence[int], n_tokens: Sequence[int]) -> list[int]:
        """Replace the i-th single ``<|media_pad|>`` with ``n_tokens[i]`` pads (the chunk's merged-token count)."""
        n_ph = self.count_media(ids)
        n_tokens = list(n_tokens)
        if len(n_tokens) != n_ph:
            raise ValueError(
                f"n_tokens must have one count per <|media_pad|> placeholder ({n_ph}), got {len(n_tokens)}"
            )
        counts = []
        for n in n_tokens:
            try:
                n = _as_id(n, "n_tokens")
            except ValueError:
                raise ValueError(f"n_tokens must be positive ints, got {n_tokens}") from None
            if n < 1:
                raise ValueError(f"n_tokens must be positive ints, got {n_tokens}")
            counts.append(n)
        out: list[int] = []
        k = 0
        for i in ids:
            i = _as_id(i)
            if i == self.media_pad_id:
                out.extend([self.media_pad_id] * counts[k])
                k += 1
            else:
                out.append(i)
        return out

    def __len__(self) -> int:
        return self.vocab_size
