"""Triton kernels for grouped SwiGLU experts, forward and backward, plus PyTorch references.

Row layout: the "padded" buffers (gate/up pre-activations GU, hidden H, and their grads) have one row
per entry of ``RoutingMeta.sorted_ids`` so each BLOCK_M tile belongs to one expert and reads contiguous
rows. Buffers indexed by assignment a = t*K + k (Y, dX partials) are [N, *] and are summed over k by
``combine``. Every address is computed in int64 (token/row index cast before multiplying by a
stride) so T*K*D beyond 2**31 elements cannot overflow.

UPCAST (constexpr) casts loaded tiles to fp32 before tl.dot: needed under TRITON_INTERPRET=1, whose
bf16 arithmetic is unreliable, and harmless for fp32 inputs. On a GPU with bf16 inputs it is off, so
tl.dot runs on tensor cores with fp32 accumulation. PRECISION is tl.dot's input_precision for fp32
("ieee" by default so fp32 results match the reference to ~1e-6; "tf32" trades accuracy for speed).
"""

from __future__ import annotations

import triton
import triton.language as tl


# --------------------------------------------------------------------------------------------------
# forward 1: gather x rows, [BM, D] @ w_gate_up[e] for gate and up columns, SwiGLU epilogue
# --------------------------------------------------------------------------------------------------
@triton.jit
def _gate_up_swiglu_fwd_kernel(
    x_ptr, w_ptr, gu_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr,
    N, D, F,
    stride_xt, stride_xd, stride_we, stride_wd, stride_wn, stride_gm, stride_gn, stride_hm, stride_hn,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if e < 0:  # block past the last expert's padded range
        return
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ids = tl.load(sorted_ids_ptr + rows)
    valid = a_ids < N
    tok = (a_ids // TOP_K).to(tl.int64)  # the gather: padded row -> token row of x
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    w_base = w_ptr + e * stride_we
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(x_ptr + tok[:, None] * stride_xt + ks[None, :] * stride_xd,
                    mask=valid[:, None] & k_ok[None, :], other=0.0)
        w_off = ks[:, None].to(tl.int64) * stride_wd + cols[None, :] * stride_wn
        w_mask = k_ok[:, None] & col_ok[None, :]
        wg = tl.load(w_base + w_off, mask=w_mask, other=0.0)
        wu = tl.load(w_base + w_off + F * stride_wn, mask=w_mask, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
        acc_g = tl.dot(a, wg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, wu, acc_u, input_precision=PRECISION)
    h = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up
    out_mask = col_ok[None, :]
    g_off = rows[:, None] * stride_gm + cols[None, :] * stride_gn
    tl.store(gu_ptr + g_off, acc_g.to(gu_ptr.dtype.element_ty), mask=out_mask)
    tl.store(gu_ptr + g_off + F * stride_gn, acc_u.to(gu_ptr.dtype.element_ty), mask=out_mask)
    tl.store(h_ptr + rows[:, None] * stride_hm + cols[None, :] * stride_hn, h.to(h_ptr.dtype.element_ty),
             mask=out_mask)


# --------------------------------------------------------------------------------------------------
# forward 2: H [BM, F] @ w_down[e], times the routing weight, scattered to assignment rows of Y
# --------------------------------------------------------------------------------------------------
@triton.jit
def _down_fwd_kernel(
    h_ptr, w_ptr, tw_ptr, y_ptr, sorted_ids_ptr, block_expert_ptr,
    N, F, D,
    stride_hm, stride_hn, stride_we, stride_wf, stride_wd, stride_ym, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, APPLY_WEIGHT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if e < 0:
        return
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ids = tl.load(sorted_ids_ptr + rows)
    valid = a_ids < N
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    w_base = w_ptr + e * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, F, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < F
        h = tl.load(h_ptr + rows[:, None] * stride_hm + ks[None, :] * stride_hn, mask=k_ok[None, :], other=0.0)
        w = tl.load(w_base + ks[:, None].to(tl.int64) * stride_wf + cols[None, :] * stride_wd,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    if APPLY_WEIGHT:
        tw = tl.load(tw_ptr + a_ids, mask=valid, other=0.0).to(tl.float32)
        acc = acc * tw[:, None]
    tl.store(y_ptr + a_ids.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yd,
             acc.to(y_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------------------------------
# combine: out[r, c] = sum_k y[r*K + k, c]   (the un-permute; also reused for dX and d-weights)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _combine_kernel(y_ptr, out_ptr, R, C, K, stride_ym, stride_yc, stride_om, stride_oc,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < R)[:, None] & (c < C)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for k in range(0, K):  # fixed order over k: deterministic, no atomics
        acc += tl.load(y_ptr + (r * K + k)[:, None] * stride_ym + c[None, :] * stride_yc, mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + r[:, None] * stride_om + c[None, :] * stride_oc, acc.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# backward 1: dH_raw = dOut[tok] @ w_down[e]^T; d-routing-weight partials; SwiGLU backward -> dGU
# --------------------------------------------------------------------------------------------------
@triton.jit
def _down_bwd_dh_kernel(
    dout_ptr, w_ptr, tw_ptr, h_ptr, gu_ptr, dgu_ptr, dtw_part_ptr, sorted_ids_ptr, block_expert_ptr,
    N, F, D, NUM_F_BLOCKS,
    stride_ot, stride_od, stride_we, stride_wf, stride_wd, stride_hm, stride_hn, stride_gm, stride_gn,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if e < 0:
        return
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ids = tl.load(sorted_ids_ptr + rows)
    valid = a_ids < N
    tok = (a_ids // TOP_K).to(tl.int64)
    fcols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f_ok = fcols < F
    w_base = w_ptr + e * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ds = k0 + tl.arange(0, BLOCK_K)
        d_ok = ds < D
        g = tl.load(dout_ptr + tok[:, None] * stride_ot + ds[None, :] * stride_od,
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        # w_down[e]^T tile: [BLOCK_K (d), BLOCK_N (f)]
        wt = tl.load(w_base + ds[:, None].to(tl.int64) * stride_wd + fcols[None, :] * stride_wf,
                     mask=d_ok[:, None] & f_ok[None, :], other=0.0)
        if UPCAST:
            g = g.to(tl.float32)
            wt = wt.to(tl.float32)
        else:
            g = g.to(wt.dtype)
        acc = tl.dot(g, wt, acc, input_precision=PRECISION)
    tile = rows[:, None] * stride_hm + fcols[None, :] * stride_hn
    h = tl.load(h_ptr + tile, mask=f_ok[None, :], other=0.0).to(tl.float32)
    # d topk_weight[a] = <dOut[t], H[a] @ w_down[e]> = <dOut[t] @ w_down[e]^T, H[a]>; partial over this F block
    tl.store(dtw_part_ptr + a_ids.to(tl.int64) * NUM_F_BLOCKS + pid_n, tl.sum(acc * h, axis=1), mask=valid)
    tw = tl.load(tw_ptr + a_ids, mask=valid, other=0.0).to(tl.float32)
    dh = acc * tw[:, None]
    g_off = rows[:, None] * stride_gm + fcols[None, :] * stride_gn
    gate = tl.load(gu_ptr + g_off, mask=f_ok[None, :], other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + g_off + F * stride_gn, mask=f_ok[None, :], other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    silu = gate * sig
    d_gate = dh * up * sig * (1.0 + gate * (1.0 - sig))  # d silu(g)/dg = sig * (1 + g (1 - sig))
    d_up = dh * silu
    tl.store(dgu_ptr + g_off, d_gate.to(dgu_ptr.dtype.element_ty), mask=f_ok[None, :])
    tl.store(dgu_ptr + g_off + F * stride_gn, d_up.to(dgu_ptr.dtype.element_ty), mask=f_ok[None, :])


# --------------------------------------------------------------------------------------------------
# backward 2: dW_down[e] = sum over e's rows of (w * H)^T @ dOut[tok]        grid (E, F blocks, D blocks)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _down_bwd_dw_kernel(
    h_ptr, tw_ptr, dout_ptr, dw_ptr, sorted_ids_ptr, padded_offsets_ptr,
    N, F, D,
    stride_hm, stride_hn, stride_ot, stride_od, stride_we, stride_wf, stride_wd,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    f_ok = fs < F
    d_ok = ds < D
    start = tl.load(padded_offsets_ptr + e).to(tl.int64)  # int64 so the row indices below are too
    end = tl.load(padded_offsets_ptr + e + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_F, BLOCK_D], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):  # an expert with no tokens runs zero iterations -> zero grad
        rows = r0 + tl.arange(0, BLOCK_M)
        a_ids = tl.load(sorted_ids_ptr + rows)
        valid = a_ids < N
        tok = (a_ids // TOP_K).to(tl.int64)
        ht = tl.load(h_ptr + rows[None, :] * stride_hm + fs[:, None] * stride_hn, mask=f_ok[:, None], other=0.0)
        tw = tl.load(tw_ptr + a_ids, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(dout_ptr + tok[:, None] * stride_ot + ds[None, :] * stride_od,
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            g = g.to(tl.float32)
            ht = ht.to(tl.float32) * tw[None, :]
        else:
            ht = (ht.to(tl.float32) * tw[None, :]).to(g.dtype)
        acc = tl.dot(ht, g, acc, input_precision=PRECISION)
    tl.store(dw_ptr + e * stride_we + fs[:, None].to(tl.int64) * stride_wf + ds[None, :] * stride_wd,
             acc.to(dw_ptr.dtype.element_ty), mask=f_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------------
# backward 3: dW_gate_up[e] = sum over e's rows of x[tok]^T @ dGU               grid (E, D blocks, 2F blocks)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _gate_up_bwd_dw_kernel(
    x_ptr, dgu_ptr, dw_ptr, sorted_ids_ptr, padded_offsets_ptr,
    N, D, F2,
    stride_xt, stride_xd, stride_gm, stride_gn, stride_we, stride_wd, stride_wn,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ns = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    d_ok = ds < D
    n_ok = ns < F2
    start = tl.load(padded_offsets_ptr + e).to(tl.int64)  # int64 so the row indices below are too
    end = tl.load(padded_offsets_ptr + e + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        a_ids = tl.load(sorted_ids_ptr + rows)
        valid = a_ids < N
        tok = (a_ids // TOP_K).to(tl.int64)
        xt = tl.load(x_ptr + tok[None, :] * stride_xt + ds[:, None] * stride_xd,
                     mask=valid[None, :] & d_ok[:, None], other=0.0)
        g = tl.load(dgu_ptr + rows[:, None] * stride_gm + ns[None, :] * stride_gn, mask=n_ok[None, :], other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(xt, g, acc, input_precision=PRECISION)
    tl.store(dw_ptr + e * stride_we + ds[:, None].to(tl.int64) * stride_wd + ns[None, :] * stride_wn,
             acc.to(dw_ptr.dtype.element_ty), mask=d_ok[:, None] & n_ok[None, :])


# --------------------------------------------------------------------------------------------------
# backward 4: dX partial[a] = dGU[row] @ w_gate_up[e]^T, written to assignment rows (then combine)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _gate_up_bwd_dx_kernel(
    dgu_ptr, w_ptr, dxp_ptr, sorted_ids_ptr, block_expert_ptr,
    N, D, F2,
    stride_gm, stride_gn, stride_we, stride_wd, stride_wn, stride_pm, stride_pd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if e < 0:
        return
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a_ids = tl.load(sorted_ids_ptr + rows)
    valid = a_ids < N
    ds = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d_ok = ds < D
    w_base = w_ptr + e * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, F2, BLOCK_K):
        ns = k0 + tl.arange(0, BLOCK_K)
        n_ok = ns < F2
        g = tl.load(dgu_ptr + rows[:, None] * stride_gm + ns[None, :] * stride_gn, mask=n_ok[None, :], other=0.0)
        # w_gate_up[e]^T tile: [BLOCK_K (2F), BLOCK_N (D)]
        wt = tl.load(w_base + ns[:, None].to(tl.int64) * stride_wn + ds[None, :] * stride_wd,
                     mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            g = g.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(g, wt, acc, input_precision=PRECISION)
    tl.store(dxp_ptr + a_ids.to(tl.int64)[:, None] * stride_pm + ds[None, :] * stride_pd,
             acc.to(dxp_ptr.dtype.element_ty), mask=valid[:, None] & d_ok[None, :])
