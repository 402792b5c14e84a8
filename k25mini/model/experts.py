"""Grouped routed experts and their compute backends.

Every backend computes the same function, for x [T, D], topk_ids / topk_weights [T, K]::

    y_t = sum_k  topk_weights[t, k] * SwiGLU_e(x_t),  e = topk_ids[t, k]
    SwiGLU_e(x) = (silu(x W_gu[e][:, :F]) * (x W_gu[e][:, F:])) W_down[e]

with ``w_gate_up`` [E, D, 2F] (columns [:F] gate, [F:] up) and ``w_down`` [E, F, D].

Backends (``backend=``):

* ``eager``: the reference, a Mixtral-style loop over experts with a boolean mask per expert.
* ``torch``: ``kernels.moe_grouped_torch`` (kernels/grouped_torch.py holds the one implementation): sort the T*K
  (token, expert) pairs by expert, gather rows once, run two grouped GEMMs (``torch.nn.functional.grouped_mm``
  where it runs: float32/bf16/fp16 with 16-byte aligned rows and strides; otherwise one matmul per expert on
  contiguous slices), un-sort with a gather and sum the K results per token. ``grouped_mm_supported`` is
  re-exported from there.
* ``triton``: ``kernels.moe_triton`` (gather fused into the load, SwiGLU fused into the gate/up GEMM).

``None`` / ``"auto"`` picks ``triton`` for CUDA tensors and ``torch`` otherwise, at call time.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

try:
    from kernels.grouped_torch import grouped_mm_supported, moe_grouped_torch
except ModuleNotFoundError as err:  # another distribution named `kernels` (Hugging Face's hub) shadows ours
    if err.name != "kernels.grouped_torch":
        raise
    raise ImportError(
        f"`import kernels` found {getattr(importlib.import_module('kernels'), '__file__', None)}, not k25mini's "
        "kernels/ folder (another package named 'kernels' is installed; see docs/layout.md)"
    ) from err

__all__ = [
    "BACKENDS",
    "GroupedExperts",
    "check_backend",
    "resolve_backend",
    "experts_eager",
    "experts_torch",
    "experts_triton",
    "grouped_mm_supported",
]

BACKENDS = ("eager", "torch", "triton")
ExpertFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_backend(backend: str | None) -> str | None:
    """Validate a backend name; None and "auto" mean choose per device."""
    if backend is None or backend == "auto":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None/'auto', got {backend!r}")
    return backend


def _check_inputs(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, ids: torch.Tensor,
                  weights: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [T, D], got shape {tuple(x.shape)}")
    T, D = x.shape
    if w_gate_up.dim() != 3 or w_gate_up.shape[1] != D or w_gate_up.shape[2] % 2:
        raise ValueError(f"w_gate_up must be [E, {D}, 2F], got shape {tuple(w_gate_up.shape)}")
    E, F2 = w_gate_up.shape[0], w_gate_up.shape[2]
    if tuple(w_down.shape) != (E, F2 // 2, D):
        raise ValueError(f"w_down must be [{E}, {F2 // 2}, {D}], got shape {tuple(w_down.shape)}")
    if ids.dim() != 2 or ids.shape[0] != T or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be an integer [{T}, K] tensor, got {ids.dtype} {tuple(ids.shape)}")
    if tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(f"topk_weights must have topk_ids' shape {tuple(ids.shape)}, got {tuple(weights.shape)}")


def experts_eager(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_ids: torch.Tensor,
                  topk_weights: torch.Tensor) -> torch.Tensor:
    """Reference: loop over experts, select each expert's (token, slot) pairs with a mask. Returns [T, D]."""
    _check_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    Fh = w_down.shape[1]
    out = torch.zeros_like(x)
    for e in range(w_gate_up.shape[0]):
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = x[tok] @ w_gate_up[e]
        y = (F.silu(h[:, :Fh]) * h[:, Fh:]) @ w_down[e]
        out = out.index_add(0, tok, y * topk_weights[tok, slot].unsqueeze(-1).to(y.dtype))
    return out


