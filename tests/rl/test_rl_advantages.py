"""Group-mean baseline: vectorised == loop (verl-style check)."""

from __future__ import annotations

import pytest
import torch

from k25mini.rl import group_advantages

D = torch.float64


def _loop(rewards, ids, std_normalize, eps=1e-6):
    out = torch.zeros_like(rewards)
    for gid in set(ids.tolist()):
        idx = [i for i in range(len(ids)) if ids[i] == gid]
        vals = rewards[idx]
        mean = sum(vals.tolist()) / len(idx)
        for i in idx:
            a = rewards[i].item() - mean
            if std_normalize:
                if len(idx) == 1:
                    a = 0.0
                else:
                    var = sum((v - mean) ** 2 for v in vals.tolist()) / (len(idx) - 1)
                    a = a / (var**0.5 + eps)
            out[i] = a
    return out


@pytest.mark.parametrize("std_normalize", [False, True])
def test_contiguous_groups_match_loop(std_normalize):
    r = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=D)
    got = group_advantages(r, 4, std_normalize=std_normalize)
    ids = torch.arange(12) // 4
    torch.testing.assert_close(got, _loop(r, ids, std_normalize), rtol=1e-12, atol=1e-14)
    if not std_normalize:
        assert torch.allclose(got.view(3, 4).sum(1), torch.zeros(3, dtype=D), atol=1e-14)


@pytest.mark.parametrize("std_normalize", [False, True])
def test_ragged_group_ids_match_loop(std_normalize):
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.9, 0.0], dtype=D)
    ids = torch.tensor([2, 0, 0, 3, 2, 2, 0])  # group 1 empty, group 3 a singleton
    got = group_advantages(r, group_ids=ids, std_normalize=std_normalize)
    torch.testing.assert_close(got, _loop(r, ids, std_normalize), rtol=1e-12, atol=1e-14)
    assert got[3] == 0.0


def test_constant_group_gives_zero_advantage_even_with_std():
    r = torch.full((4,), 0.7, dtype=D)
    assert torch.all(group_advantages(r, 4, std_normalize=True) == 0)


def test_bad_inputs():
    r = torch.zeros(6, dtype=D)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 4)
    with pytest.raises(ValueError, match="exactly one"):
        group_advantages(r)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(r, group_ids=torch.zeros(5, dtype=torch.long))
