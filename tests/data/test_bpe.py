"""BPETokenizer: exact round trips, agreement with a slow reference encoder, training by hand, files, bad input."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k25mini.data.bpe import FIRST_MERGE_ID, BPETokenizer
from k25mini.data.tokenizer import SPECIAL_TOKENS, Tokenizer

BYTE = Tokenizer()
CORPUS = [
    '<|im_assistant|><|tool_call_begin|>browse<|tool_call_argument_begin|>{"page_id":"entity/soka"}<|tool_call_end|>',
    "<|tool_result_begin|>name Soka; colour red; shape star; friend Miva<|tool_result_end|>",
    "hills: Soka, Miva, Liti, Saka, Nofu.",
    "| name | shape | friend |\n| --- | --- | --- |\n| Soka | star | Miva |",
] * 5


def slow_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Reference: byte-encode each chunk, then apply every merge in the order learned over the whole chunk."""
    out: list[int] = []
    for part in tok._split.split(text):
        if not part:
            continue
        if part in tok.special_tokens:
            out.append(tok.special_tokens[part])
            continue
        for chunk in tok._chunk.findall(part):
            w = list(chunk.encode())
            for k, (a, b) in enumerate(tok.merges):
                i, merged = 0, []
                while i < len(w):
                    if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                        merged.append(FIRST_MERGE_ID + k)
                        i += 2
                    else:
                        merged.append(w[i])
                        i += 1
                w = merged
            out.extend(w)
    return out


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=400)


def test_ids_below_the_merges_mean_what_the_byte_tokenizer_says(tok):
    assert FIRST_MERGE_ID == 256 + len(SPECIAL_TOKENS)
    assert tok.special_tokens == BYTE.special_tokens
    assert tok.im_end_id == BYTE.im_end_id and tok.pad_id == BYTE.pad_id
    text = "".join(CORPUS[:4])
    assert tok.decode(BYTE.encode(text)) == text  # byte ids still decode the same


def test_training_compresses_and_agrees_with_the_slow_reference(tok):
    assert FIRST_MERGE_ID < tok.vocab_size <= 400
    for text in CORPUS[:4] + ["an unseen line: Zuvo, Kede.", '{"page_id":"entity/zuvo"}']:
        fast = tok.encode(text)
        assert fast == slow_encode(tok, text)
        assert tok.decode(fast) == text
    whole = "".join(CORPUS)
    assert len(tok.encode(whole)) < 0.5 * len(BYTE.encode(whole))


def test_training_by_hand():
    # "ab" occurs 3 times, "bc" twice, "xa" once: the first merge is (a, b); then "ab"+"c" (twice)
    t = BPETokenizer.train(["abc", "abc", "xab"], vocab_size=FIRST_MERGE_ID + 2)
    assert t.merges == [(ord("a"), ord("b")), (FIRST_MERGE_ID, ord("c"))]
    assert t.encode("abc ab") == [FIRST_MERGE_ID + 1, ord(" "), FIRST_MERGE_ID]
    assert t.token_bytes(FIRST_MERGE_ID + 1) == b"abc"
    # a tie (each pair once, twice over identical chunks) goes to the smallest pair of ids
    t2 = BPETokenizer.train(["xy yx", "xy yx"], vocab_size=FIRST_MERGE_ID + 1)
    assert t2.merges == [(ord(" "), ord("y"))]


def test_training_is_deterministic_and_stops_when_no_pair_repeats():
    a = BPETokenizer.train(CORPUS, vocab_size=350)
    b = BPETokenizer.train(list(CORPUS), vocab_size=350)
    assert a.merges == b.merges
    t = BPETokenizer.train(["abcdef"], vocab_size=500)  # every pair occurs once: nothing worth merging
    assert t.merges == [] and t.vocab_size == FIRST_MERGE_ID


def test_merges_never_cross_specials_or_chunk_boundaries(tok):
    ids = tok.encode("Soka<|im_end|>Soka")
    i = ids.index(tok.im_end_id)
    assert ids[:i] == ids[i + 1:] == tok.encode("Soka")
    # a chunk's tokens do not depend on its neighbours
    assert tok.encode("Miva Soka") == tok.encode("Miva") + tok.encode(" Soka")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(SPECIAL_TOKENS + (" ", "  ", "Soka", "é"))),
                max_size=8))
def test_round_trip_is_exact_for_any_text(tok, parts):
    text = "".join(parts)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ValueError, match="valid Unicode"):
            tok.encode(text)
        return
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == slow_encode(tok, text)
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_decode_of_sampled_sequences(tok):
    rng = random.Random(0)
    ids = [rng.randrange(tok.vocab_size) for _ in range(200)]
    text = tok.decode(ids)  # any sequence decodes; it need not be encode's canonical one
    assert isinstance(text, str)
    big = BPETokenizer(tok.merges, tok.pattern, vocab_size=tok.vocab_size + 10)
    assert big.decode([tok.vocab_size + 3]) == ""  # rows past the merges carry no text
    with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
        tok.decode([tok.vocab_size])


def test_save_and_load(tmp_path, tok):
    p = tmp_path / "bpe.json"
    tok.save(p)
    back = BPETokenizer.load(p)
    assert back.merges == tok.merges and back.pattern == tok.pattern and back.vocab_size == tok.vocab_size
    assert back.encode("".join(CORPUS)) == tok.encode("".join(CORPUS))
    assert not (tmp_path / "bpe.json.tmp").exists()
    d = json.loads(p.read_text())
    d["specials"] = d["specials"][::-1]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="special tokens differ"):
        BPETokenizer.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.load(p)
    with pytest.raises(ValueError, match="path must name"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a k25mini BPE"):
        BPETokenizer.from_dict({"merges": []})


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 275"):
        BPETokenizer.train(["ab ab"], vocab_size=10)
    with pytest.raises(ValueError, match="texts must be an iterable of strings"):
        BPETokenizer.train("ab ab", vocab_size=300)
    with pytest.raises(ValueError, match="item 1 is int"):
        BPETokenizer.train(["ab", 3], vocab_size=300)
    with pytest.raises(ValueError, match="neither a byte nor an earlier merge"):
        BPETokenizer([(97, FIRST_MERGE_ID)])
    with pytest.raises(ValueError, match=r"merges\[0\] must be a pair"):
        BPETokenizer([(97,)])
    with pytest.raises(ValueError, match="vocab_size must be an int >= 276"):
        BPETokenizer([(97, 98)], vocab_size=275)
    with pytest.raises(ValueError, match="pattern must be a valid regular expression"):
        BPETokenizer([], pattern="(")
    with pytest.raises(ValueError, match="text must be a str"):
        BPETokenizer([]).encode(b"bytes")


def test_a_pattern_that_skips_text_still_round_trips():
    t = BPETokenizer.train(["aa bb aa bb"], vocab_size=FIRST_MERGE_ID + 2, pattern=r"[a-z]+")
    assert t.decode(t.encode("aa  bb!")) == "aa  bb!"
