"""The pure-PyTorch routed-expert path: sort assignments by expert, then grouped GEMMs.

This module is the single implementation of that path in the project: the MoE layer's ``torch``
backend (``k25mini.model.experts.experts_torch``) is a thin call into ``moe_grouped_torch``.

Steps for x [T, D] and T*K (token, slot) assignments:

1. stable-sort the assignments by expert and gather the token rows once ([T*K, D], contiguous);
2. gate+up and down as two ``F.grouped_mm`` calls over the jagged expert groups, with the routing
   weight applied to the F-wide SwiGLU activation (the down projection is linear, so this equals
   weighting the D-wide output, with fewer multiplies);
3. un-sort with a gather and sum the K slots of each token. A gather is deterministic; a
   scatter-add (``index_add``) is not on CUDA.

``F.grouped_mm`` wants float32/bf16/fp16 operands whose strides, base pointers and row sizes are
multiples of 16 bytes, int32 end offsets and a contiguous incoming gradient; whether it runs at all
(forward and backward) for a device type and dtype is probed once and cached. Where it can't run
(e.g. bf16 with an odd hidden size, float64, older torch) the fallback is one matmul pair per
non-empty expert on the sorted slices, which is still far cheaper than masking every token for
every expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_moe_inputs, empty_moe_output

HAS_GROUPED_MM = hasattr(F, "grouped_mm")
_GMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_GMM_PROBE: dict[tuple[str, torch.dtype], bool] = {}


def _grouped_mm_runs(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether F.grouped_mm exists and runs forward + backward for this device type and dtype (probed once)."""
    device = torch.device(device)
    key = (device.type, dtype)
    if key not in _GMM_PROBE:
        ok = HAS_GROUPED_MM and dtype in _GMM_DTYPES
        if ok:
            try:
                # the probe needs autograd even when the first real call comes from no_grad / inference code
                with torch.inference_mode(False), torch.enable_grad():
                    a = torch.zeros(4, 8, device=device, dtype=dtype, requires_grad=True)
                    b = torch.zeros(2, 8, 8, device=device, dtype=dtype, requires_grad=True)
                    offs = torch.tensor([2, 4], device=device, dtype=torch.int32)
                    y = F.grouped_mm(a, b, offs=offs)
                    y.backward(torch.ones_like(y))
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                ok = False
        _GMM_PROBE[key] = ok
    return _GMM_PROBE[key]


def _aligned16(t: torch.Tensor) -> bool:
    """Unit last stride; every other stride, the base pointer and the row size are multiples of 16 bytes."""
    es = t.element_size()
    if t.stride(-1) != 1 or t.data_ptr() % 16 or (t.shape[-1] * es) % 16:
        return False
    return not any(s != 1 and (s * es) % 16 for s in t.stride())


def grouped_mm_supported(a: torch.Tensor, *bs: torch.Tensor) -> bool:
    """True if ``F.grouped_mm(a, b, offs=...)`` can run for each b: dtype, device and 16-byte alignment."""
    if a.dtype not in _GMM_DTYPES or any(b.dtype != a.dtype for b in bs):
        return False
    if not all(_aligned16(t) for t in (a, *bs)):
        return False
    return _grouped_mm_runs(a.device, a.dtype)


def grouped_mm_usable(dtype: torch.dtype, D: int, F_: int, device: torch.device | str = "cpu") -> bool:
    """Whether F.grouped_mm can run the [*, D] @ [D, 2F] and [*, F] @ [F, D] products here.

    Checks the dtype, the 16-byte rule for rows of D and F elements (what ``moe_grouped_torch``'s freshly
    allocated activations need; the weights' own layout is checked separately) and the cached probe.
    """
    if dtype not in _GMM_DTYPES:
        return False
    item = torch.empty((), dtype=dtype).element_size()
    if any((n * item) % 16 for n in (D, F_)):
        return False
    return _grouped_mm_runs(device, dtype)


def sort_by_expert(topk_ids: torch.Tensor, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of the flattened assignments by expert.

    topk_ids [T, K] -> (order [T*K] int64: assignment index a = t*K + k in expert order,
    counts [E] int64: assignments per expert).
    """
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    return order, counts


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    broadcast (stride-0) or transposed grads, e.g. the one that ``y.sum().backward()`` produces."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return g.contiguous()


def _gmm(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` [N, d_in] grouped by expert (int32 end offsets ``offs`` [E]) times w [E, d_in, d_out]."""
    return _ContiguousGrad.apply(F.grouped_mm(a, w, offs=offs))


def _per_expert_mm(a: torch.Tensor, w: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Fallback for ``_gmm``: one matmul per non-empty expert slice. a [N, d_in] (N > 0), sizes [E] -> [N, d_out]."""
    # unbind (not w[e]) so backward stacks E slice grads once instead of E full-size zero tensors
    return torch.cat([chunk @ w_e for chunk, w_e, n in zip(a.split(sizes), w.unbind(0), sizes) if n > 0])


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

    ``use_grouped_mm``: None picks F.grouped_mm when it can run (``grouped_mm_usable`` for the dtype,
    device and sizes, plus 16-byte aligned weights), False forces the sorted per-expert loop, True
    requires grouped_mm (ValueError if it can't run here). T = 0 returns an empty [0, D] output still
    attached to every differentiable input (an expert-parallel rank may receive no tokens).
    """
    T, K, E, D, F_ = check_moe_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    usable = grouped_mm_usable(x.dtype, D, F_, x.device) and _aligned16(w_gate_up) and _aligned16(w_down)
    if use_grouped_mm is None:
        use_grouped_mm = usable
    elif use_grouped_mm and not usable:
        raise ValueError(
            "use_grouped_mm=True needs F.grouped_mm running for this device/dtype with 16-byte aligned rows and "
            f"strides; got {x.device.type} {x.dtype}, D={D}, F={F_}"
        )
    if T == 0:
        return empty_moe_output(x, w_gate_up, w_down, topk_weights)
    order, counts = sort_by_expert(topk_ids, E)
    rows = x.index_select(0, order // K)  # [N, D]: the gather, done once; fresh, so contiguous and aligned
    ws = topk_weights.reshape(-1).index_select(0, order).to(x.dtype).unsqueeze(-1)  # [N, 1] in sorted order
    if use_grouped_mm:
        offs = counts.cumsum(0).to(torch.int32)
        mm = lambda a, w: _gmm(a, w, offs)
    else:
        sizes = counts.tolist()
        mm = lambda a, w: _per_expert_mm(a, w, sizes)
    h = mm(rows, w_gate_up)  # [N, 2F]
    # SwiGLU and the routing weight once over all N rows (not per expert slice: E times fewer small ops)
    y = mm(F.silu(h[:, :F_]) * h[:, F_:] * ws, w_down)  # [N, D]
    # un-sort with a gather (deterministic, unlike a scatter-add), then add up the K slots of each token
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return y.index_select(0, inv).view(T, K, D).sum(1)
