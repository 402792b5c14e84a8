"""Tokenizer boundary (k25mini.data.tokenizer), property-based.

Invariants checked:

* ``decode(encode(text)) == text`` for any Python string without lone surrogates, including strings built from
  special-token literals and fragments of them; every id lies in [0, 512);
* arbitrary bytes decode exactly as Python's own ``bytes.decode('utf-8', errors='replace')`` does, and valid
  UTF-8 without special-token literals re-encodes to the same bytes;
* every id in [0, 512) decodes without raising, ``skip_special`` drops exactly the special tokens;
* ``expand_media`` equals a plain loop, keeps the non-pad tokens in order and makes ``sum(counts)`` pads;
* for random images and videos, one placeholder per chunk expanded by ``media_token_counts`` gives exactly as
  many pads as the vision tower returns embeddings (the merged-token count);
* bad input (non-str text, lone surrogates, non-integer or out-of-range ids, wrong placeholder counts) raises a
  ValueError that names the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_settings import examples

from k25mini.config import VisionConfig
from k25mini.data import SPECIAL_TOKENS, Tokenizer, media_placeholder
from k25mini.vision import VisionTower, media_token_counts

TOK = Tokenizer()
PAD = TOK.media_pad_id

# text that stresses the special-token splitter: real specials, their fragments, and arbitrary unicode
_fragments = st.sampled_from(["<|", "|>", "<", "|", ">", "<|im_", "end|>", "media_pad", "<||>", "<|<|"])
_piece = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL_TOKENS), _fragments)
tricky_text = st.lists(_piece, max_size=12).map("".join)


@given(st.text())
def test_round_trip_any_text(text):
    ids = TOK.encode(text)
    assert all(isinstance(i, int) and 0 <= i < TOK.vocab_size for i in ids)
    assert TOK.decode(ids) == text


@given(tricky_text, st.booleans(), st.booleans())
def test_round_trip_with_special_literals(text, bos, eos):
    ids = TOK.encode(text, add_bos=bos, add_eos=eos)
    assert ids[:1] == [TOK.bos_id] if bos else True
    assert ids[-1:] == [TOK.eos_id] if eos else True
    assert TOK.decode(ids[int(bos) : len(ids) - int(eos)]) == text


_plain = st.text(alphabet=st.characters(blacklist_characters="<|>", blacklist_categories=("Cs",)), max_size=10)


@given(st.lists(st.one_of(_plain.map(lambda s: ("text", s)), st.sampled_from(SPECIAL_TOKENS).map(lambda s: ("sp", s))),
                max_size=12))
def test_each_special_literal_becomes_exactly_one_id(pieces):
    ids = TOK.encode("".join(s for _, s in pieces))
    assert [i for i in ids if i >= 256] == [TOK.token_id(s) for kind, s in pieces if kind == "sp"]
    assert bytes(i for i in ids if i < 256) == "".join(s for kind, s in pieces if kind == "text").encode("utf-8")


def _no_special_reference(ids):
    """skip_special reference: decode the byte runs between specials, independently."""
    out, buf = [], bytearray()
    for i in ids:
        if i < 256:
            buf.append(i)
        else:
            out.append(bytes(buf).decode("utf-8", errors="replace"))
            buf.clear()
    out.append(bytes(buf).decode("utf-8", errors="replace"))
    return "".join(out)


@given(st.lists(st.integers(0, TOK.vocab_size - 1), max_size=40))
def test_any_valid_id_decodes_and_skip_special_drops_exactly_the_specials(ids):
    full = TOK.decode(ids)
    plain = TOK.decode(ids, skip_special=True)
    assert plain == _no_special_reference(ids)
    specials_text = "".join(TOK.id_to_special.get(i, "") for i in ids)
    assert len(full) == len(plain) + len(specials_text)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_like_python(data):
    assert TOK.decode(list(data)) == data.decode("utf-8", errors="replace")


@given(st.text(max_size=40).map(lambda s: s.encode("utf-8")))
def test_valid_utf8_bytes_re_encode_to_the_same_bytes(data):
    text = TOK.decode(list(data))
    if not any(s in text for s in SPECIAL_TOKENS):  # a special literal legitimately re-encodes to one id
        assert TOK.encode(text) == list(data)


def _expand_loop(ids, counts):
    out, k = [], 0
    for i in ids:
        if i == PAD:
            out.extend([PAD] * counts[k])
            k += 1
        else:
            out.append(i)
    assert k == len(counts)
    return out


@st.composite
def prompt_with_counts(draw):
    n = draw(st.integers(0, 6))
    parts = []
    for _ in range(n):
        parts.append(draw(st.text(max_size=8)))
        frames = draw(st.integers(1, 12))
        parts.append(media_placeholder("video", num_frames=frames) if draw(st.booleans()) else media_placeholder())
    parts.append(draw(st.text(max_size=8)))
    ids = TOK.encode("".join(parts))
    counts = draw(st.lists(st.integers(1, 50), min_size=TOK.count_media(ids), max_size=TOK.count_media(ids)))
    return ids, counts


@given(prompt_with_counts())
def test_expand_media_equals_a_loop(case):
    ids, counts = case
    out = TOK.expand_media(ids, counts)
    assert out == _expand_loop(ids, counts)
    assert out.count(PAD) == sum(counts)
    assert [i for i in out if i != PAD] == [i for i in ids if i != PAD]
    assert TOK.decode(out).count("<|media_pad|>") == sum(counts)


# a small tower (the nano layout at quarter width) keeps each example to a few milliseconds
TINY = VisionConfig(patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    init_pos_emb_height=8, init_pos_emb_width=8, rope_max_height=32, rope_max_width=32,
                    min_patches=4, max_patches=64)
torch.manual_seed(0)
TOWER = VisionTower(TINY, 8).eval()


@st.composite
def media_items(draw):
    """Images [H, W, 3] and videos [T, H, W, 3] (uint8) of at least one patch per side."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        h, w = draw(st.integers(TINY.patch_size, 48)), draw(st.integers(TINY.patch_size, 48))
        t = draw(st.sampled_from([0, 1, 3, 4, 5, 9]))  # 0: an image, else a video of t frames
        shape = (h, w, 3) if t == 0 else (t, h, w, 3)
        seed = draw(st.integers(0, 2**16))
        items.append(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return items


@examples(0.5)
@given(media_items(), st.text(max_size=6))
def test_expanded_placeholders_match_the_towers_merged_tokens(media, text):
    prompt = text.join(media_placeholder() if m.ndim == 3 else media_placeholder("video", num_frames=m.shape[0])
                       for m in media)
    ids = TOK.encode(prompt)
    per_item = [media_token_counts(m, TINY) for m in media]
    assert [len(c) for c in per_item] == [1 if m.ndim == 3 else -(-m.shape[0] // 4) for m in media]
    counts = [c for cs in per_item for c in cs]
    assert TOK.count_media(ids) == len(counts)
    expanded = TOK.expand_media(ids, counts)
    with torch.no_grad():
        embeds = TOWER.encode(media)
    assert [e.shape[0] for e in embeds] == [sum(c) for c in per_item]
    assert expanded.count(PAD) == sum(e.shape[0] for e in embeds)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("text", [b"bytes", None, 3, ["a"], "lone \ud800 surrogate"])
def test_encode_bad_text(text):
    with pytest.raises(ValueError, match="text"):
        TOK.encode(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("ids", [[512], [-1], [10**12], [1.5], [float("nan")], ["a"], [None], [True]])
def test_decode_bad_ids(ids):
    with pytest.raises(ValueError, match="ids"):
        TOK.decode(ids)


def test_decode_accepts_integer_tensors_and_numpy():
    ids = TOK.encode("hé<|im_end|>")
    assert TOK.decode(torch.tensor(ids)) == TOK.decode(np.array(ids)) == "hé<|im_end|>"


@pytest.mark.parametrize("counts", [[3], [3, 4, 5], [3, 0], [3, -2], [3, 1.5], [3, float("nan")], [3, float("inf")],
                                    [3, True], [3, "4"], [3, None]])
def test_expand_media_bad_counts(counts):
    ids = TOK.encode(media_placeholder() * 2)
    with pytest.raises(ValueError, match="n_tokens"):
        TOK.expand_media(ids, counts)


@pytest.mark.parametrize("ids", [[258.0], [1.5], ["258"]])
def test_expand_media_bad_ids(ids):
    with pytest.raises(ValueError, match="ids"):
        TOK.expand_media(ids, [2])
