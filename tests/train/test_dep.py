"""DEP (Decoupled Encoder Process): the decoupled step leaves the coupled step's gradients; the 1F1B simulator and
the balance comparison behave."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from k25mini.config import k25, nano
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.train.dep import balance_media, coupled_step, decoupled_step, dep_balance, simulate_pipeline

torch.set_num_threads(1)


def _batch(model):
    """Three rows of 24 tokens: text only, one image, an image and a 5-frame video (mixed image/text batch)."""
    rng = np.random.default_rng(0)
    media = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
             rng.integers(0, 256, (40, 24, 3), dtype=np.uint8),
             rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)]
    counts = [sum(model.media_token_counts(m)) for m in media]
    pad = model.pad_id
    rows = [[], [256] + [pad] * counts[0] + [259], [256] + [pad] * counts[1] + [259, 256] + [pad] * counts[2] + [259]]
    S = max(len(r) for r in rows) + 6
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 250, (3, S), generator=g)
    for b, r in enumerate(rows):
        ids[b, 2:2 + len(r)] = torch.tensor(r)
    labels = torch.roll(ids, -1, dims=1).masked_fill(torch.roll(ids, -1, dims=1) == pad, -100)
    return ids, labels, media


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("vision_ranks", [1, 2, 3])
def test_decoupled_step_gives_the_coupled_gradients(vision_ranks):
    torch.manual_seed(0)
    model = K25ForConditionalGeneration(nano()).train()
    ids, labels, media = _batch(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    la = coupled_step(a, ids, labels, media, aux=True)
    lb = decoupled_step(b, ids, labels, media, vision_ranks=vision_ranks, aux=True)
    torch.testing.assert_close(lb, la, atol=1e-6, rtol=1e-6)
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    vision = [n for n in ga if n.startswith("vision_tower")]
    assert vision and all(ga[n].abs().sum() > 0 for n in vision)  # the vision tower really gets gradients
    worst = max((ga[n] - gb[n]).abs().max().item() for n in ga)
    print(f"vision_ranks={vision_ranks}: max |grad diff| = {worst:.3g}")
    assert worst < 1e-5, worst  # fp32; a share encoded alone differs from the packed batch in the last bits
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-5, rtol=1e-4)


def test_decoupled_step_text_only_and_bad_inputs():
    torch.manual_seed(0)
    model = K25ForConditionalGeneration(nano())
    ids = torch.randint(0, 250, (2, 10))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    coupled_step(a, ids, ids)
    decoupled_step(b, ids, ids)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad is None) == (pb.grad is None), n
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad)
    with pytest.raises(ValueError, match="vision_ranks"):
        decoupled_step(model, ids, ids, vision_ranks=0)
    with pytest.raises(ValueError, match="labels"):
        decoupled_step(model, ids, ids[:, :3])
    with pytest.raises(ValueError, match="model"):
        coupled_step(torch.nn.Linear(2, 2), ids, ids)


def test_balance_media_lpt():
    costs = [7, 5, 4, 3, 1]
    shares = balance_media(costs, 2)
    loads = sorted(sum(costs[i] for i in s) for s in shares)
    assert loads == [10, 10] and sorted(i for s in shares for i in s) == [0, 1, 2, 3, 4]
    assert balance_media([], 3) == [[], [], []]
    with pytest.raises(ValueError, match="ranks"):
        balance_media([1.0], 0)
    with pytest.raises(ValueError, match="costs"):
        balance_media([-1.0], 2)


def test_simulate_pipeline_uniform_1f1b():
    # P stages, M micro-batches, forward f and backward 2f: (M + P - 1) * 3f
    for P, M in ((1, 3), (4, 4), (4, 8), (3, 2)):
        assert simulate_pipeline([[1.0] * M] * P, [[2.0] * M] * P) == pytest.approx((M + P - 1) * 3.0)
    with pytest.raises(ValueError, match="fwd and bwd"):
        simulate_pipeline([], [])


def test_dep_balance_gain_on_mixed_batches():
    r = dep_balance(k25(), stages=8, micro_batches=32, image_prob=0.5)
    assert r["t_coupled"] > r["t_text_only"] and r["t_dep"] < r["t_coupled"]
    assert r["efficiency_dep"] > r["efficiency_coupled"] and r["speedup_dep"] > 1
    text = dep_balance(k25(), stages=8, micro_batches=32, image_prob=0.0)
    assert text["t_coupled"] == text["t_dep"] == text["t_text_only"]
    with pytest.raises(ValueError, match="image_prob"):
        dep_balance(k25(), image_prob=1.5)
