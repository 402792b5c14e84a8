"""Trajectory format, encoding, SFT sets and batches (chapter 06)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import item_to_doc, prompt_ids
from k25mini.sft.data import build_sft_set, set_summary, sft_batch, sft_loss
from k25mini.sft.trajectories import (
    call_text,
    describe_media,
    direct,
    document,
    encode_trajectory,
    local_runner,
    parse_code_call,
    result_text,
    run_programs,
    text_twin,
    visual_trajectory,
)
from k25mini.world import World, corpus_item
from k25mini.world.rng import rng_for


@pytest.fixture(scope="module")
def world() -> World:
    return World(0, scale="cpu")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def counts(img):  # fixed vision-token counts, so tests do not need a model
    return [4] if img.ndim == 3 else [4] * ((img.shape[0] + 3) // 4)


def _item(world, skill, i=0, split="train"):
    return world.sample(skill, split, rng_for(0, "test-traj", skill, i))


def test_call_roundtrip():
    code = "x = 1\nprint('a', x)"
    assert parse_code_call(call_text(code)) == (code, None)
    assert parse_code_call(call_text(code)[:-len("<|tool_call_end|>")]) == (code, None)  # closing marker optional


@pytest.mark.parametrize("text, err", [
    ("just an answer", "no tool call"),
    ("<|tool_call_begin|>python{\"code\": \"1\"}<|tool_call_end|>", "argument marker"),
    ("<|tool_call_begin|>shell<|tool_call_argument_begin|>{\"code\": \"1\"}<|tool_call_end|>", "unknown tool"),
    ("<|tool_call_begin|>python<|tool_call_argument_begin|>{code: 1}<|tool_call_end|>", "not JSON"),
    ("<|tool_call_begin|>python<|tool_call_argument_begin|>{\"cmd\": \"1\"}<|tool_call_end|>", "must be"),
])
def test_parse_code_call_errors(text, err):
    code, msg = parse_code_call(text)
    assert code is None and err in msg


def test_result_text_is_cut():
    r = result_text("x" * 500, limit=10)
    assert r.startswith("<|tool_result_begin|>xxxxxxxxxx...[490 more]") and r.endswith("<|tool_result_end|>")


def test_text_twin_has_no_pixels(world):
    for skill in ["count", "compare", "locate", "chart", "motion"]:
        it = _item(world, skill)
        t = text_twin(it)
        assert t.item.images == [] and "<|media" not in t.item.prompt
        assert t.item.prompt.startswith(describe_media(it)) and t.item.prompt.endswith(it.prompt.split("Q:")[-1])
        if t.uses_tool:  # the kernel holds the described picture
            arr = t.kernel_frames if skill == "motion" else t.kernel_image
            assert arr is it.images[0]


def test_describe_media_says_what_is_drawn(world):
    it = _item(world, "chart")
    d = describe_media(it)
    assert len(it.meta["truth"]["bars"]) > 0
    for b in it.meta["truth"]["bars"]:
        assert f"{b['colour']} {b['value']}" in d
    with pytest.raises(ValueError, match="no rendered truth"):
        describe_media(_item(world, "arith"))


def test_visual_trajectory_needs_a_program(world):
    it = _item(world, "ocr")
    with pytest.raises(ValueError, match="no program"):
        visual_trajectory(it)


def test_encoding_trains_only_the_assistant(world, tok):
    it = _item(world, "compare")
    t = run_programs([visual_trajectory(it, "verbose")], local_runner)[0]
    ids, train, media = encode_trajectory(t, tok, counts)
    p = prompt_ids(t.item, tok, counts)
    assert ids[: len(p)] == p and not any(train[: len(p)])
    assert media == it.images and len(ids) == len(train)
    trained = tok.decode([i for i, f in zip(ids, train) if f], skip_special=False)
    assert trained == call_text(t.code) + t.item.answer + "<|eos|>"
    untrained_tail = tok.decode([i for i, f in zip(ids[len(p):], train[len(p):]) if not f], skip_special=False)
    assert untrained_tail == result_text(t.result)


def test_document_rows_train_like_pretraining(world, tok):
    page = corpus_item(world, "text_knowledge", next(r for r in range(50)
                                                     if not corpus_item(world, "text_knowledge", r).answer))
    ids, train, media = encode_trajectory(document(page), tok, counts)
    assert ids == item_to_doc(page, tok, counts).ids and media == []
    assert train == [False] + [True] * (len(ids) - 1)  # every token after <|bos|>, <|eos|> included
    with pytest.raises(ValueError, match="empty answer"):
        document(_item(world, "arith"))


def test_encoding_refuses_unrun_call(world, tok):
    t = text_twin(_item(world, "chart"))
    with pytest.raises(ValueError, match="no tool result"):
        encode_trajectory(t, tok, counts)


def test_run_programs_drops_wrong_answers(world):
    it = _item(world, "chart")
    t = text_twin(it)
    t.item.answer = "not the answer"
    out = run_programs([t, direct(_item(world, "arith"))], local_runner)
    assert len(out) == 1 and out.dropped == 1 and not out[0].uses_tool
    assert out[:1].dropped == 1 and out.copy().dropped == 1  # the count survives slicing and copying


def test_stub_context_names_the_media_kind(world):
    img, vid = text_twin(_item(world, "chart"), context="stub"), text_twin(_item(world, "motion"), context="stub")
    assert img.item.prompt.startswith("<|media_begin|>image<|media_content|><|media_end|>")
    assert vid.item.prompt.startswith("<|media_begin|>video<|media_content|><|media_end|>")
    assert "<|media_pad|>" not in img.item.prompt + vid.item.prompt and img.item.images == vid.item.images == []
    assert text_twin(_item(world, "chart"), context="none").item.prompt.startswith("Q:")


def test_sft_sets(world):
    zv = build_sft_set(world, "zero_vision", 120, seed=3)
    tv = build_sft_set(world, "text_visual", 120, seed=3)
    assert len(zv) == len(tv) == 120
    assert all(not t.item.images for t in zv)  # zero-vision: no pixels reach the model
    s = set_summary(tv)
    assert s["visual_skills"] == ["compare", "count"] and s["images"] > 0
    assert set_summary(zv)["tool_twin_skills"] == ["chart", "compare", "count", "locate", "motion"]
    replay = [t for t in zv if t.meta["source"] == "replay"]
    assert len(replay) == 48
    # replay is chapter 05's text corpora: pages as whole documents, questions answered directly
    assert {t.meta["kind"] for t in replay} == {"document", "direct"}
    assert all(t.item.prompt and not t.item.answer for t in replay if t.meta["kind"] == "document")
    assert {t.item.suite for t in replay} == {"TextKnow", "TextReason", "Code"}
    # both arms share the text rows; text_visual only swaps tool rows for visual ones
    text_tv = sorted(t.text() for t in tv if t.meta["source"] != "visual")
    assert set(text_tv) <= {t.text() for t in zv}
    # deterministic; the eval split stays held out
    assert [t.text() for t in build_sft_set(world, "zero_vision", 120, seed=3)] == [t.text() for t in zv]
    assert all(t.item.meta.get("split") == "train" for t in tv if t.meta["kind"] != "document")
    assert all(t.item.meta["skill"] == "page" for t in tv if t.meta["kind"] == "document")  # pages state facts
    assert {t.meta.get("style") for t in zv if t.uses_tool} == {"concise", "verbose"}


def test_blank_context_shows_a_blank_picture_of_the_same_size(world):
    from k25mini.sft.trajectories import blank_media

    for skill in ("chart", "motion"):
        it = _item(world, skill)
        t = text_twin(it, context="blank")
        (shown,), (real,) = t.item.images, it.images
        assert t.item.prompt == it.prompt and shown.shape == real.shape and shown.dtype == real.dtype
        colours, counts = np.unique(real.reshape(-1, 3), axis=0, return_counts=True)
        assert (shown.reshape(-1, 3) == colours[counts.argmax()]).all()  # one colour: the picture's background
        assert len(np.unique(real.reshape(-1, 3), axis=0)) > 1  # ... of a picture that had content
        kernel = t.kernel_frames if skill == "motion" else t.kernel_image
        assert kernel is real  # the kernel still gets the real array
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0] = 9
    assert (blank_media(a) == 0).all()
    for bad in (np.zeros((4, 4)), np.zeros((4, 4, 4)), [1, 2, 3]):
        with pytest.raises(ValueError, match="expected an"):
            blank_media(bad)


def test_sft_set_system_turn(world, tok):
    """``system`` goes before every question row (tool, direct, visual), never before a replayed document; the rows
    are otherwise the same, and the encoded prompt starts with the system turn's special tokens."""
    from k25mini.sft.trajectories import TOOLS_SYSTEM, with_system

    plain = build_sft_set(world, "text_visual", 60, seed=2)
    sys_rows = build_sft_set(world, "text_visual", 60, seed=2, system=TOOLS_SYSTEM)
    assert len(plain) == len(sys_rows)
    for a, b in zip(plain, sys_rows):
        if a.meta["kind"] == "document":
            assert b.item.prompt == a.item.prompt
        else:
            assert b.item.prompt == TOOLS_SYSTEM + a.item.prompt and len(b.item.images) == len(a.item.images)
            assert all((x == y).all() for x, y in zip(a.item.images, b.item.images))
        assert (b.code, b.result, b.item.answer) == (a.code, a.result, a.item.answer)
    assert {t.meta["source"] for t in sys_rows if t.item.prompt.startswith(TOOLS_SYSTEM)} >= {"text_twin", "visual"}
    ids, train, _ = encode_trajectory(next(t for t in sys_rows if t.uses_tool), tok, lambda im: [4])
    assert ids[1] == tok.special_tokens["<|im_system|>"] and not any(train[:8])
    it = plain[0].item
    assert with_system(it, "") is it
    with pytest.raises(ValueError, match="system must be a str"):
        with_system(it, None)


