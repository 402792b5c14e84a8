"""Preprocessing, packing bookkeeping and the video chunk policy of k25mini.vision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from k25mini.config import VisionConfig, nano, small
from k25mini.vision import (
    block_diagonal_mask,
    chunk_frame_counts,
    cu_seqlens_from_grid,
    media_token_counts,
    pack,
    pad_to_max,
    padding_stats,
    patchify,
    preprocess,
    rope_position_ids,
    segment_ids,
    target_grid,
    to_float_frames,
    unpack,
    unpatchify,
)

NANO = nano().vision


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 0, 3), np.uint8), "empty"),
        (np.zeros((0, 10, 10, 3), np.uint8), "empty"),  # a video with no frames
        (np.zeros((10, 10, 4), np.uint8), "3 channels"),
        (np.zeros((10, 10), np.uint8), "shape"),
        (torch.zeros(1, 10, 10), "3 channels"),
        (torch.full((3, 8, 8), float("nan")), "non-finite"),
        (torch.full((3, 8, 8), float("inf")), "non-finite"),
        (torch.full((3, 8, 8), 2.0), r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), "unsupported dtype"),
        (torch.zeros((8, 8, 3), dtype=torch.int32), "unsupported dtype"),
        (torch.zeros((8, 8, 3), dtype=torch.bool), "unsupported dtype"),
        ([[1, 2, 3]], "numpy array or torch tensor"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_input(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        preprocess([_img(16, 16), bad], NANO)
    assert "media[1]" in str(e.value)  # names the offending input


def test_media_must_be_a_list():
    with pytest.raises(ValueError, match="media"):
        preprocess(_img(16, 16), NANO)


def test_uint8_and_float_inputs_agree():
    img = _img(24, 40)
    f = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    a, b = preprocess([img], NANO)[0], preprocess([f], NANO)[0]
    assert a.grid_thw == b.grid_thw
    torch.testing.assert_close(a.patches, b.patches, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- resize policy
@pytest.mark.parametrize("cfg", [NANO, small().vision])
def test_target_grid_respects_budget_alignment_and_aspect(cfg: VisionConfig):
    rng = np.random.default_rng(1)
    mh, mw = cfg.merge_kernel_size
    for _ in range(200):
        H, W = (int(x) for x in rng.integers(1, 2000, 2))
        h, w = target_grid(H, W, cfg)
        assert h % mh == 0 and w % mw == 0
        assert cfg.min_patches <= h * w <= cfg.max_patches
        assert h <= cfg.rope_max_height and w <= cfg.rope_max_width
        # aspect kept as well as whole merge units allow (log-ratio within one unit of rounding, unless clamped)
        if min(h // mh, w // mw) >= 3 and h < cfg.rope_max_height and w < cfg.rope_max_width:
            assert abs(math.log((h / w) / (H / W))) < math.log(2.0), (H, W, h, w)


def test_target_grid_keeps_native_size_when_it_fits():
    # 48 x 96 px at patch 8 is 6 x 12 patches = 72, inside [4, 256], multiples of 2: unchanged
    assert target_grid(48, 96, NANO) == (6, 12)
    # tiny images grow to the minimum budget; huge ones shrink into the maximum
    h, w = target_grid(3, 3, NANO)
    assert h * w >= NANO.min_patches
    h, w = target_grid(4000, 4000, NANO)
    assert h * w <= NANO.max_patches and h == w


def test_preprocess_normalises_with_half_mean_std():
    img = np.full((16, 16, 3), 255, np.uint8)
    ch = preprocess([img], NANO)[0]
    torch.testing.assert_close(ch.patches, torch.ones_like(ch.patches))
    ch = preprocess([np.zeros((16, 16, 3), np.uint8)], NANO)[0]
    torch.testing.assert_close(ch.patches, -torch.ones_like(ch.patches))


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 4 * 5, 6 * 5)
    p = patchify(x, 5)
    assert p.shape == (2 * 4 * 6, 3 * 25)
    torch.testing.assert_close(unpatchify(p, (2, 4, 6), 5), x)
    # patch (t=1, row=2, col=3) holds the pixels of that 5x5 square, channel-major like Conv2d weights
    idx = 1 * 24 + 2 * 6 + 3
    torch.testing.assert_close(p[idx].view(3, 5, 5), x[1, :, 10:15, 15:20])


# ---------------------------------------------------------------------------------------- video chunk policy
@pytest.mark.parametrize("T, want", [(1, [1]), (3, [3]), (4, [4]), (5, [4, 1]), (8, [4, 4]), (10, [4, 4, 2])])
def test_chunk_policy_last_chunk_keeps_the_remainder(T, want):
    assert chunk_frame_counts(T, 4) == want


def test_video_chunks_share_grid_and_frames_in_order():
    vid = np.random.default_rng(0).integers(0, 256, (7, 24, 40, 3), dtype=np.uint8)
    chunks = preprocess([vid], NANO)
    assert [c.grid_thw[0] for c in chunks] == [4, 3]
    assert len({c.grid_thw[1:] for c in chunks}) == 1
    assert [c.chunk for c in chunks] == [0, 1] and all(c.source == 0 for c in chunks)
    # the second chunk is exactly frames 4..6 preprocessed on their own
    alone = preprocess([vid[4:]], NANO)[0]
    torch.testing.assert_close(chunks[1].patches, alone.patches)
    h, w = chunks[0].grid_thw[1:]
    assert media_token_counts(vid, NANO) == [h * w // 4, h * w // 4]


def test_to_float_frames_shapes():
    assert to_float_frames(_img(5, 7)).shape == (1, 3, 5, 7)
    assert to_float_frames(np.zeros((2, 5, 7, 3), np.uint8)).shape == (2, 3, 5, 7)
    assert to_float_frames(torch.rand(2, 3, 5, 7)).shape == (2, 3, 5, 7)


# ---------------------------------------------------------------------------------------- packed bookkeeping
def test_pack_derivations():
    grids = [(1, 2, 4), (4, 2, 2), (1, 4, 2)]
    items = [torch.randn(t * h * w, 5) for t, h, w in grids]
    b = pack(items, grids)
    assert b.cu_seqlens.dtype == torch.int32
    assert b.cu_seqlens.tolist() == [0, 8, 24, 32]
    assert b.patches.shape == (32, 5) and b.seqlens == [8, 16, 8]
    for a, c in zip(unpack(b.patches, b.cu_seqlens), items):
        assert torch.equal(a, c)
    seg = segment_ids(b.cu_seqlens)
    assert seg.tolist() == [0] * 8 + [1] * 16 + [2] * 8
    m = block_diagonal_mask(b.cu_seqlens)
    assert m.sum().item() == 8 * 8 + 16 * 16 + 8 * 8 and m[7, 8].item() is False and m[8, 23].item() is True
    pos = rope_position_ids(b.grid_thw)
    assert pos.shape == (32, 2)
    assert pos[:8].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 2], [1, 3]]
    assert torch.equal(pos[8:12], pos[12:16])  # RoPE ids repeat over the frames of a chunk
    padded, valid = pad_to_max(b.patches, b.cu_seqlens)
    assert padded.shape == (3, 16, 5) and valid.sum().item() == 32
    st = padding_stats(b.seqlens)
    assert st["pad_tokens"] == 3 * 16 - 32 and st["wasted_fraction"] == pytest.approx(16 / 48)


@pytest.mark.parametrize(
    "grid, match",
    [
        ([[1, 2]], r"\[N, 3\]"),
        ([[0, 2, 2]], ">= 1"),
        ([[1.0, 2.0, 2.0]], "integer"),
        (torch.zeros(0, 3, dtype=torch.int64), "at least"),
    ],
)
def test_bad_grid_thw(grid, match):
    with pytest.raises(ValueError, match=match):
        cu_seqlens_from_grid(grid if isinstance(grid, torch.Tensor) else torch.tensor(grid))


def test_pack_rejects_row_mismatch():
    with pytest.raises(ValueError, match=r"items\[0\]"):
        pack([torch.randn(3, 2)], [(1, 2, 2)])
