"""Group baselines for policy-gradient RL without a critic.

K2.5 (and K1.5/K2) draw K responses per prompt and subtract the group's mean reward: A_j = r_j − mean(r).
There is no std normalisation in K2.5; GRPO divides by the group std, available here as an option.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_rewards(rewards: Tensor) -> None:
    if not isinstance(rewards, Tensor) or rewards.ndim != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B]; got {getattr(rewards, 'shape', type(rewards))}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating tensor; got dtype {rewards.dtype}")


def group_ids_from_size(batch_size: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """[B] group index for contiguous groups: responses j*K .. j*K+K-1 belong to prompt j."""
    if group_size < 1 or batch_size % group_size != 0:
        raise ValueError(f"group_size must be >= 1 and divide the batch size {batch_size}; got {group_size}")
    return torch.arange(batch_size, device=device) // group_size


def group_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    *,
    group_ids: Tensor | None = None,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Advantages [B] = reward minus its group's mean (optionally divided by the group's std + eps).

    Groups are either contiguous blocks of ``group_size`` or given by integer ``group_ids`` [B].
    The std is the sample std (Bessel-corrected, as torch.std / verl / TRL); a group of one response
    gets advantage 0. Vectorised with index_add, so groups may have different sizes.
    """
    _check_rewards(rewards)
    if (group_size is None) == (group_ids is None):
        raise ValueError("pass exactly one of group_size or group_ids")
    if group_ids is None:
        group_ids = group_ids_from_size(rewards.shape[0], int(group_size), rewards.device)
    if group_ids.shape != rewards.shape or group_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"group_ids must be an integer tensor of shape {tuple(rewards.shape)}")
    if group_ids.numel() and int(group_ids.min()) < 0:
        raise ValueError("group_ids must be non-negative")
    ids = group_ids.long()
    n_groups = int(ids.max()) + 1 if ids.numel() else 0
    r = rewards
    counts = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, ids, torch.ones_like(r))
    sums = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, ids, r)
    mean = sums / counts.clamp_min(1)
    centred = r - mean[ids]
    if not std_normalize:
        return centred
    sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, ids, centred**2)
    std = (sq / (counts - 1).clamp_min(1)).sqrt()
    adv = centred / (std[ids] + eps)
    # a singleton group has no spread: its centred reward is already 0, keep it exactly 0
    return torch.where(counts[ids] > 1, adv, torch.zeros_like(adv))
