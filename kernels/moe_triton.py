"""The Triton MoE expert path: launchers for each kernel, PyTorch references for each piece, and
the ``autograd.Function`` that chains them (forward and backward both in Triton).

Forward (x [T, D] -> out [T, D]):
  1. ``moe_align``        routing metadata (histogram, padded offsets, stable sort)        [routing.py]
  2. ``gate_up_swiglu``   gathered x rows @ w_gate_up[e], SwiGLU   -> GU, H  (padded rows)
  3. ``down_proj``        H @ w_down[e] * routing weight           -> Y [N, D] (assignment rows)
  4. ``combine``          out[t] = sum_k Y[t*K + k]
Backward (dOut [T, D]):
  5. ``down_backward_dh`` dH_raw = dOut[tok] @ w_down[e]^T -> d topk_weights partials, SwiGLU bwd -> dGU
  6. ``down_backward_dw`` dW_down[e] = (w * H)^T @ dOut[tok]
  7. ``gate_up_backward_dw`` dW_gate_up[e] = x[tok]^T @ dGU
  8. ``gate_up_backward_dx`` dX partial = dGU @ w_gate_up[e]^T, then ``combine`` over k
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton

from . import moe_kernels as K_
from ._validate import check_moe_inputs, empty_moe_output
from .routing import RoutingMeta, moe_align

#: Triton picks the interpreter when this is set before ``import triton`` (tests/conftest.py does it).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and numerics. GPU tl.dot needs every block >= 16; the interpreter takes any size."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    upcast: bool = False  # cast loaded tiles to fp32 (forced on under the interpreter)
    precision: str = "ieee"  # tl.dot input_precision for fp32 inputs: "ieee" or "tf32"

    def validate(self, on_gpu: bool) -> TileConfig:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v!r}")
            if on_gpu and v < 16:
                raise ValueError(f"{name} must be >= 16 on GPU (tl.dot tile minimum), got {v}")
        if self.precision not in ("ieee", "tf32"):
            raise ValueError(f"precision must be 'ieee' or 'tf32', got {self.precision!r}")
        return self


def default_tiles(device: torch.device) -> TileConfig:
    """Reasonable tiles: 64/64/32 on GPU; small ones under the interpreter (every program is Python)."""
    if device.type == "cuda":
        return TileConfig()
    return TileConfig(block_m=16, block_n=16, block_k=16, upcast=True)


def _check_runnable(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"moe_triton needs CUDA tensors or TRITON_INTERPRET=1 set before triton is imported; x is on {x.device}"
        )


def _check_meta(meta: RoutingMeta, tiles: TileConfig) -> None:
    # a mismatch would make kernels read sorted_ids past its end and write out of bounds
    if tiles.block_m != meta.block_m:
        raise ValueError(f"tiles.block_m ({tiles.block_m}) must equal the routing meta's block_m ({meta.block_m})")


def _upcast(tiles: TileConfig, dtype: torch.dtype) -> bool:
    return tiles.upcast or INTERPRET or dtype == torch.float32


# ------------------------------------------------------------------------- forward pieces
def gate_up_swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, meta: RoutingMeta,
                   tiles: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped GEMM 1 with the gather fused into the load: returns GU [R, 2F] and H [R, F] in padded rows."""
    _check_meta(meta, tiles)
    if x.dim() != 2 or x.shape[0] * meta.top_k != meta.num_assignments or x.shape[1] != w_gate_up.shape[1]:
        raise ValueError(f"x must be [T, D] with T*K = {meta.num_assignments} assignments and D = "
                         f"{w_gate_up.shape[1]}, got shape {tuple(x.shape)}")
    E, D, F2 = w_gate_up.shape
    F_ = F2 // 2
    R = meta.sorted_ids.numel()
    gu = torch.empty(R, F2, dtype=x.dtype, device=x.device)
    h = torch.empty(R, F_, dtype=x.dtype, device=x.device)
    grid = (meta.block_expert.numel(), triton.cdiv(F_, tiles.block_n))
    K_._gate_up_swiglu_fwd_kernel[grid](
        x, w_gate_up, gu, h, meta.sorted_ids, meta.block_expert,
        meta.num_assignments, D, F_,
        x.stride(0), x.stride(1), *w_gate_up.stride(), *gu.stride(), *h.stride(),
        TOP_K=meta.top_k, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        UPCAST=_upcast(tiles, x.dtype), PRECISION=tiles.precision,
    )
    return gu, h


