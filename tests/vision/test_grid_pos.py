"""``VisionConfig.grid_pos_emb`` (issue #15): the merged-grid position tables added after the projector."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from k25mini.config import VisionConfig, count_params, preset
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.vision.merger import GridPosition, PatchMergerProjector


def _nano(grid: bool) -> K25ForConditionalGeneration:
    mc = preset("nano")
    torch.manual_seed(0)
    vision = dataclasses.replace(mc.vision, grid_pos_emb=grid)
    return K25ForConditionalGeneration(dataclasses.replace(mc, vision=vision))


def _linear_ref(table: np.ndarray, n: int) -> np.ndarray:
    """align_corners=False linear resampling, written out in float64: output i samples source x = (i+0.5)*L/n-0.5,
    clamped to [0, L-1]."""
    L = table.shape[0]
    out = np.zeros((n, table.shape[1]))
    for i in range(n):
        x = min(max((i + 0.5) * L / n - 0.5, 0.0), L - 1)
        lo = int(np.floor(x))
        hi = min(lo + 1, L - 1)
        f = x - lo
        out[i] = (1 - f) * table[lo] + f * table[hi]
    return out


@pytest.mark.parametrize("h,w", [(3, 3), (1, 5), (16, 16), (6, 2), (20, 24)])
def test_grid_position_matches_float64_reference(h, w):
    torch.manual_seed(1)
    g = GridPosition(16, 12, 8).double()
    got = g([(h, w)]).detach().numpy()
    r, c = _linear_ref(g.row.detach().numpy(), h), _linear_ref(g.col.detach().numpy(), w)
    ref = (r[:, None, :] + c[None, :, :]).reshape(h * w, -1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_grid_position_same_size_is_the_table_and_chunks_concatenate():
    g = GridPosition(4, 4, 3)
    out = g([(4, 4), (2, 2)])
    assert out.shape == (20, 3)
    torch.testing.assert_close(out[5], g.row[1] + g.col[1])  # row-major: token 5 of a 4x4 grid is (1, 1)
    assert g([]).shape == (0, 3)


def test_off_by_default_and_param_count():
    assert VisionConfig().grid_pos_emb is False and preset("nano").vision.grid_pos_emb is False
    for grid in (False, True):
        m = _nano(grid)
        assert (m.vision_tower.projector.grid_pos is not None) == grid
        assert sum(p.numel() for p in m.parameters()) == count_params(m.config).total
    with pytest.raises(ValueError, match="grid_pos_emb"):
        VisionConfig(grid_pos_emb=1)


def test_tower_adds_row_plus_column_per_merged_token_for_images_and_videos():
    on, off = _nano(True), _nano(False)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if ".grid_pos." not in k})
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)  # merged grid 3 x 6
    vid = rng.integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)  # two chunks of 3 x 3
    with torch.no_grad():
        a, b = on.vision_tower.encode([img, vid]), off.vision_tower.encode([img, vid])
        gp = on.vision_tower.projector.grid_pos
        ref_img, ref_chunk = gp([(3, 6)]), gp([(3, 3)])
    torch.testing.assert_close(a[0] - b[0], ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1] - b[1], torch.cat([ref_chunk, ref_chunk]), atol=1e-6, rtol=0)
    assert not torch.allclose(ref_img[0], ref_img[1])  # neighbouring tokens differ


def test_grid_position_gets_gradients():
    m = _nano(True)
    img = np.zeros((48, 48, 3), dtype=np.uint8)
    m.vision_tower.encode([img])[0].sum().backward()
    assert m.vision_tower.projector.grid_pos.row.grad.abs().sum() > 0


def test_projector_bad_grids():
    p = PatchMergerProjector(8, 4, 6, grid_table=(4, 4))
    x = torch.randn(9, 4, 8)
    with pytest.raises(ValueError, match="grids"):
        p(x)
    with pytest.raises(ValueError, match="cover 4 tokens"):
        p(x, [(2, 2)])
    assert p(x, [(3, 3)]).shape == (9, 6)


def test_published_export_refuses_grid_tables():
    from k25mini.interop import to_published

    m = _nano(True)
    with pytest.raises(ValueError, match="grid_pos_emb"):
        to_published(m, m.config)
