"""NaViT patch n' pack boundary (k25mini.vision.packing and the tower on top of it), property-based.

Invariants checked:

* for any list of chunk grids ``(t, h, w)``: ``cu_seqlens`` is int32, starts at 0, is strictly increasing, its
  steps are ``t*h*w`` and its end is the packed length, also for grids whose total would overflow int32 (those
  must raise, not wrap around);
* ``unpack(pack(items))`` gives the items back; segment ids, the block-diagonal mask, the RoPE (row, col) ids and
  the pad-to-max layout equal plain per-item loops;
* for any list of image / video sizes of at least one patch per side, the tower's packed forward equals each
  item encoded alone (and permuting the packing order permutes the outputs);
* bad grids and mismatched items raise a ValueError naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from prop_settings import examples

from k25mini.config import VisionConfig
from k25mini.vision import (
    VisionTower,
    block_diagonal_mask,
    cu_seqlens_from_grid,
    num_media_tokens,
    pack,
    pad_to_max,
    preprocess,
    rope_position_ids,
    segment_ids,
    unpack,
)

TINY = VisionConfig(patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    init_pos_emb_height=6, init_pos_emb_width=6, rope_max_height=32, rope_max_width=32,
                    min_patches=4, max_patches=64)
TEXT = 8
torch.manual_seed(0)
TOWER = VisionTower(TINY, TEXT).eval()
with torch.no_grad():  # non-trivial biases / norms so every parameter matters
    for _p in TOWER.parameters():
        _p.add_(0.05 * torch.randn_like(_p))

grid = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
grids = st.lists(grid, min_size=1, max_size=8)


@given(grids, st.integers(1, 5), st.integers(0, 2**16))
def test_pack_cu_seqlens_and_derived_layouts_equal_per_item_loops(gs, dim, seed):
    g = torch.Generator().manual_seed(seed)
    items = [torch.randn(t * h * w, dim, generator=g) for t, h, w in gs]
    b = pack(items, gs)
    cu = b.cu_seqlens
    lens = [t * h * w for t, h, w in gs]
    assert cu.dtype == torch.int32 and cu.shape == (len(gs) + 1,)
    assert cu[0].item() == 0 and cu[-1].item() == b.patches.shape[0] == sum(lens)
    assert b.seqlens == lens and bool((cu[1:] > cu[:-1]).all())
    assert b.grid_thw.tolist() == [list(x) for x in gs]
    back = unpack(b.patches, cu)
    assert len(back) == len(items)
    assert all(torch.equal(a, c) for a, c in zip(back, items))
    # derived layouts against loops
    seg = [i for i, n in enumerate(lens) for _ in range(n)]
    assert segment_ids(cu).tolist() == seg
    mask = block_diagonal_mask(cu)
    assert torch.equal(mask, torch.tensor([[a == c for c in seg] for a in seg], dtype=torch.bool))
    pos = [[r, c] for t, h, w in gs for _ in range(t) for r in range(h) for c in range(w)]
    assert rope_position_ids(b.grid_thw).tolist() == pos
    padded, valid = pad_to_max(b.patches, cu)
    assert padded.shape == (len(gs), max(lens), dim) and valid.sum().item() == sum(lens)
    for i, x in enumerate(items):
        assert torch.equal(padded[i, : lens[i]], x) and bool(valid[i, : lens[i]].all())
        assert not bool(valid[i, lens[i] :].any()) and bool((padded[i, lens[i] :] == 0).all())


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 2**20), st.integers(1, 2**20)), min_size=1, max_size=6))
@example([(1, 2**15, 2**16 - 1)])  # 2**31 - 2**15 patches: still fits
@example([(1, 2**16, 2**15), (1, 1, 1)])  # 2**31 + 1: would wrap to a negative int32
def test_cu_seqlens_never_wraps_around(gs):
    total = sum(t * h * w for t, h, w in gs)
    if total < 2**31:
        cu = cu_seqlens_from_grid(torch.tensor(gs))
        assert cu[-1].item() == total and bool((cu[1:] > cu[:-1]).all())
    else:
        with pytest.raises(ValueError, match="grid_thw"):
            cu_seqlens_from_grid(torch.tensor(gs))


@st.composite
def media_sizes(draw):
    """Images and videos of at least one patch per side, as uint8 arrays, plus a packing permutation."""
    media = []
    for _ in range(draw(st.integers(1, 5))):
        h, w = draw(st.integers(TINY.patch_size, 56)), draw(st.integers(TINY.patch_size, 56))
        t = draw(st.sampled_from([0, 0, 1, 2, 4, 6]))  # 0: an image
        seed = draw(st.integers(0, 2**16))
        media.append(np.random.default_rng(seed).integers(0, 256, (h, w, 3) if t == 0 else (t, h, w, 3), np.uint8))
    return media, draw(st.permutations(range(len(media))))


@examples(0.5)
@given(media_sizes())
def test_packed_tower_equals_each_item_alone(case):
    media, perm = case
    chunks = preprocess(media, TINY)
    assert len(chunks) == sum(1 if m.ndim == 3 else -(-m.shape[0] // 4) for m in media)
    counts = [num_media_tokens(*c.grid_thw, cfg=TINY) for c in chunks]
    b = pack([c.patches for c in chunks], [c.grid_thw for c in chunks])
    with torch.no_grad():
        packed = TOWER(b.patches, b.grid_thw)
        alone = [TOWER(c.patches, [c.grid_thw]) for c in chunks]
        order = [chunks[i] for i in perm]
        permuted = TOWER(torch.cat([c.patches for c in order]), [c.grid_thw for c in order])
    assert packed.shape == (sum(counts), TEXT)
    assert [a.shape[0] for a in alone] == counts
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    parts = torch.split(permuted, [counts[i] for i in perm])
    assert len(parts) == len(perm)
    for j, i in enumerate(perm):
        torch.testing.assert_close(parts[j], alone[i], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "bad",
    [
        [[1, 2]],  # not [N, 3]
        [[1, 2, 2, 2]],
        [[0, 2, 2]],  # an empty chunk
        [[1, -2, 2]],
        [[1.0, 2.0, 2.0]],  # float grid
        [[True, True, True]],  # bool grid
        [[1, 2**70, 2]],  # beyond int64
        [[1, 2**16, 2**16]],  # 2**32 patches: int32 cu_seqlens would wrap around
        [],
        torch.zeros(0, 3, dtype=torch.int64),  # no chunk at all
        "1,2,2",
    ],
)
def test_cu_seqlens_bad_grid(bad):
    with pytest.raises(ValueError, match="grid_thw"):
        cu_seqlens_from_grid(bad)


@pytest.mark.parametrize(
    "items, gs, match",
    [
        ([], [], "items"),
        ([torch.zeros(4, 3)], [(1, 2, 2), (1, 2, 2)], "same length"),
        ([torch.zeros(5, 3)], [(1, 2, 2)], r"items\[0\]"),
        ([torch.zeros(4, 3)], [(1, 0, 4)], "grids"),
    ],
)
def test_pack_bad_input(items, gs, match):
    with pytest.raises(ValueError, match=match):
        pack(items, gs)


def test_unpack_rejects_a_cu_seqlens_that_does_not_cover_x():
    with pytest.raises(ValueError, match="cu_seqlens"):
        unpack(torch.zeros(5, 2), torch.tensor([0, 2, 4], dtype=torch.int32))


@pytest.mark.parametrize(
    "gs, match",
    [
        ([(1, 3, 2)], "merge_kernel_size"),  # h not a multiple of the 2x2 merge
        ([(5, 2, 2)], "init_pos_emb_time"),  # a chunk longer than 4 frames
        ([(1, 34, 2)], "RoPE"),  # beyond rope_max_height
    ],
)
def test_tower_rejects_bad_grids(gs, match):
    n = sum(t * h * w for t, h, w in gs)
    with pytest.raises(ValueError, match=match):
        TOWER(torch.zeros(n, 3 * TINY.patch_size**2), gs)


def test_tower_rejects_rows_that_do_not_match_the_grid():
    with pytest.raises(ValueError, match="patches"):
        TOWER(torch.zeros(5, 3 * TINY.patch_size**2), [(1, 2, 2)])
