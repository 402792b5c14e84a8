"""The obviously-correct MoE expert computation: a plain loop over experts.

Every faster path (grouped torch, Triton) is tested against this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_moe_inputs, empty_moe_output


def swiglu_expert(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One expert: x [n, D], w_gate_up [D, 2F], w_down [F, D] -> [n, D]."""
    f = w_down.shape[0]
    gate = x @ w_gate_up[:, :f]
    up = x @ w_gate_up[:, f:]
    return (F.silu(gate) * up) @ w_down


def moe_reference(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """out[t] = sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]).

    x [T, D]; w_gate_up [E, D, 2F]; w_down [E, F, D]; topk_ids [T, K] int64; topk_weights [T, K].
    Returns [T, D] in x's dtype. Differentiable by autograd in every input except topk_ids.
    """
    shapes = check_moe_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    if shapes.T == 0:
        return empty_moe_output(x, w_gate_up, w_down, topk_weights)
    out = torch.zeros_like(x)
    # unbind once (not w[e] per expert): autograd then stacks the E weight grads once instead of
    # materialising a full-size zero gradient per expert, which a ModuleList of experts never pays
    for e, (w_gu_e, w_down_e) in enumerate(zip(w_gate_up.unbind(0), w_down.unbind(0))):
        # which (token, slot) pairs chose expert e; a token may pick e in several slots
        tok, slot = torch.where(topk_ids == e)
        if tok.numel() == 0:
            continue
        y = swiglu_expert(x[tok], w_gu_e, w_down_e)
        out = out.index_add(0, tok, y * topk_weights[tok, slot].unsqueeze(-1).to(y.dtype))
    return out