def down_proj(h: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor | None, meta: RoutingMeta,
              tiles: TileConfig) -> torch.Tensor:
    """Grouped GEMM 2: Y[a] = topk_weights[a] * H[row(a)] @ w_down[e]  -> [N, D] float32 (assignment order)."""
    _check_meta(meta, tiles)
    if h.dim() != 2 or h.shape[0] != meta.sorted_ids.numel() or h.shape[1] != w_down.shape[1]:
        raise ValueError(f"h must be [R, F] = [{meta.sorted_ids.numel()}, {w_down.shape[1]}] (padded rows), "
                         f"got shape {tuple(h.shape)}")
    if topk_weights is not None and topk_weights.numel() != meta.num_assignments:
        raise ValueError(f"topk_weights must hold {meta.num_assignments} weights, got {topk_weights.numel()}")
    E, F_, D = w_down.shape
    y = torch.empty(meta.num_assignments, D, dtype=torch.float32, device=h.device)
    tw = topk_weights.reshape(-1).contiguous() if topk_weights is not None else y  # y: unused dummy pointer
    grid = (meta.block_expert.numel(), triton.cdiv(D, tiles.block_n))
    K_._down_fwd_kernel[grid](
        h, w_down, tw, y, meta.sorted_ids, meta.block_expert,
        meta.num_assignments, F_, D,
        *h.stride(), *w_down.stride(), *y.stride(),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        UPCAST=_upcast(tiles, h.dtype), PRECISION=tiles.precision, APPLY_WEIGHT=topk_weights is not None,
    )
    return y


def combine(y: torch.Tensor, top_k: int, out_dtype: torch.dtype | None = None,
            block_r: int = 16, block_c: int = 64) -> torch.Tensor:
    """Sum each group of ``top_k`` consecutive rows: y [R*top_k, C] -> [R, C] (fp32 accumulation)."""
    if y.dim() != 2 or y.shape[0] % top_k:
        raise ValueError(f"y must be [R*top_k, C] with top_k={top_k}, got shape {tuple(y.shape)}")
    R, C = y.shape[0] // top_k, y.shape[1]
    out = torch.empty(R, C, dtype=out_dtype or y.dtype, device=y.device)
    if R == 0 or C == 0:
        return out
    block_c = min(block_c, triton.next_power_of_2(C))
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    K_._combine_kernel[grid](y, out, R, C, top_k, *y.stride(), *out.stride(), BLOCK_R=block_r, BLOCK_C=block_c)
    return out


