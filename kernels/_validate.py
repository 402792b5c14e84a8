"""Boundary checks shared by every MoE expert-compute path (reference, grouped torch, Triton).

Every failure is a ValueError that names the offending argument and what was expected, so a
caller (the MoE layer, a notebook) sees the mistake at the seam instead of deep inside a kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MoEShapes(NamedTuple):
    """Sizes of one MoE expert call: T tokens, K experts per token, E experts, D hidden, F expert FFN."""

    T: int
    K: int
    E: int
    D: int
    F: int


def check_moe_inputs(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    check_range: bool = True,
) -> MoEShapes:
    """Validate the fixed MoE interface and return its sizes.

    x [T, D] float; w_gate_up [E, D, 2F] (gate columns first, then up); w_down [E, F, D];
    topk_ids [T, K] int64 with values in [0, E); topk_weights [T, K] float.
    ``check_range`` reads topk_ids back to the host (one sync) to check the expert range.
    """
    for name, t in (("x", x), ("w_gate_up", w_gate_up), ("w_down", w_down), ("topk_ids", topk_ids),
                    ("topk_weights", topk_weights)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [T, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
    if w_gate_up.dim() != 3:
        raise ValueError(f"w_gate_up must be 3-D [E, D, 2F], got shape {tuple(w_gate_up.shape)}")
    E, D, two_f = w_gate_up.shape
    if D != x.shape[1]:
        raise ValueError(
            f"w_gate_up must be [E, D, 2F] with D = x.shape[1] = {x.shape[1]}, got {tuple(w_gate_up.shape)}"
        )
    if two_f == 0 or two_f % 2:
        raise ValueError(f"w_gate_up last dim must be 2F (even, > 0: gate then up), got {two_f}")
    if E == 0:
        raise ValueError("w_gate_up must hold at least one expert (E >= 1)")
    F = two_f // 2
    if w_down.dim() != 3 or tuple(w_down.shape) != (E, F, D):
        raise ValueError(f"w_down must be [E, F, D] = {(E, F, D)}, got shape {tuple(w_down.shape)}")
    for name, w in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        if w.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {w.dtype}")
    T = x.shape[0]
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise ValueError(f"topk_ids must be [T, K] with T = {T}, got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype != torch.int64:
        raise ValueError(f"topk_ids must be int64, got {topk_ids.dtype}")
    K = topk_ids.shape[1]
    if K == 0:
        raise ValueError("topk_ids must select at least one expert per token (K >= 1)")
    if tuple(topk_weights.shape) != (T, K):
        raise ValueError(f"topk_weights must be [T, K] = {(T, K)}, got shape {tuple(topk_weights.shape)}")
    if not topk_weights.is_floating_point():
        raise ValueError(f"topk_weights must be a floating tensor, got dtype {topk_weights.dtype}")
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down), ("topk_ids", topk_ids),
                    ("topk_weights", topk_weights)):
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    if check_range and topk_ids.numel() > 0:
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= E:
            raise ValueError(f"topk_ids values must lie in [0, E) = [0, {E}), got min {lo}, max {hi}")
    return MoEShapes(T, K, E, D, F)


def empty_moe_output(
    x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor
) -> torch.Tensor:
    """The [0, D] output for T = 0 (an expert-parallel rank can receive no tokens), still connected
    to every differentiable input so backward yields zero gradients instead of an autograd error."""
    return x + 0 * (w_gate_up.sum() + w_down.sum() + topk_weights.sum()).to(x.dtype)
