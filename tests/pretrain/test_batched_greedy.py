"""Batched greedy decoding (``greedy_answers``) against the one-item reference (``greedy_answer``)."""

from __future__ import annotations

import pytest
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import item_to_doc, prompt_ids
from k25mini.pretrain.evaluate import (
    _decode,
    _prefill,
    evaluate_items,
    greedy_answer,
    greedy_answers,
)
from k25mini.pretrain.packing import IGNORE
from k25mini.world import World, make_eval_suite, score
from tests.rl.printable import printable_model

TOK = Tokenizer()
MAX_NEW = 12
# fp32 on CPU: the batched prefill runs a masked attention over a left-padded batch (the reference an unmasked
# causal one over one row), so sums are reordered; measured: max |diff| 3e-6 at |logit| <= 9.
ATOL, RTOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def items():
    """Mixed suites: images, a video (VisReason item 5 is a 4-frame clip), text only; prompt lengths vary."""
    w = World(0, scale="smoke")
    its = (make_eval_suite(w, "VisReason", 6) + make_eval_suite(w, "VisKnow", 2) + make_eval_suite(w, "OCR", 2)
           + make_eval_suite(w, "TextKnow", 3) + make_eval_suite(w, "TextReason", 3) + make_eval_suite(w, "Code", 3))
    assert any(im.ndim == 4 for it in its for im in it.images), "no video in the mix"
    assert any(not it.images for it in its) and any(it.images for it in its)
    return its


@pytest.fixture(scope="module")
def random_model():
    """Random init, lm_head restricted to printable ASCII + eos + newline (scaled up): answers are distinct,
    non-empty strings instead of runs of replacement characters."""
    return printable_model(0, gain=4.0)


@pytest.fixture(scope="module")
def trained_model(items):
    """40 Adam steps on the items' own documents: answers of different lengths, some right."""
    torch.manual_seed(0)
    m = K25ForConditionalGeneration(preset("nano"))
    docs = [item_to_doc(it, TOK, m.media_token_counts) for it in items]
    S = max(len(d.ids) for d in docs)
    ids = torch.full((len(docs), S), TOK.pad_id)
    labels = torch.full((len(docs), S), IGNORE)
    for i, d in enumerate(docs):
        ids[i, : len(d.ids)] = torch.tensor(d.ids)
        labels[i, : len(d.ids) - 1] = torch.tensor(d.ids[1:])
    labels[labels == TOK.media_pad_id] = IGNORE
    media = [x for d in docs for x in d.media]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        m.loss(ids, labels, media=media).backward()
        opt.step()
    return m


@pytest.fixture(scope="module", params=["random", "trained"])
def case(request, items):
    m = request.getfixturevalue(f"{request.param}_model")
    ref = [greedy_answer(m, TOK, it, MAX_NEW) for it in items]
    return m, ref


def test_reference_answers_are_informative(case, items):
    _, ref = case
    assert len(set(ref)) >= len(items) // 3, ref
    assert sum(bool(a) for a in ref) >= len(items) // 2, ref


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_equals_one_by_one(case, items, batch_size):
    m, ref = case
    assert len({len(prompt_ids(it, TOK, m.media_token_counts)) for it in items}) > 3  # mixed prompt lengths
    m.train()
    assert greedy_answers(m, TOK, items, MAX_NEW, batch_size=batch_size) == ref
    assert m.training  # the mode is restored


def test_rows_stop_at_different_steps(trained_model, items):
    ref = [greedy_answer(trained_model, TOK, it, MAX_NEW) for it in items]
    n_tokens = [len(TOK.encode(a)) for a in ref]
    assert min(n_tokens) < MAX_NEW and max(n_tokens) == MAX_NEW and len(set(n_tokens)) >= 3, n_tokens
    # one batch holding all of them: rows leave the batch one after another
    assert greedy_answers(trained_model, TOK, items, MAX_NEW, batch_size=len(items)) == ref
    # max_new_tokens=1 stops every row after one token
    assert greedy_answers(trained_model, TOK, items, 1) == [greedy_answer(trained_model, TOK, it, 1)
                                                             for it in items]


def test_evaluate_items_uses_the_same_answers(trained_model, items):
    mean, per = evaluate_items(trained_model, TOK, items, MAX_NEW, batch_size=4)
    want = [float(score(it, greedy_answer(trained_model, TOK, it, MAX_NEW))) for it in items]
    assert per == want and mean == pytest.approx(sum(want) / len(want))
    assert 0 < sum(want) < len(want)  # some right, some wrong: the check compares something


@torch.no_grad()
def test_first_step_logits_match_unbatched(trained_model, items):
    """Prefill logits and the logits of the first decode step (absorbed MLA over the padded cache) agree with
    the one-row path within ATOL/RTOL (fp32)."""
    m = trained_model.eval()
    lm = m.language_model
    prompts = [prompt_ids(it, TOK, m.media_token_counts) for it in items]
    media = [x for it in items for x in it.images]
    logits0, state = _prefill(m, TOK, prompts, media)
    nxt = logits0.argmax(-1)
    logits1 = _decode(lm, nxt, 0, state)
    for r, (it, p) in enumerate(zip(items, prompts)):
        cache = lm.new_kv_cache()
        want0 = lm(inputs_embeds=m.embed(torch.tensor([p]), it.images or None), kv_cache=cache)[0, -1]
        torch.testing.assert_close(logits0[r], want0, atol=ATOL, rtol=RTOL)
        want1 = lm(nxt[r].view(1, 1), kv_cache=cache)[0, -1]
        torch.testing.assert_close(logits1[r], want1, atol=ATOL, rtol=RTOL)


def test_bad_inputs(random_model, items):
    m = random_model
    for bad in ([], (), None, "abc"):
        with pytest.raises(ValueError, match="items"):
            greedy_answers(m, TOK, bad)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="batch_size"):
            greedy_answers(m, TOK, items[:2], batch_size=bad)
        with pytest.raises(ValueError, match="max_new_tokens"):
            greedy_answers(m, TOK, items[:2], max_new_tokens=bad)
    with pytest.raises(ValueError, match="items"):
        evaluate_items(m, TOK, [])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_items(m, TOK, items[:2], batch_size=0)
