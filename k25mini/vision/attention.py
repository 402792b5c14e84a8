"""Variable-length (block-diagonal) self-attention over a packed sequence.

``varlen_attention(q, k, v, cu_seqlens)`` with ``q, k, v [L, H, d]`` returns ``[L, H, d]`` where each token
attends only to tokens of its own item. Backends (all give the same numbers up to float rounding):

* ``sdpa_loop``       per-item SDPA; items of equal length are stacked into one call. CPU default (trains).
* ``sdpa_block_diag`` one SDPA call with a boolean ``[L, L]`` block-diagonal mask (trains; O(L^2) memory).
* ``flex``            ``flex_attention`` with a document mask (compiled on CUDA; on CPU forward only,
                      because flex_attention has no CPU backward).
* ``torch_varlen``    ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16).
* ``flash_attn``      ``flash_attn.flash_attn_varlen_func`` (CUDA, fp16/bf16, if the package is installed).

``backend=None`` picks the fastest one that supports the device, dtype and whether gradients are needed.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F

from k25mini.vision.packing import segment_ids

__all__ = ["BACKENDS", "available_backends", "select_backend", "varlen_attention"]

BACKENDS = ("sdpa_loop", "sdpa_block_diag", "flex", "torch_varlen", "flash_attn")
_HALF = (torch.float16, torch.bfloat16)


def _has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def _has_torch_varlen() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


@functools.cache
def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def available_backends(device: torch.device | str, dtype: torch.dtype, requires_grad: bool = False) -> list[str]:
    """Backends usable for tensors on ``device`` with ``dtype`` (and a backward pass if ``requires_grad``)."""
    dev = torch.device(device)
    out = ["sdpa_loop", "sdpa_block_diag"]
    if _has_flex() and (dev.type == "cuda" or not requires_grad):
        out.append("flex")
    if dev.type == "cuda" and dtype in _HALF:
        if _has_torch_varlen():
            out.append("torch_varlen")
        if _has_flash_attn():
            out.append("flash_attn")
    return out


def select_backend(device: torch.device | str, dtype: torch.dtype, requires_grad: bool = False) -> str:
    """The automatic choice: flash_attn > torch_varlen > flex on CUDA; sdpa_loop on CPU."""
    avail = available_backends(device, dtype, requires_grad)
    if torch.device(device).type == "cuda":
        for name in ("flash_attn", "torch_varlen", "flex"):
            if name in avail:
                return name
    # on CPU flex runs unfused (materialises all L x L scores) and block-diag costs L^2 instead of sum(l_i^2)
    return "sdpa_loop"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one shape [L, H, d], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
        raise ValueError(f"cu_seqlens must be an integer tensor [N+1] with N >= 1, got {tuple(cu_seqlens.shape)} "
                         f"{cu_seqlens.dtype}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != q.shape[0] or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must increase strictly from 0 to L={q.shape[0]}, got {cu}")


def _sdpa_loop(q, k, v, cu_seqlens, scale):
    cu = cu_seqlens.tolist()
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, (a, b) in enumerate(zip(cu, cu[1:])):
        by_len[b - a].append(i)
    out = torch.empty_like(q)
    for n, idx in by_len.items():
        # rows of all items of length n, stacked: [B, n, H, d] -> [B, H, n, d]
        rows = torch.cat([torch.arange(cu[i], cu[i] + n, device=q.device) for i in idx])
        qb, kb, vb = (t.index_select(0, rows).view(len(idx), n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        ob = F.scaled_dot_product_attention(qb, kb, vb, scale=scale)
        out = out.index_copy(0, rows, ob.transpose(1, 2).reshape(len(idx) * n, *q.shape[1:]))
    return out


def _sdpa_block_diag(q, k, v, cu_seqlens, scale):
    seg = segment_ids(cu_seqlens.to(q.device))
    mask = seg[:, None] == seg[None, :]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex(q, k, v, cu_seqlens, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("backend='flex' has no CPU backward; use 'sdpa_loop' or 'sdpa_block_diag' to train on CPU")
    seg = segment_ids(cu_seqlens.to(q.device))
    L = q.shape[0]

    def same_item(b, h, qi, ki):
        return seg[qi] == seg[ki]

    block_mask = create_block_mask(same_item, None, None, L, L, device=q.device)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))
    if q.device.type == "cuda":
        o = _compiled_flex()(qb, kb, vb, block_mask=block_mask, scale=scale)
    else:
        with warnings.catch_warnings():  # eager (unfused) flex on CPU warns on every call
            warnings.simplefilter("ignore")
            o = flex_attention(qb, kb, vb, block_mask=block_mask, scale=scale)
    return o[0].transpose(0, 1)


def _torch_varlen(q, k, v, cu_seqlens, scale):
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, scale=scale)


def _flash_attn(q, k, v, cu_seqlens, scale):
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return flash_attn_varlen_func(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len,
                                  softmax_scale=scale)


_IMPLS = {
    "sdpa_loop": _sdpa_loop,
    "sdpa_block_diag": _sdpa_block_diag,
    "flex": _flex,
    "torch_varlen": _torch_varlen,
    "flash_attn": _flash_attn,
}


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     backend: str | None = None, scale: float | None = None) -> torch.Tensor:
    """Block-diagonal attention: ``q, k, v [L, H, d]``, ``cu_seqlens [N+1]`` -> ``[L, H, d]``.

    ``backend=None`` chooses automatically (:func:`select_backend`); a name from :data:`BACKENDS` forces one.
    """
    _check(q, k, v, cu_seqlens)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if backend is None:
        backend = select_backend(q.device, q.dtype, needs_grad)
    elif backend not in _IMPLS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    elif backend not in available_backends(q.device, q.dtype, needs_grad) and backend != "flex":
        raise ValueError(f"backend={backend!r} is not available for device={q.device.type}, dtype={q.dtype}, "
                         f"requires_grad={needs_grad}; available: {available_backends(q.device, q.dtype, needs_grad)}")
    return _IMPLS[backend](q, k, v, cu_seqlens, scale)
