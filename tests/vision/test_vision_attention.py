"""varlen_attention: every backend against a per-item loop of plain softmax attention (float64 reference)."""

from __future__ import annotations

import pytest
import torch

from k25mini.vision import available_backends, select_backend, varlen_attention

LENS = [5, 12, 1, 12, 7]  # includes a length-1 item and two items of equal length (batched together)


def _reference(q, k, v, cu):
    """Per-item loop, explicit softmax, float64."""
    out = []
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        qi, ki, vi = (t[a:b].double().transpose(0, 1) for t in (q, k, v))  # [H, n, d]
        w = torch.softmax(qi @ ki.transpose(-1, -2) / qi.shape[-1] ** 0.5, dim=-1)
        out.append((w @ vi).transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def _inputs(seed=0, H=2, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    L = sum(LENS)
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(L, H, d, generator=g, dtype=dtype) for _ in range(3))
    return q, k, v, cu


CPU_TRAIN = available_backends("cpu", torch.float32, requires_grad=True)
CPU_FWD = available_backends("cpu", torch.float32, requires_grad=False)


def test_cpu_backend_lists():
    assert {"sdpa_loop", "sdpa_block_diag"} <= set(CPU_TRAIN)
    assert "flex" in CPU_FWD and "flex" not in CPU_TRAIN  # no CPU backward for flex_attention
    assert select_backend("cpu", torch.float32, True) == "sdpa_loop"


@pytest.mark.parametrize("backend", CPU_FWD)
def test_forward_matches_per_item_loop(backend):
    q, k, v, cu = _inputs()
    with torch.no_grad():
        out = varlen_attention(q, k, v, cu, backend=backend)
    torch.testing.assert_close(out, _reference(q, k, v, cu), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_TRAIN)
def test_gradients_match_per_item_loop(backend):
    q, k, v, cu = _inputs(1)
    w = torch.randn_like(q)
    grads = []
    for fn in (lambda *a: varlen_attention(*a, backend=backend), _reference):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (fn(*leaves, cu) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_backend_gradcheck_float64():
    q, k, v, cu = _inputs(2, H=1, d=4, dtype=torch.float64)
    cu_small = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    leaves = [t[:8].clone().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: varlen_attention(a, b, c, cu_small), leaves)


def test_no_attention_across_items():
    q, k, v, cu = _inputs(3)
    out = varlen_attention(q, k, v, cu)
    v2 = v.clone()
    v2[cu[1] :] += 100.0  # change every later item: the first item's output must not move
    out2 = varlen_attention(q, k, v2, cu)
    assert torch.equal(out[: cu[1]], out2[: cu[1]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA backends need a GPU")
@pytest.mark.parametrize("backend", ["flex", "torch_varlen", "flash_attn"])
def test_cuda_backends(backend):  # pragma: no cover - runs only where CUDA exists
    dtype = torch.float32 if backend == "flex" else torch.bfloat16
    if backend not in available_backends("cuda", dtype, True):
        pytest.skip(f"{backend} not installed")
    q, k, v, cu = (t.cuda() for t in _inputs())
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out = varlen_attention(q, k, v, cu, backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), _reference(q.float(), k.float(), v.float(), cu), atol=tol, rtol=tol)


def test_bad_arguments():
    q, k, v, cu = _inputs()
    with pytest.raises(ValueError, match="backend"):
        varlen_attention(q, k, v, cu, backend="nope")
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, k, v, torch.tensor([0, 5, 3, sum(LENS)]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, k, v, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="q, k, v"):
        varlen_attention(q, k[:-1], v, cu)
    with pytest.raises(ValueError, match="flex"):
        varlen_attention(q.requires_grad_(True), k, v, cu, backend="flex")
    with pytest.raises(ValueError, match="not available"):
        varlen_attention(q, k, v, cu, backend="torch_varlen")
