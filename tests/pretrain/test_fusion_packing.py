import numpy as np
import pytest

from k25mini.pretrain.fusion_schedule import SCHEDULES, token_plan
from k25mini.pretrain.packing import IGNORE, Doc, MixedPacker

PAD, MB, ME = 258, 256, 259


def text_docs(seed):
    rng = np.random.default_rng(seed)
    while True:
        yield Doc(list(rng.integers(0, 200, rng.integers(3, 40))))


def vision_docs(seed):
    rng = np.random.default_rng(seed + 1)
    k = 0
    while True:
        n_pad = int(rng.integers(2, 12))
        cap = list(rng.integers(0, 200, rng.integers(1, 15)))
        yield Doc([MB] + [PAD] * n_pad + [ME] + cap, media=[("img", k, n_pad)])
        k += 1


def packer(name, steps=20, rows=3, seq=64, seed=0):
    plan = token_plan(SCHEDULES[name], steps, rows * seq)
    return MixedPacker(text_docs(seed), vision_docs(seed), plan, rows, seq, PAD, MB, ME), plan


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_schedules_consume_identical_totals(seed):
    totals = {}
    for name in SCHEDULES:
        p, plan = packer(name, seed=seed)
        steps = list(p)
        v = sum(s.vision_tokens for s in steps)
        t = sum(s.text_tokens for s in steps)
        assert v == plan[:, 0].sum() and t == plan[:, 1].sum()
        totals[name] = (v, t)
    assert len(set(totals.values())) == 1


def test_vision_tracks_plan_within_one_document():
    p, plan = packer("mid", steps=30)
    cum_plan = np.cumsum(plan[:, 0])
    used = 0
    steps = list(p)
    assert len(steps) == len(plan) == 30
    for i, s in enumerate(steps):
        used += s.vision_tokens
        assert 0 <= cum_plan[i] - used <= 64  # carry-over below one document
        if i < 15:
            assert s.vision_tokens == 0 and not s.media


def test_rows_documents_labels_positions():
    p, _ = packer("early", steps=5, rows=2, seq=48)
    steps = list(p)
    assert len(steps) == 5
    for s in steps:
        assert s.input_ids.shape == (2, 48)
        n_spans = int((s.input_ids == MB).sum())
        assert len(s.media) == n_spans
        for r in range(2):
            ids, lab, did, pos = s.input_ids[r], s.labels[r], s.doc_ids[r], s.position_ids[r]
            assert (np.diff(did) >= 0).all()
            for j in range(47):
                if did[j] != did[j + 1]:
                    assert lab[j] == IGNORE and pos[j + 1] == 0
                elif ids[j + 1] == PAD:
                    assert lab[j] == IGNORE
                else:
                    assert lab[j] == ids[j + 1] and pos[j + 1] == pos[j] + 1
            assert lab[-1] == IGNORE
            # every media span is whole inside one row
            assert (ids == MB).sum() == (ids == ME).sum()


def test_media_order_matches_spans():
    p, _ = packer("early", steps=3, rows=2, seq=64)
    s = p.next_step()
    flat = s.input_ids.reshape(-1)
    runs, i = [], 0
    while i < len(flat):
        if flat[i] == PAD:
            j = i
            while j < len(flat) and flat[j] == PAD:
                j += 1
            runs.append(j - i)
            i = j
        else:
            i += 1
    assert runs == [m[2] for m in s.media]


def test_bad_arguments():
    plan = token_plan(SCHEDULES["early"], 4, 64)
    with pytest.raises(ValueError, match="plan"):
        MixedPacker(text_docs(0), vision_docs(0), plan[:, :1], 1, 64, PAD, MB, ME)
    with pytest.raises(ValueError, match="rows"):
        MixedPacker(text_docs(0), vision_docs(0), plan, 0, 64, PAD, MB, ME)
    with pytest.raises(ValueError, match="rows\\*seq_len"):
        MixedPacker(text_docs(0), vision_docs(0), plan, 2, 64, PAD, MB, ME)
    big = iter([Doc([MB] + [PAD] * 100 + [ME], media=[0])])
    with pytest.raises(ValueError, match="seq_len"):
        MixedPacker(text_docs(0), big, plan, 1, 64, PAD, MB, ME).next_step()
