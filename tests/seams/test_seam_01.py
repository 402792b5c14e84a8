"""Seam: notebook 01's from-scratch definitions agree with k25mini.vision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import k25mini.vision as kv
from k25mini.config import nano, small
from seam import load_notebook_defs

NB = "notebooks/01_navit_packing.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.mark.parametrize("cfg", [nano().vision, small().vision])
def test_grid_for_matches_target_grid(nb, cfg):
    rng = np.random.default_rng(0)
    for _ in range(300):
        H = int(rng.integers(4, 600))
        W = int(np.clip(H * np.exp(rng.uniform(-np.log(3), np.log(3))), 4, 600))
        want = kv.target_grid(H, W, cfg)
        got = nb.grid_for(H, W, cfg.patch_size, 2, cfg.min_patches, cfg.max_patches)
        assert got == want, (H, W)


def test_patches_pack_and_mask_match(nb):
    cfg = nano().vision
    pics = [nb.make_picture(h, w, seed=i) for i, (h, w) in enumerate([(24, 40), (50, 30), (8, 8)])]
    assert all(p.dtype == np.uint8 and p.shape == (h, w, 3) for p, (h, w) in zip(pics, [(24, 40), (50, 30), (8, 8)]))
    chunks = kv.preprocess(pics, cfg)
    assert len(chunks) == len(pics)  # one chunk per picture, so the zips below compare every one
    grids = [c.grid_thw[1:] for c in chunks]
    ours = [nb.image_to_patches(p, cfg.patch_size, g) for p, g in zip(pics, grids)]
    for o, c in zip(ours, chunks, strict=True):
        torch.testing.assert_close(o, c.patches)
    tokens, grid_thw, cu = nb.pack_patches(ours, grids)
    ref = kv.pack([c.patches for c in chunks], [c.grid_thw for c in chunks])
    torch.testing.assert_close(tokens, ref.patches)
    assert torch.equal(grid_thw, ref.grid_thw) and torch.equal(cu, ref.cu_seqlens)
    assert torch.equal(nb.block_diagonal(cu), kv.block_diagonal_mask(cu))


def test_attention_and_rope_match(nb):
    torch.manual_seed(0)
    cu = torch.tensor([0, 4, 13, 14, 30], dtype=torch.int32)
    q, k, v = (torch.randn(30, 2, 8) for _ in range(3))
    torch.testing.assert_close(nb.attention_per_item(q, k, v, cu), kv.varlen_attention(q, k, v, cu),
                               atol=1e-5, rtol=1e-5)
    pos = kv.rope_position_ids([[1, 3, 5], [2, 2, 4]])
    x = torch.randn(pos.shape[0], 2, 8)
    ours = nb.rope_2d(x, pos[:, 0].double(), pos[:, 1].double(), 100.0)
    theirs = kv.apply_rope_2d(x, kv.rope_angles(pos, 8, 100.0))
    torch.testing.assert_close(ours, theirs)


def test_layout_and_sizes(nb):
    packed, padded = nb.layout_images([3, 5, 1], row=4)
    assert packed.shape == (3, 4) and (packed == -1).sum() == 3
    assert padded.shape == (3, 5) and (padded >= 0).sum() == 9
    sizes = nb.random_sizes(50, seed=1)
    assert all(1 <= min(s) and max(s) <= 128 for s in sizes)
    assert nb.HEAD_DIM_K25 == 72