@pytest.mark.parametrize("kw, msg", [({"arm": "both"}, "arm must be"), ({"n": 0}, "n must be"),
                                     ({"replay_share": 1.0}, "replay_share"),
                                     ({"visual_skills": ("ocr",)}, "visual_skills")])
def test_sft_set_bad_args(world, kw, msg):
    args = {"arm": "zero_vision", "n": 10, **kw}
    with pytest.raises(ValueError, match=msg):
        build_sft_set(world, args.pop("arm"), args.pop("n"), **args)


def test_sft_batch_and_loss_match_a_manual_reference(world, tok):
    torch.manual_seed(0)
    model = K25ForConditionalGeneration(preset("nano"))
    rows = build_sft_set(world, "text_visual", 40, seed=1)
    rows = [t for t in rows if t.item.images][:2] + [t for t in rows if not t.uses_tool][:2]
    b = sft_batch(rows, tok, model.media_token_counts)
    assert b["input_ids"].shape[0] == 4 and len(b["media"]) == 2
    loss, _ = sft_loss(model, b)
    aux = float(model.moe_aux_loss().detach())  # the batch's aux term (the per-row forwards below replace it)
    # reference: per-row forward, cross-entropy over the assistant tokens only
    tot, n = 0.0, 0
    for t in rows:
        ids, train, media = encode_trajectory(t, tok, model.media_token_counts)
        logits = model(torch.tensor([ids]), media or None)[0].double()
        for pos in range(len(ids) - 1):
            if train[pos + 1]:
                tot += float(-torch.log_softmax(logits[pos].detach(), -1)[ids[pos + 1]])
                n += 1
    assert n == b["assistant_tokens"]
    assert abs(float(loss) - aux - tot / n) < 2e-5
    with pytest.raises(ValueError, match="max_len"):
        sft_batch(rows, tok, model.media_token_counts, max_len=8)
    with pytest.raises(ValueError, match="non-empty"):
        sft_batch([], tok, model.media_token_counts)


def test_more_replay_rows_keep_the_twin_rows(world):
    """``replay_rows`` draws more replay rows and leaves the twins as they were (a streamed replay trains the
    same tool data); replay rows are marked, and a bad count is refused by name."""
    fixed = build_sft_set(world, "zero_vision", 60, seed=2, replay_share=0.5)
    more = build_sft_set(world, "zero_vision", 60, seed=2, replay_share=0.5, replay_rows=90)
    assert len(fixed) == 60 and len(more) == 30 + 90
    assert sum(bool(t.meta.get("replay")) for t in more) == 90
    assert all((t.meta.get("source") == "replay") == bool(t.meta.get("replay")) for t in more)
    twins = sorted(t.text() for t in fixed if not t.meta.get("replay"))
    assert twins == sorted(t.text() for t in more if not t.meta.get("replay"))
    with pytest.raises(ValueError, match="replay_rows"):
        build_sft_set(world, "zero_vision", 60, seed=2, replay_rows=-1)
