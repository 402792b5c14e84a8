"""Toy tokenizer: ids fixed by the interface, exact round trip, media placeholder expansion."""

import random

import pytest

from k25mini import config as C
from k25mini.data import IMAGE_PLACEHOLDER, SPECIAL_TOKENS, Tokenizer, media_placeholder, num_video_chunks

TOK = Tokenizer()
FIXED = [
    "<|media_begin|>",
    "<|media_content|>",
    "<|media_pad|>",
    "<|media_end|>",
    "<|im_end|>",
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
]


def test_vocab_and_ids_match_config():
    assert TOK.vocab_size == C.TOY_VOCAB == 512 == len(TOK)
    assert TOK.media_pad_id == C.TOY_MEDIA_PAD_ID == 258
    for i, t in enumerate(FIXED):
        assert TOK.token_id(t) == 256 + i
    assert max(TOK.special_tokens.values()) < 512 and len(set(SPECIAL_TOKENS)) == len(SPECIAL_TOKENS)
    assert (TOK.media_begin_id, TOK.media_content_id, TOK.media_end_id, TOK.im_end_id) == (256, 257, 259, 260)
    assert (TOK.bos_id, TOK.eos_id, TOK.pad_id) == (268, 269, 270)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "Bolo weighs 12 kg.\n",
        "héllo wörld ✓ 🙂 日本",
        "a<|im_end|>b",
        IMAGE_PLACEHOLDER + "Q: How many? A: 3",
        "<|media_pad|><|media_pad|>",
        "<|nope|>",
        "<|<|media_end|>|>",
        "\x00\x7f tabs\t",
    ],
)
def test_round_trip(text):
    ids = TOK.encode(text)
    assert all(0 <= i < 512 for i in ids)
    assert TOK.decode(ids) == text


def test_round_trip_random_strings():
    rng = random.Random(0)
    alphabet = "ab <|>_\n" + "é🙂" + "".join(SPECIAL_TOKENS[:6])
    for _ in range(200):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert TOK.decode(TOK.encode(s)) == s


def test_specials_are_single_ids_and_bytes_are_bytes():
    ids = TOK.encode("x<|media_pad|>é")
    assert ids == [ord("x"), 258, 0xC3, 0xA9]
    assert TOK.encode("<|tool_call_begin|>") == [264]
    assert TOK.encode("hi", add_bos=True, add_eos=True) == [268, 104, 105, 269]
    assert TOK.decode([104, 105, 258], skip_special=True) == "hi"


def test_decode_bad_input():
    assert TOK.decode([0xC3]) == "\ufffd"  # a cut multi-byte character does not raise
    with pytest.raises(ValueError, match="ids"):
        TOK.decode([512])
    with pytest.raises(ValueError, match="ids"):
        TOK.decode([-1])
    with pytest.raises(ValueError, match="text"):
        TOK.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="special"):
        TOK.token_id("<|nope|>")


def _expand_reference(ids, counts):
    out, k = [], 0
    for i in ids:
        if i == 258:
            out += [258] * counts[k]
            k += 1
        else:
            out.append(i)
    return out


def test_expand_media_matches_reference():
    ids = TOK.encode("a" + IMAGE_PLACEHOLDER + "b" + media_placeholder("video", num_frames=9) + "c")
    assert TOK.count_media(ids) == 1 + 3
    counts = [6, 4, 4, 2]
    out = TOK.expand_media(ids, counts)
    assert out == _expand_reference(ids, counts)
    assert out.count(258) == sum(counts) and len(out) == len(ids) - 4 + sum(counts)
    assert TOK.decode(out).count("<|media_pad|>") == 16
    assert TOK.expand_media(TOK.encode("no media"), []) == TOK.encode("no media")


def test_expand_media_bad_counts():
    ids = TOK.encode(IMAGE_PLACEHOLDER * 2)
    with pytest.raises(ValueError, match="n_tokens"):
        TOK.expand_media(ids, [3])
    with pytest.raises(ValueError, match="n_tokens"):
        TOK.expand_media(ids, [3, 0])
    with pytest.raises(ValueError, match="n_tokens"):
        TOK.expand_media(ids, [3, 1.5])


@pytest.mark.parametrize("t", range(1, 17))
def test_video_placeholder_one_pad_per_chunk(t):
    ph = media_placeholder("video", num_frames=t)
    assert ph.count("<|media_pad|>") == num_video_chunks(t) == -(-t // 4)
    from k25mini.vision.preprocess import chunk_frame_counts  # a broken vision package fails here, never skips

    assert len(chunk_frame_counts(t, 4)) == num_video_chunks(t)


def test_placeholder_bad_args():
    assert media_placeholder() == IMAGE_PLACEHOLDER
    with pytest.raises(ValueError, match="kind"):
        media_placeholder("audio")
    with pytest.raises(ValueError, match="num_frames"):
        media_placeholder("video", num_frames=0)