def experts_torch(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_ids: torch.Tensor,
                  topk_weights: torch.Tensor) -> torch.Tensor:
    """Sort by expert + grouped GEMMs: ``kernels.moe_grouped_torch`` (see module docstring). Returns [T, D]."""
    _check_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    return moe_grouped_torch(x, w_gate_up, w_down, topk_ids.long(), topk_weights)


def experts_triton(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_ids: torch.Tensor,
                   topk_weights: torch.Tensor) -> torch.Tensor:
    """``kernels.moe_triton`` (imported lazily: it needs triton, a Linux-only dependency). Returns [T, D]."""
    _check_inputs(x, w_gate_up, w_down, topk_ids, topk_weights)
    fn = _load_moe_triton()
    if fn is None:
        raise RuntimeError("backend='triton' needs kernels.moe_triton (the kernels/ package) to be importable")
    return fn(x, w_gate_up, w_down, topk_ids, topk_weights)


_FNS: dict[str, ExpertFn] = {"eager": experts_eager, "torch": experts_torch, "triton": experts_triton}
_WARNED_NO_TRITON = False


def _load_moe_triton() -> ExpertFn | None:
    """kernels.moe_triton, or None when kernels/ (or triton) cannot be imported."""
    try:
        kernels = importlib.import_module("kernels")
        fn = getattr(kernels, "moe_triton", None)
        if fn is None or inspect.ismodule(fn):  # a package without a re-export: look inside the submodule
            fn = getattr(importlib.import_module("kernels.moe_triton"), "moe_triton", None)
    except ImportError:
        return None
    return fn if callable(fn) else None


def _triton_importable() -> bool:
    return _load_moe_triton() is not None


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend that runs for tensors on ``device``: an explicit name wins; auto = triton on CUDA, else torch."""
    global _WARNED_NO_TRITON
    backend = check_backend(backend)
    if backend is not None:
        return backend
    if device.type == "cuda":
        if _triton_importable():
            return "triton"
        if not _WARNED_NO_TRITON:
            warnings.warn("kernels.moe_triton is not importable; MoE experts use backend='torch'", stacklevel=2)
            _WARNED_NO_TRITON = True
    return "torch"


class GroupedExperts(nn.Module):
    """E routed SwiGLU experts stored as stacked weights.

    ``w_gate_up`` [E, D, 2F] (gate columns first), ``w_down`` [E, F, D].
    forward(x [T, D], topk_ids [T, K] in [0, E), topk_weights [T, K]) -> [T, D].
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, backend: str | None = None) -> None:
        super().__init__()
        for name, v in (("num_experts", num_experts), ("dim", dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be an int > 0, got {v!r}")
        self.backend = check_backend(backend)
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.w_gate_up = nn.Parameter(torch.empty(num_experts, dim, 2 * hidden))
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default range (1/sqrt(fan_in)) so experts start like the shared expert
        nn.init.uniform_(self.w_gate_up, -(self.dim**-0.5), self.dim**-0.5)
        nn.init.uniform_(self.w_down, -(self.hidden**-0.5), self.hidden**-0.5)

    def set_backend(self, backend: str | None) -> None:
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        name = resolve_backend(self.backend, x.device)
        wgu, wd = self.w_gate_up, self.w_down
        if wgu.dtype != x.dtype:  # e.g. fp32 master weights fed bf16 activations
            wgu, wd = wgu.to(x.dtype), wd.to(x.dtype)
        if x.shape[0] == 0:
            # empty but still attached to x and the weights, so every rank runs the same backward (DDP/FSDP/EP)
            return x * 0 + 0 * (wgu.sum() + wd.sum())
        return _FNS[name](x, wgu, wd, topk_ids, topk_weights)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}, backend={self.backend or 'auto'}"
