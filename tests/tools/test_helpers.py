"""The kernel helpers (k25mini.tools.helpers) on small hand-made images, outside the sandbox."""

from __future__ import annotations

import numpy as np
import pytest

from k25mini.tools import helpers as H


def _scene() -> np.ndarray:
    img = np.full((20, 30, 3), 255, np.uint8)
    img[2:5, 2:5] = (200, 30, 30)  # red square
    img[10:18, 4:6] = (30, 30, 200)  # blue bar, height 8
    img[13:18, 8:11] = (30, 30, 200)  # blue bar, height 5
    img[6:9, 20:28] = (0, 0, 0)  # black rectangle
    return img


def test_crop_and_gray():
    img = _scene()
    c = H.crop(img, 2, 2, 5, 5)
    assert c.shape == (3, 3, 3) and (c == (200, 30, 30)).all()
    assert H.crop(img, -5, -5, 100, 100).shape == img.shape  # clipped
    with pytest.raises(ValueError, match="empty crop"):
        H.crop(img, 5, 5, 5, 9)
    g = H.to_gray(img)
    assert g.shape == (20, 30) and g[0, 0] == pytest.approx(255.0) and g[7, 21] == 0.0
    with pytest.raises(TypeError, match="numpy array"):
        H.to_gray([[1, 2]])


def test_masks_components_and_bars():
    img = _scene()
    dark = H.threshold(img)
    assert H.count_components(dark) == 4
    assert H.count_components(dark, min_size=16) == 2  # sizes 9, 16, 15, 24
    assert H.count_components(dark, min_size=20) == 1
    blue = H.color_mask(img, (30, 30, 200), tol=5)
    assert blue.sum() == 8 * 2 + 5 * 3
    assert H.bar_heights(blue) == [8, 5]
    assert H.unique_colors(img, top=1) == [((255, 255, 255), 600 - 9 - 16 - 15 - 24)]


def test_components_connectivity_and_long_shapes():
    m = np.zeros((9, 9), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    assert H.count_components(m, connectivity=4) == 2
    assert H.count_components(m, connectivity=8) == 1
    spiral = np.zeros((41, 41), bool)  # one long snake: needs many propagation steps without pointer jumping
    spiral[::2, :] = True
    for i, r in enumerate(range(1, 41, 2)):
        spiral[r, 40 if i % 2 == 0 else 0] = True
    labels, n = H.label_components(spiral)
    assert n == 1 and labels[spiral].min() == 1 and labels[~spiral].max() == 0
    with pytest.raises(ValueError, match="connectivity"):
        H.label_components(m, connectivity=6)


def test_helper_list_is_complete():
    assert len(H.HELPERS) > 0
    for name in H.HELPERS:
        assert callable(getattr(H, name)), name
