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


def test_train_by_hand_matches_the_package_trainer(nb, tmp_path):
    """The notebook's ~20-line joint loop and the package Trainer give the same losses and weights."""
    import dataclasses

    from k25mini.config import nano
    from k25mini.experiments.ch05_fusion.stages import batch_from, lm_loss
    from k25mini.multimodal import K25ForConditionalGeneration
    from k25mini.pretrain.docs import doc_stream
    from k25mini.pretrain.packing import MixedPacker
    from k25mini.train import TrainConfig, Trainer
    from k25mini.world import TEXT_CORPORA, VISION_CORPORA, World

    tok, world = Tokenizer(), World(0, scale="smoke")
    torch.manual_seed(0)
    mine = K25ForConditionalGeneration(nano())
    torch.manual_seed(0)
    ref = K25ForConditionalGeneration(nano())
    n, rows, seq = 3, 2, 128
    steps = list(MixedPacker(doc_stream(world, TEXT_CORPORA, tok, mine.media_token_counts, seed=0),
                             doc_stream(world, VISION_CORPORA, tok, mine.media_token_counts, seed=0, max_len=seq),
                             token_plan(SCHEDULES["early"], n, rows * seq), rows, seq, tok.media_pad_id,
                             tok.media_begin_id, tok.media_end_id))
    cfg = TrainConfig(steps=n, lr=2e-3, warmup_steps=1, optimizer="muonclip", seed=0)
    hand = nb.train_by_hand(mine, steps, cfg)
    tr = Trainer(ref, lm_loss, lambda i: batch_from(steps[i]),
                 dataclasses.replace(cfg, out_dir=str(tmp_path), log_every=1, progress=False))
    tr.fit()
    package = [r["loss"] for r in tr.history if r.get("split") == "train"]
    assert len(hand) == len(package) == n and hand[-1] != hand[0]
    np.testing.assert_allclose(hand, package, rtol=1e-5, atol=1e-5)
    for p, q in zip(mine.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
