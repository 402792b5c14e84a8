"""Seam: notebook 02's from-scratch definitions agree with k25mini.vision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import k25mini.vision as kv
from k25mini.config import nano
from seam import load_notebook_defs

NB = "notebooks/02_moonvit3d_video.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


def test_chunks_time_table_and_mask(nb):
    for T in range(1, 14):
        assert nb.split_into_chunks(T, 4) == kv.chunk_frame_counts(T, 4)
    torch.testing.assert_close(nb.time_table(4, 48), kv.sincos_time_table(4, 48))
    grids = [(1, 2, 4), (4, 2, 2), (3, 4, 2)]
    assert torch.equal(nb.space_time_mask(grids), kv.block_diagonal_mask(kv.cu_seqlens_from_grid(grids)))


def test_tpool_merge_and_projector(nb):
    torch.manual_seed(0)
    grids = [(4, 4, 6), (3, 2, 2), (1, 6, 4)]
    x = torch.randn(sum(t * h * w for t, h, w in grids), 8)
    ours, start = [], 0
    for t, h, w in grids:
        ours.append(nb.tpool_merge(x[start : start + t * h * w], t, h, w))
        start += t * h * w
    torch.testing.assert_close(torch.cat(ours), kv.tpool_patch_merger(x, [list(g) for g in grids]))
    proj = nb.Projector(8, 5, 1e-5)
    ref = kv.PatchMergerProjector(8, 4, 5, 1e-5)
    ref.load_state_dict({"pre_norm.weight": proj.norm.weight, "pre_norm.bias": proj.norm.bias,
                         "linear_1.weight": proj.fc1.weight, "linear_1.bias": proj.fc1.bias,
                         "linear_2.weight": proj.fc2.weight, "linear_2.bias": proj.fc2.bias})
    with torch.no_grad():
        torch.testing.assert_close(proj(torch.cat(ours)), ref(torch.cat(ours)))


def test_video_maker_and_motion_dataset(nb):
    v = nb.make_video(5, 20, 30, "right", step=3, start=(2, 1), size=4)
    assert v.shape == (5, 20, 30, 3) and v.dtype == np.uint8
    cols = [np.nonzero((v[t] != v[t, 0, -1]).any(-1).any(0))[0].min() for t in range(5)]
    assert cols == [1, 4, 7, 10, 13]
    clips, y = nb.motion_dataset(12, seed=0)
    assert len(clips) == 12 and y.shape == (12,) and all(c.shape == (4, 32, 32, 3) for c in clips)
    # a clip and its reverse average to the same frame set: the frame-by-frame path cannot tell them apart
    tw = kv.VisionTower(nano().vision, 16)
    with torch.no_grad():
        a = torch.stack(tw.encode(list(clips[0]))).mean(0)
        b = torch.stack(tw.encode(list(clips[0][::-1]))).mean(0)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_probe_learns_a_separable_problem(nb):
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()
    assert nb.probe_accuracy(x[:150], y[:150], x[150:], y[150:], steps=200) > 0.9
