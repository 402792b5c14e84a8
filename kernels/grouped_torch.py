"""The fastest pure-PyTorch MoE expert path on CPU: sort assignments by expert, then grouped GEMMs.

Steps: flatten the T*K (token, slot) assignments, stable-sort them by expert, gather the token rows
once, run ``F.grouped_mm`` over the jagged expert groups for gate+up and for down, scale by the routing
weight and scatter-add back to tokens. ``F.grouped_mm`` wants int32 end offsets, row strides that
are multiples of 16 bytes, and a contiguous incoming gradient; where the strides don't line up (e.g.
bf16 with an odd hidden size) or the op is missing (older torch) we fall back to a loop over the
sorted expert slices, which is still far cheaper than masking every token for every expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_moe_inputs, empty_moe_output

HAS_GROUPED_MM = hasattr(F, "grouped_mm")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (F.grouped_mm's backward needs it)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return g.contiguous()


def grouped_mm_usable(dtype: torch.dtype, D: int, F_: int, device: torch.device | str = "cpu") -> bool:
    """Whether F.grouped_mm can run the [*, D] @ [D, 2F] and [*, F] @ [F, D] products here.

    Only float32/bf16/fp16 are accepted by the op. Row strides of every operand (D, 2F, F elements)
    must be multiples of 16 bytes; on CUDA the op only takes bf16 (and needs a recent GPU), so CUDA
    callers should prefer the Triton path.
    """
    if not HAS_GROUPED_MM or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    item = torch.empty((), dtype=dtype).element_size()
    if any((n * item) % 16 for n in (D, F_)):
        return False
    if torch.device(device).type == "cuda" and dtype != torch.bfloat16:
        return False
    return True


def sort_by_expert(topk_ids: torch.Tensor, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of the flattened assignments by expert.

    topk_ids [T, K] -> (order [T*K] int64: assignment index a = t*K + k in expert order,
    counts [E] int64: assignments per expert).
    """
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    return order, counts


def _grouped_matmul(a: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, use_gmm: bool) -> torch.Tensor:
    """Rows of ``a`` [N, d_in] are grouped by expert (``counts`` [E]); group e multiplies w[e] [d_in, d_out]."""
    if use_gmm:
        offs = torch.cumsum(counts, 0).to(torch.int32)
        return _ContiguousGrad.apply(F.grouped_mm(a, w, offs=offs))
    # fallback: one matmul per non-empty slice; unbind (not w[e]) so backward stacks E grads once
    sizes = counts.tolist()
    if a.shape[0] == 0:
        return a @ w[0]  # [0, d_out], still connected to w for autograd
    outs = [chunk @ w_e for chunk, w_e, n in zip(a.split(sizes), w.unbind(0), sizes) if n > 0]
    return torch.cat(outs, 0)


def moe_grouped_torch(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    use_grouped_mm: bool | None = None,
) -> torch.Tensor:
    """Same contract as ``moe_reference`` (x [T, D] -> [T, D]), computed with sorted grouped GEMMs.

    ``use_grouped_mm``: None picks F.grouped_mm when usable (see ``grouped_mm_usable``), False forces
    the sorted per-expert loop, True requires grouped_mm (ValueError if the shapes/dtype can't use it).
    """
    T, K, E, D, F_ = check_moe_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    usable = grouped_mm_usable(x.dtype, D, F_, x.device)
    if use_grouped_mm is None:
        use_grouped_mm = usable
    elif use_grouped_mm and not usable:
        raise ValueError(
            f"use_grouped_mm=True needs F.grouped_mm with 16-byte row strides; got dtype {x.dtype}, D={D}, F={F_}"
        )
    if T == 0:
        return empty_moe_output(x, w_gate_up, w_down, topk_weights)
    order, counts = sort_by_expert(topk_ids, E)
    token_of = order // K  # token index of each sorted assignment
    xs = x.index_select(0, token_of)  # [N, D]: the gather, done once
    gate_up = _grouped_matmul(xs, w_gate_up, counts, use_grouped_mm)  # [N, 2F]
    h = F.silu(gate_up[:, :F_]) * gate_up[:, F_:]
    y = _grouped_matmul(h, w_down, counts, use_grouped_mm)  # [N, D]
    w = topk_weights.reshape(-1).index_select(0, order).to(y.dtype)
    return torch.zeros_like(x).index_add(0, token_of, y * w.unsqueeze(-1))