# ------------------------------------------------------------------------- references of the pieces
def gate_up_swiglu_reference(x: torch.Tensor, w_gate_up: torch.Tensor,
                             meta: RoutingMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch GU, H in padded row layout (padding rows are zero), fp32 math."""
    F_ = w_gate_up.shape[2] // 2
    R = meta.sorted_ids.numel()
    gu = torch.zeros(R, 2 * F_, dtype=torch.float32, device=x.device)
    rows = torch.arange(R, device=x.device)
    ids = meta.sorted_ids.long()
    valid = ids < meta.num_assignments
    expert = meta.block_expert.long().repeat_interleave(meta.block_m)
    for e in expert[valid].unique().tolist():
        sel = rows[valid & (expert == e)]
        gu[sel] = x[ids[sel] // meta.top_k].float() @ w_gate_up[e].float()
    h = F.silu(gu[:, :F_]) * gu[:, F_:]
    return gu, h


def down_proj_reference(h: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor | None,
                        meta: RoutingMeta) -> torch.Tensor:
    """PyTorch Y [N, D] in assignment order."""
    D = w_down.shape[2]
    y = torch.zeros(meta.num_assignments, D, dtype=torch.float32, device=h.device)
    ids = meta.sorted_ids.long()
    valid = ids < meta.num_assignments
    expert = meta.block_expert.long().repeat_interleave(meta.block_m)
    for e in expert[valid].unique().tolist():
        sel = valid & (expert == e)
        y[ids[sel]] = h[sel].float() @ w_down[e].float()
    if topk_weights is not None:
        y = y * topk_weights.reshape(-1, 1).float()
    return y


def combine_reference(y: torch.Tensor, top_k: int) -> torch.Tensor:
    return y.view(-1, top_k, y.shape[1]).sum(1)


# ------------------------------------------------------------------------- backward pieces
def down_backward_dh(dout: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor, h: torch.Tensor,
                     gu: torch.Tensor, meta: RoutingMeta, tiles: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns dGU [R, 2F] (padded rows, x dtype) and d topk_weights [T, K] float32."""
    _check_meta(meta, tiles)
    E, F_, D = w_down.shape
    nfb = triton.cdiv(F_, tiles.block_n)
    dgu = torch.empty_like(gu)
    dtw_part = torch.empty(meta.num_assignments, nfb, dtype=torch.float32, device=dout.device)
    tw = topk_weights.reshape(-1).contiguous()
    grid = (meta.block_expert.numel(), nfb)
    K_._down_bwd_dh_kernel[grid](
        dout, w_down, tw, h, gu, dgu, dtw_part, meta.sorted_ids, meta.block_expert,
        meta.num_assignments, F_, D, nfb,
        *dout.stride(), *w_down.stride(), *h.stride(), *gu.stride(),
        TOP_K=meta.top_k, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        UPCAST=_upcast(tiles, dout.dtype), PRECISION=tiles.precision,
    )
    # sum the per-F-block partials in a fixed order (no atomics): combine with top_k = nfb, C = 1
    dtw = combine(dtw_part.view(-1, 1), nfb).view(-1, meta.top_k)
    return dgu, dtw


def down_backward_dw(h: torch.Tensor, topk_weights: torch.Tensor, dout: torch.Tensor, w_down_shape: torch.Size,
                     meta: RoutingMeta, tiles: TileConfig, dtype: torch.dtype) -> torch.Tensor:
    _check_meta(meta, tiles)
    E, F_, D = w_down_shape
    dw = torch.empty(E, F_, D, dtype=dtype, device=h.device)
    tw = topk_weights.reshape(-1).contiguous()
    grid = (E, triton.cdiv(F_, tiles.block_n), triton.cdiv(D, tiles.block_k))
    K_._down_bwd_dw_kernel[grid](
        h, tw, dout, dw, meta.sorted_ids, meta.padded_offsets,
        meta.num_assignments, F_, D,
        *h.stride(), *dout.stride(), *dw.stride(),
        TOP_K=meta.top_k, BLOCK_M=tiles.block_m, BLOCK_F=tiles.block_n, BLOCK_D=tiles.block_k,
        UPCAST=_upcast(tiles, dout.dtype), PRECISION=tiles.precision,
    )
    return dw


def gate_up_backward_dw(x: torch.Tensor, dgu: torch.Tensor, E: int, meta: RoutingMeta,
                        tiles: TileConfig) -> torch.Tensor:
    _check_meta(meta, tiles)
    D, F2 = x.shape[1], dgu.shape[1]
    dw = torch.empty(E, D, F2, dtype=x.dtype, device=x.device)
    grid = (E, triton.cdiv(D, tiles.block_k), triton.cdiv(F2, tiles.block_n))
    K_._gate_up_bwd_dw_kernel[grid](
        x, dgu, dw, meta.sorted_ids, meta.padded_offsets,
        meta.num_assignments, D, F2,
        *x.stride(), *dgu.stride(), *dw.stride(),
        TOP_K=meta.top_k, BLOCK_M=tiles.block_m, BLOCK_D=tiles.block_k, BLOCK_N=tiles.block_n,
        UPCAST=_upcast(tiles, x.dtype), PRECISION=tiles.precision,
    )
    return dw


def gate_up_backward_dx(dgu: torch.Tensor, w_gate_up: torch.Tensor, meta: RoutingMeta,
                        tiles: TileConfig) -> torch.Tensor:
    """dX partials [N, D] float32 in assignment order (combine over k gives dX)."""
    _check_meta(meta, tiles)
    E, D, F2 = w_gate_up.shape
    dxp = torch.empty(meta.num_assignments, D, dtype=torch.float32, device=dgu.device)
    grid = (meta.block_expert.numel(), triton.cdiv(D, tiles.block_n))
    K_._gate_up_bwd_dx_kernel[grid](
        dgu, w_gate_up, dxp, meta.sorted_ids, meta.block_expert,
        meta.num_assignments, D, F2,
        *dgu.stride(), *w_gate_up.stride(), *dxp.stride(),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        UPCAST=_upcast(tiles, dgu.dtype), PRECISION=tiles.precision,
    )
    return dxp


# ------------------------------------------------------------------------- autograd
class MoETritonFunction(torch.autograd.Function):
    """Grouped SwiGLU experts; gradients for x, w_gate_up, w_down and topk_weights (not topk_ids)."""

    @staticmethod
    def forward(ctx, x, w_gate_up, w_down, topk_weights, topk_ids, tiles):  # noqa: D102
        E = w_gate_up.shape[0]
        x, w_gate_up, w_down = x.contiguous(), w_gate_up.contiguous(), w_down.contiguous()
        meta = moe_align(topk_ids, E, tiles.block_m)
        gu, h = gate_up_swiglu(x, w_gate_up, meta, tiles)
        y = down_proj(h, w_down, topk_weights, meta, tiles)
        out = combine(y, meta.top_k, out_dtype=x.dtype)
        ctx.save_for_backward(x, w_gate_up, w_down, topk_weights, gu, h, *meta[:4])
        ctx.meta_scalars = meta[4:]
        ctx.tiles = tiles
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        x, w_gate_up, w_down, topk_weights, gu, h, *meta_tensors = ctx.saved_tensors
        meta = RoutingMeta(*meta_tensors, *ctx.meta_scalars)
        tiles = ctx.tiles
        dout = dout.to(x.dtype).contiguous()
        dgu, dtw = down_backward_dh(dout, w_down, topk_weights, h, gu, meta, tiles)
        dw_down = down_backward_dw(h, topk_weights, dout, w_down.shape, meta, tiles, w_down.dtype)
        dw_gate_up = gate_up_backward_dw(x, dgu, w_gate_up.shape[0], meta, tiles)
        dx = combine(gate_up_backward_dx(dgu, w_gate_up, meta, tiles), meta.top_k, out_dtype=x.dtype)
        return dx, dw_gate_up, dw_down, dtw.to(topk_weights.dtype), None, None


def moe_triton(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``moe_reference`` (x [T, D] -> [T, D]), forward and backward in Triton.

    Runs on CUDA tensors, or on CPU when TRITON_INTERPRET=1 was set before triton was imported.
    ``tiles`` overrides the block sizes / numerics (see ``TileConfig``; defaults from ``default_tiles``).
    """
    shapes = check_moe_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    _check_runnable(x)
    tiles = (tiles or default_tiles(x.device)).validate(on_gpu=x.device.type == "cuda" and not INTERPRET)
    if shapes.T == 0:  # e.g. an expert-parallel rank that received no tokens: keep the graph connected
        return empty_moe_output(x, w_gate_up, w_down, topk_weights)
    return MoETritonFunction.apply(x, w_gate_up, w_down, topk_weights, topk_ids, tiles)
