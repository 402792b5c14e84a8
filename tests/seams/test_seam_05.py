"""Seam: notebook 05's from-scratch early fusion and token plans agree with the package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k25mini.data import Tokenizer
from k25mini.multimodal import scatter_media
from k25mini.pretrain.fusion_schedule import SCHEDULES, schedule_for_share, token_plan
from seam import load_notebook_defs

NB = "notebooks/05_early_fusion_pretraining.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


def test_expand_placeholders_matches_tokenizer(nb):
    tok = Tokenizer()
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(0, 4))
        ids = [int(t) for t in rng.integers(0, 256, 6)]
        for _ in range(n):
            ids.insert(int(rng.integers(0, len(ids) + 1)), tok.media_pad_id)
        counts = [int(c) for c in rng.integers(1, 9, n)]
        assert nb.expand_placeholders(ids, counts, tok.media_pad_id) == tok.expand_media(ids, counts)
    with pytest.raises(ValueError):
        nb.expand_placeholders([1, tok.media_pad_id], [2, 3], tok.media_pad_id)


def test_fuse_media_matches_scatter(nb):
    torch.manual_seed(0)
    ids = torch.tensor([[1, 258, 258, 2, 258], [258, 3, 4, 258, 258]])
    emb, media = torch.randn(2, 5, 8), torch.randn(6, 8)
    torch.testing.assert_close(nb.fuse_media(emb, ids, media, 258), scatter_media(emb, ids, media, 258))
    with pytest.raises(ValueError):
        nb.fuse_media(emb, ids, media[:5], 258)


@pytest.mark.parametrize("steps,tps", [(10, 7), (100, 512), (37, 1000)])
def test_plan_tokens_matches_token_plan(nb, steps, tps):
    for s in [*SCHEDULES.values(), schedule_for_share(0.3, 0.2), schedule_for_share(0.9, 0.05)]:
        assert np.array_equal(nb.plan_tokens(s.inject_at, s.vision_ratio, steps, tps), token_plan(s, steps, tps))
