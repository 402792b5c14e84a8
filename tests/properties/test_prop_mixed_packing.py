"""Mixed-document packer boundary (k25mini.pretrain.packing.MixedPacker), property-based.

Every generated token is unique and names where it came from (text document and offset, image-text document and
offset), so the packed rows can be read back exactly. For random token plans (from ``token_plan`` and arbitrary
ones), row counts, sequence lengths and document streams:

* token totals are exact: per step ``vision + text == rows * seq_len``, over the run they equal the plan's totals;
  an arbitrary plan either is met exactly or raises ValueError because its last step cannot hold the carried-over
  vision budget (and then only when that is really so); vision use never runs ahead of the plan;
* the text stream is laid down in order with no token lost or repeated, cut only at row ends; a text document
  piece never shares a document id with another document;
* an image-text document is never split: it appears whole, in one row, under one document id, and the media list
  follows its spans; the documents used are exactly the first ones drawn, each once;
* the last step's residual text (image-text documents with their media dropped) keeps each document's tokens
  contiguous and in order, split only at row ends, one document id per piece (this found a bug: the packer
  used to deal the residual out one token at a time to alternating rows, so a row read ``t0 t2 t4`` and the
  labels taught ``t0 -> t2``);
* positions restart at 0 in every document; labels are the next token inside a document, IGNORE across a
  document boundary, on a media pad, and at the row end;
* bad arguments raise ValueError naming them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from k25mini.pretrain.fusion_schedule import FusionSchedule, token_plan
from k25mini.pretrain.packing import IGNORE, Doc, MixedPacker

MB, PAD, ME = 256, 258, 259
TEXT0 = 10**6  # text token k of the stream is TEXT0 + k
CAP0 = 10**4  # caption token j of image-text document s is CAP0 + 100 * s + j


@dataclass
class Streams:
    text_docs: list  # lengths of the text documents drawn so far
    vision_docs: list  # Doc objects drawn so far (serial = index)


def text_stream(rng: np.random.Generator, max_len: int, log: Streams):
    k = 0
    while True:
        n = int(rng.integers(0, max_len + 1))  # empty documents are allowed
        log.text_docs.append(n)
        yield Doc([TEXT0 + k + i for i in range(n)])
        k += n


def vision_stream(rng: np.random.Generator, seq_len: int, log: Streams):
    while True:
        s = len(log.vision_docs)
        ids, media, j = [], [], 0
        for _ in range(int(rng.integers(0, 3))):  # caption before the first span
            ids.append(CAP0 + 100 * s + j)
            j += 1
        for span in range(int(rng.integers(1, 3))):
            ids += [MB] + [PAD] * int(rng.integers(1, 7)) + [ME]
            media.append((s, span))
            for _ in range(int(rng.integers(0, 6))):
                ids.append(CAP0 + 100 * s + j)
                j += 1
        if len(ids) > seq_len:
            ids, media = [MB, PAD, ME], [(s, 0)]
        doc = Doc(ids, media)
        log.vision_docs.append(doc)
        yield doc


def stripped(doc: Doc) -> list[int]:
    return [t for t in doc.ids if t >= CAP0 and t < TEXT0]


@st.composite
def packer_case(draw, from_schedule: bool):
    rows, seq_len, steps = draw(st.integers(1, 4)), draw(st.integers(8, 48)), draw(st.integers(1, 6))
    if from_schedule:
        sched = FusionSchedule("p", draw(st.sampled_from([0.0, 0.25, 0.5, 0.8])), draw(st.floats(0.0, 1.0)))
        try:
            plan = token_plan(sched, steps, rows * seq_len)
        except ValueError:
            assume(False)
    else:
        v = draw(st.lists(st.integers(0, rows * seq_len), min_size=steps, max_size=steps))
        plan = np.array([[x, rows * seq_len - x] for x in v], dtype=np.int64)
    return rows, seq_len, plan, draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 3 * seq_len))


def _segments(row_dids):
    out, start = [], 0
    for j in range(1, len(row_dids) + 1):
        if j == len(row_dids) or row_dids[j] != row_dids[j - 1]:
            out.append((start, j))
            start = j
    return out


def _check_rows(step, S):
    """Positions, doc ids, labels of every row against a loop."""
    for r in range(step.input_ids.shape[0]):
        ids, lab, did, pos = (a[r].tolist() for a in (step.input_ids, step.labels, step.doc_ids, step.position_ids))
        assert did[0] == 0 and all(b - a in (0, 1) for a, b in zip(did, did[1:]))
        for j in range(S):
            new_doc = j == 0 or did[j] != did[j - 1]
            assert pos[j] == (0 if new_doc else pos[j - 1] + 1)
            if j == S - 1 or did[j + 1] != did[j] or ids[j + 1] == PAD:
                assert lab[j] == IGNORE
            else:
                assert lab[j] == ids[j + 1]


def _run_and_check(rows, seq_len, plan, seed, max_text):
    rng = np.random.default_rng(seed)
    log = Streams([], [])
    packer = MixedPacker(text_stream(rng, max_text, log), vision_stream(rng, seq_len, log), plan, rows, seq_len,
                         PAD, MB, ME)
    steps, carried = [], 0
    for i in range(len(plan)):
        try:
            steps.append(packer.next_step())
        except ValueError as e:
            # only the last step may fail, and only when it cannot hold the carried-over vision budget
            assert i == len(plan) - 1 and "does not fit" in str(e), e
            assert carried + int(plan[i, 0]) > rows * seq_len
            return
        carried += int(plan[i, 0]) - steps[-1].vision_tokens
        assert carried >= 0  # vision use never runs ahead of the plan
    assert len(steps) == len(plan)
    # totals
    for s in steps:
        assert s.input_ids.shape == (rows, seq_len) and s.vision_tokens + s.text_tokens == rows * seq_len
    assert sum(s.vision_tokens for s in steps) == int(plan[:, 0].sum())
    assert sum(s.text_tokens for s in steps) == int(plan[:, 1].sum())
    # text stream: consecutive, in order, row-major; a piece never mixes two documents
    doc_of, k = {}, 0
    for d, n in enumerate(log.text_docs):
        for _ in range(n):
            doc_of[TEXT0 + k] = d
            k += 1
    text_seen, placed, residual_tokens = [], [], []
    for si, s in enumerate(steps):
        _check_rows(s, seq_len)
        tags = list(s.media)
        for r in range(rows):
            ids, did = s.input_ids[r].tolist(), s.doc_ids[r].tolist()
            for a, b in _segments(did):
                seg = ids[a:b]
                if all(t >= TEXT0 for t in seg):
                    assert len({doc_of[t] for t in seg}) == 1  # one text document per doc id
                    text_seen += seg
                elif any(t in (MB, PAD, ME) for t in seg):
                    n_spans = seg.count(MB)
                    mine, tags = tags[:n_spans], tags[n_spans:]
                    assert len(mine) == n_spans and len({m[0] for m in mine}) == 1
                    serial = mine[0][0]
                    assert seg == log.vision_docs[serial].ids  # whole, in one row, under one doc id
                    assert [m[1] for m in mine] == list(range(n_spans))
                    placed.append((si, serial))
                else:  # residual text: last step only, one document's tokens, consecutive and in order
                    assert si == len(steps) - 1 and all(CAP0 <= t < TEXT0 for t in seg)
                    assert len({(t - CAP0) // 100 for t in seg}) == 1
                    assert all(b2 - a2 == 1 for a2, b2 in zip(seg, seg[1:]))
                    residual_tokens += seg
        assert tags == []  # every media entry belongs to a placed span
    assert text_seen == list(range(TEXT0, TEXT0 + len(text_seen)))
    # the documents placed whole are the first ones drawn, each once, in draw order from step to step
    serials = [x for _, x in sorted(placed)]
    assert serials == list(range(len(serials)))
    # the residual is exactly the leading text of the next documents, truncated at the residual size
    want, need = [], int(plan[:, 0].sum()) - sum(len(log.vision_docs[x].ids) for x in serials)
    for doc in log.vision_docs[len(serials) :]:
        if need <= 0:
            break
        part = stripped(doc)[:need]
        want += part
        need -= len(part)
    assert sorted(residual_tokens) == sorted(want)


@given(packer_case(from_schedule=True))
def test_schedule_plans_pack_exactly(case):
    _run_and_check(*case)


@given(packer_case(from_schedule=False))
@example((2, 16, np.array([[0, 32], [9, 23]]), 0, 10))  # a residual over two rows (the interleaving bug)
@example((1, 8, np.array([[5, 3], [8, 0]]), 0, 5))  # carry-over + a full-vision last step: does not fit
def test_arbitrary_plans_pack_exactly_or_say_why_not(case):
    _run_and_check(*case)


# ------------------------------------------------------------------------------------------ bad input
def _streams():
    log = Streams([], [])
    rng = np.random.default_rng(0)
    return text_stream(rng, 10, log), vision_stream(rng, 16, log)


GOOD = np.array([[4, 28], [8, 24]])


@pytest.mark.parametrize(
    "plan, rows, seq_len, match",
    [
        (GOOD[:, :1], 2, 16, "plan"),  # [steps, 1]
        (GOOD.reshape(-1), 2, 16, "plan"),  # 1-D
        (np.array([[-4, 36], [8, 24]]), 2, 16, "plan"),  # negative budget that still sums right
        (np.array([[4.5, 27.5], [8, 24]]), 2, 16, "plan"),  # fractional tokens
        (GOOD, 0, 16, "rows"),
        (GOOD, 2.0, 16, "rows"),
        (GOOD, True, 32, "rows"),
        (GOOD, 2, 1, "seq_len"),
        (GOOD, 2, "16", "seq_len"),
        (GOOD, 2, 15, r"rows\*seq_len"),  # rows don't sum to rows * seq_len
    ],
)
def test_bad_arguments(plan, rows, seq_len, match):
    text, vision = _streams()
    with pytest.raises(ValueError, match=match):
        MixedPacker(text, vision, plan, rows, seq_len, PAD, MB, ME)


@pytest.mark.parametrize(
    "vision_docs, text_docs, match",
    [
        ([Doc([MB] + [PAD] * 20 + [ME], [0])], None, "seq_len"),  # longer than a row
        ([Doc([], [])], None, "no tokens"),  # an empty image-text document
        ([], None, "vision_docs ran out"),
        (None, [Doc([1, 2], [0])], "text_docs yielded a document with media"),
        (None, [Doc([1, 2])], "text_docs ran out"),
    ],
)
def test_bad_streams(vision_docs, text_docs, match):
    text, vision = _streams()
    packer = MixedPacker(iter(text_docs) if text_docs is not None else text,
                         iter(vision_docs) if vision_docs is not None else vision,
                         np.array([[0, 32], [8, 24]]), 2, 16, PAD, MB, ME)
    with pytest.raises(ValueError, match=match):
        list(packer)
