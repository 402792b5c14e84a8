"""VisionTower (MoonViT-3D + tpool_patch_merger + projector): counts, packing equivalence, video, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k25mini.config import VisionConfig, count_params, k25, nano, small
from k25mini.vision import (
    VisionTower,
    apply_rope_2d,
    available_backends,
    num_media_tokens,
    pack,
    rope_angles,
    rope_frequencies,
    sincos_time_table,
    tpool_patch_merger,
)

TINY = VisionConfig(patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    init_pos_emb_height=6, init_pos_emb_width=6, rope_max_height=32, rope_max_width=32,
                    min_patches=4, max_patches=64)
TEXT = 24
# several shapes, one repeated (batched together by sdpa_loop), a 4-frame and a 3-frame chunk
GRIDS = [(1, 2, 4), (1, 4, 2), (4, 2, 2), (1, 6, 6), (1, 4, 2), (3, 2, 4)]


def _tower(cfg=TINY, dtype=torch.float32, seed=0) -> VisionTower:
    torch.manual_seed(seed)
    tw = VisionTower(cfg, TEXT).to(dtype)
    with torch.no_grad():  # non-trivial biases / norms so every parameter matters
        for p in tw.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tw


def _items(grids, cfg=TINY, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t * h * w, 3 * cfg.patch_size**2, generator=g, dtype=dtype) for t, h, w in grids]


# ---------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("make", [nano, small])
def test_parameter_count_matches_config(make):
    cfg = make()
    tw = VisionTower(cfg.vision, cfg.text.hidden_size)
    comp = count_params(cfg).by_component
    proj = sum(p.numel() for p in tw.projector.parameters())
    assert proj == comp["projector"]
    assert sum(p.numel() for p in tw.parameters()) - proj == comp["vision_tower"]
    assert "patch_embed.pos_emb.time_weight" not in dict(tw.named_parameters())  # a fixed buffer


def test_k25_tower_builds_on_meta_with_exact_count():
    cfg = k25()
    with torch.device("meta"):
        tw = VisionTower(cfg.vision, cfg.text.hidden_size)
    comp = count_params(cfg).by_component
    assert sum(p.numel() for p in tw.parameters()) == comp["vision_tower"] + comp["projector"]
    assert tw.patch_embed.proj.weight.shape == (1152, 3, 14, 14)
    assert tw.projector.linear_2.weight.shape == (7168, 4608)
    assert len(tw.encoder.blocks) == 27 and tw.encoder.blocks[0].mlp.fc0.weight.shape == (4304, 1152)


# ---------------------------------------------------------------------------------------- packed == per image
@pytest.mark.parametrize("backend", available_backends("cpu", torch.float32, requires_grad=False))
def test_packed_forward_equals_each_item_alone(backend):
    tw = _tower()
    items = _items(GRIDS)
    b = pack(items, GRIDS)
    with torch.no_grad():
        packed = tw(b.patches, b.grid_thw, backend=backend)
        alone = torch.cat([tw(x, [g], backend=backend) for x, g in zip(items, GRIDS)])
    assert packed.shape == (sum(num_media_tokens(*g, cfg=TINY) for g in GRIDS), TEXT)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", available_backends("cpu", torch.float32, requires_grad=True))
def test_packed_gradients_equal_per_item_gradients(backend):
    tw = _tower()
    items = _items(GRIDS)
    w = torch.randn(sum(num_media_tokens(*g, cfg=TINY) for g in GRIDS), TEXT)

    def grads(run):
        tw.zero_grad()
        leaves = [x.clone().requires_grad_(True) for x in items]
        (run(leaves) * w).sum().backward()
        return [x.grad for x in leaves] + [p.grad.clone() for p in tw.parameters()]

    packed = grads(lambda xs: tw(torch.cat(xs), GRIDS, backend=backend))
    alone = grads(lambda xs: torch.cat([tw(x, [g], backend=backend) for x, g in zip(xs, GRIDS)]))
    for a, b in zip(packed, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_permuting_the_packing_order_permutes_the_outputs():
    tw = _tower()
    items = _items(GRIDS)
    perm = [3, 0, 5, 2, 4, 1]
    counts = [num_media_tokens(*g, cfg=TINY) for g in GRIDS]
    with torch.no_grad():
        base = torch.split(tw(torch.cat(items), GRIDS), counts)
        permuted = torch.split(tw(torch.cat([items[i] for i in perm]), [GRIDS[i] for i in perm]),
                               [counts[i] for i in perm])
    for j, i in enumerate(perm):
        torch.testing.assert_close(permuted[j], base[i], atol=1e-5, rtol=1e-5)


def test_pixel_patch_layout_is_accepted():
    tw = _tower()
    x = _items([(1, 2, 2)])[0]
    with torch.no_grad():
        torch.testing.assert_close(tw(x.view(-1, 3, 4, 4), [[1, 2, 2]]), tw(x, [[1, 2, 2]]))


# ---------------------------------------------------------------------------------------- video
def _video(T, H=20, W=36, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("k", [1, 2])
def test_video_of_4k_frames_has_a_quarter_of_the_image_tokens(k):
    tw = _tower()
    vid = _video(4 * k)
    with torch.no_grad():
        (v,) = tw.encode([vid])
        frames = tw.encode(list(vid))
    assert 4 * v.shape[0] == sum(f.shape[0] for f in frames)
    assert v.shape[1] == TEXT


def test_one_frame_video_equals_the_image_path():
    tw = _tower()
    vid = _video(1)
    with torch.no_grad():
        a, b = tw.encode([vid, vid[0]])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_video_length_not_a_multiple_of_4_keeps_a_short_last_chunk():
    tw = _tower()
    vid = _video(6)
    with torch.no_grad():
        chunks = tw.encode([vid], per_chunk=True)
        (whole,) = tw.encode([vid])
        (last,) = tw.encode([vid[4:]])  # frames 4, 5 as their own 2-frame clip
        (first,) = tw.encode([vid[:4]])
    n = chunks[0].shape[0]
    assert len(chunks) == 2 and chunks[1].shape[0] == n and whole.shape[0] == 2 * n
    torch.testing.assert_close(chunks[1], last, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunks[0], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, torch.cat(chunks))


def test_temporal_pool_merger_matches_a_loop():
    grids = [[3, 4, 2], [1, 2, 6]]
    x = torch.randn(sum(t * h * w for t, h, w in grids), 5)
    out = tpool_patch_merger(x, grids, (2, 2))
    ref, start = [], 0
    for t, h, w in grids:
        frames = x[start : start + t * h * w].view(t, h, w, 5)
        start += t * h * w
        for i in range(h // 2):
            for j in range(w // 2):
                ref.append(torch.stack([frames[:, 2 * i + a, 2 * j + b].mean(0) for a in (0, 1) for b in (0, 1)]))
    torch.testing.assert_close(out, torch.stack(ref))


# ---------------------------------------------------------------------------------------- positions
def test_rope_matches_complex_reference_and_is_relative():
    d = 8
    pos = torch.tensor([[0, 0], [3, 1], [2, 5]])
    ang = rope_angles(pos, d, 100.0, torch.float64)
    f = 100.0 ** (-torch.arange(0, d, 4, dtype=torch.float64) / d)
    torch.testing.assert_close(rope_frequencies(d, 100.0, torch.float64), f)
    x = torch.randn(3, 2, d, dtype=torch.float64)
    xc = torch.view_as_complex(x.view(3, 2, d // 2, 2))
    # pair 2k turns by col * f_k, pair 2k+1 by row * f_k
    want_ang = torch.stack([pos[:, 1:2] * f, pos[:, 0:1] * f], dim=-1).flatten(1)
    ref = torch.view_as_real(xc * torch.polar(torch.ones_like(want_ang), want_ang)[:, None]).flatten(-2)
    torch.testing.assert_close(apply_rope_2d(x, ang), ref)
    # <R(a) q, R(b) k> depends only on a - b
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def score(a, b):
        pa = rope_angles(torch.tensor([a]), d, 100.0, torch.float64)
        pb = rope_angles(torch.tensor([b]), d, 100.0, torch.float64)
        return (apply_rope_2d(q.view(1, 1, d), pa) * apply_rope_2d(k.view(1, 1, d), pb)).sum()

    torch.testing.assert_close(score([2, 3], [1, 1]), score([5, 9], [4, 7]))
    assert not torch.allclose(score([2, 3], [1, 1]), score([3, 2], [1, 1]))  # rows and cols are distinct axes


def test_position_table_native_size_and_time_term():
    tw = _tower()
    pe = tw.patch_embed.pos_emb
    torch.testing.assert_close(pe([[1, 6, 6]]), pe.weight.flatten(0, 1))
    two = pe([[2, 4, 2]])
    torch.testing.assert_close(two[8:] - two[:8], (pe.time_weight[1] - pe.time_weight[0]).expand(8, -1))
    tt = sincos_time_table(4, 16)
    assert torch.equal(tt[0], torch.cat([torch.zeros(8), torch.ones(8)]))


# ---------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_float64_through_packing_rope_attention_merger():
    # 1x1 patches and width 4 keep the input count small; the 3x3 table is resized to 2x2 / 2x4 (bicubic path)
    cfg = VisionConfig(patch_size=1, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                       init_pos_emb_height=3, init_pos_emb_width=3, rope_max_height=8, rope_max_width=8,
                       min_patches=4, max_patches=16)
    torch.manual_seed(0)
    tw = VisionTower(cfg, 3).double()
    grids = [[1, 2, 2], [2, 2, 4]]  # an image and a 2-frame chunk (time table + temporal pool)
    patches = torch.randn(4 + 16, 3, dtype=torch.float64, requires_grad=True)
    table = tw.patch_embed.pos_emb.weight.detach().clone().requires_grad_(True)
    params = {k: v for k, v in tw.named_parameters() if k != "patch_embed.pos_emb.weight"}

    def f(x, tab):
        return torch.func.functional_call(tw, {**params, "patch_embed.pos_emb.weight": tab}, (x, grids))

    assert torch.autograd.gradcheck(f, (patches, table), atol=1e-6)


# ---------------------------------------------------------------------------------------- bad forward inputs
def test_forward_rejects_bad_packed_inputs():
    tw = _tower()
    x = _items([(1, 2, 2)])[0]
    with pytest.raises(ValueError, match="patches"):
        tw(x[:, :5], [[1, 2, 2]])
    with pytest.raises(ValueError, match="sum"):
        tw(x[:3], [[1, 2, 2]])
    with pytest.raises(ValueError, match="merge"):
        tw(torch.randn(3, 48), [[1, 1, 3]])
    with pytest.raises(ValueError, match="t=5"):
        tw(torch.randn(20, 48), [[5, 2, 2]])
    with pytest.raises(ValueError, match="float"):
        tw(x.long(), [[1, 2, 2]])
    with pytest.raises(ValueError, match="RoPE"):
        tw(torch.randn(34 * 2, 48), [[1, 34, 2]])
    with pytest.raises(ValueError, match="text_hidden_size"):
        VisionTower(TINY, 0)
