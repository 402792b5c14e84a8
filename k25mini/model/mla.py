"""Multi-head Latent Attention (MLA), the attention of DeepSeek-V3 and Kimi K2.

Per token x [D]:

* queries, low rank:      c_q = RMSNorm(W_qa x)  [q_lora];  q = W_qb c_q -> per head [q^C (nope) | q^R (rope)]
  (or q = W_q x when ``q_lora_rank is None``)
* keys/values, compressed: [c_kv | k^R] = W_kva x;  c_kv = RMSNorm(c_kv) [kv_lora];  k^R [rope] is ONE key shared
  by all heads;  W_kvb c_kv -> per head [k^C (nope) | v]
* RoPE touches only q^R and k^R (decoupled RoPE), so k^C and v stay linear in the latent c_kv.
* logits_h = scale * (q^C_h . k^C_h + q^R_h . k^R);  scale = 1/sqrt(nope + rope) (x YaRN mscale^2)

Generation caches only ``c_kv`` and the rotated ``k^R`` (:class:`~k25mini.model.cache.MLACache`). Two ways
to attend over that cache:

* **naive**: up-project the whole cache with W_kvb into per-head keys and values, then attend as MHA.
* **absorbed**: because k^C_h = W_uk_h c_kv and v_h = W_uv_h c_kv are linear in c_kv, fold W_uk_h into the query
  (q^C_h W_uk_h, a kv_lora-vector) and apply W_uv_h after attention. Scores and the weighted sum then run
  directly on the latent; per-head keys/values are never built. Used for decode (few queries, long cache).

Both give the same numbers (tested). For QK-Clip the module can record the per-head maximum pre-softmax logit.

Packed training/prefill (several documents per row, no cache) takes a third, **block-diagonal (varlen)** path
when the caller passes a :class:`~k25mini.model.masks.DocPacking` (``K2Model`` does, for ``doc_ids``): the
tokens are gathered once into padded ``[n_docs, L]`` buckets of similar-length documents, attention runs
causally per document, and the result is scattered back. Its cost is ~``sum(len_i^2)`` score entries instead of
the dense ``B * S^2`` masked matrix (issue #15; ``benchmarks/bench_varlen_attention.py``). It records the same
per-head max logits as the dense path, over allowed positions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from k25mini.config import TextConfig
from k25mini.model.cache import MLACache
from k25mini.model.masks import DocPacking
from k25mini.model.norm import RMSNorm
from k25mini.model.rope import apply_rope, softmax_scale

__all__ = [
    "MLAttention",
    "set_max_logit_recording",
    "reset_max_logits",
    "collect_max_logits",
    "capture_max_logits",
]


class MLAttention(nn.Module):
    """MLA layer. forward(x [B, S, D], cos, sin [B, S, rope], attn_mask, cache) -> [B, S, D].

    Parameter names/shapes (no biases): ``q_a_proj`` [q_lora, D], ``q_a_norm`` [q_lora], ``q_b_proj``
    [H*(nope+rope), q_lora] (or ``q_proj`` [H*(nope+rope), D]), ``kv_a_proj`` [kv_lora+rope, D],
    ``kv_a_norm`` [kv_lora], ``kv_b_proj`` [H*(nope+v), kv_lora], ``o_proj`` [D, H*v].
    Rows of q_b_proj are per head [nope | rope]; rows of kv_b_proj are per head [k nope | v].
    """

    def __init__(self, cfg: TextConfig, layer_idx: int = 0) -> None:
        super().__init__()
        if not isinstance(cfg, TextConfig):
            raise ValueError(f"cfg must be a TextConfig, got {type(cfg).__name__}")
        self.layer_idx = layer_idx
        D, H = cfg.hidden_size, cfg.num_attention_heads
        self.num_heads = H
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.qk_head_dim = cfg.qk_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.q_lora_rank = cfg.q_lora_rank
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, cfg.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * self.qk_head_dim, bias=False)
        self.kv_a_proj = nn.Linear(D, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_norm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * cfg.v_head_dim, D, bias=False)
        self.softmax_scale = softmax_scale(self.qk_head_dim, cfg.rope_scaling, cfg.max_position_embeddings)
        # QK-Clip bookkeeping: running per-head max of the pre-softmax logits since the last reset
        self.record_max_logits = False  # record in training mode (set by build_optimizer for MuonClip)
        self._capture = False  # record in any mode (capture_max_logits)
        self.max_logits: torch.Tensor | None = None
        # varlen path without recording: None = F.scaled_dot_product_attention off CPU, the explicit
        # baddbmm/softmax/bmm on CPU (faster there); True/False forces SDPA or the explicit kernel
        self.varlen_sdpa: bool | None = None

    # ---------------------------------------------------------------- projections
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, D] -> q [B, S, H, nope+rope] (before RoPE)."""
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        return q.view(*x.shape[:-1], self.num_heads, self.qk_head_dim)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] -> (c_kv [B, S, kv_lora] normalised, k_pe [B, S, rope] before RoPE)."""
        kv = self.kv_a_proj(x)
        c_kv, k_pe = kv.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_a_norm(c_kv), k_pe

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_uk [H, nope, kv_lora] and W_uv [H, v, kv_lora] (views of kv_b_proj.weight)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        return w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: MLACache | None = None,
        absorb: bool | None = None,
        packing: DocPacking | None = None,
    ) -> torch.Tensor:
        """Attend. ``attn_mask``: bool [B|1, 1, S, T] (True = attend) or None for causal.

        With ``cache`` the new latents are appended and the queries attend over the whole cache
        (T = cached + S). ``absorb``: use the absorbed path; default True when S == 1 with a cache.
        ``packing``: the block-diagonal layout of packed documents (:func:`~k25mini.model.masks.doc_packing`,
        built once per forward by ``K2Model``); attention then stays causal within each document through the
        varlen path. It replaces ``attn_mask`` and cannot be combined with ``cache`` or ``absorb=True``.
        """
        if x.ndim != 3:
            raise ValueError(f"x must be [B, S, D], got {tuple(x.shape)}")
        B, S, _ = x.shape
        if cos.shape[:2] != (B, S) or cos.shape[-1] != self.qk_rope_head_dim:
            raise ValueError(f"cos must be [B={B}, S={S}, {self.qk_rope_head_dim}], got {tuple(cos.shape)}")
        q = self.query(x)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        c_kv, k_pe = self.latent(x)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)
        if packing is not None:
            if cache is not None or absorb or attn_mask is not None:
                raise ValueError("packing (varlen attention) cannot be combined with cache, absorb=True or attn_mask")
            if (packing.batch_size, packing.seq_len) != (B, S):
                raise ValueError(f"packing is for [B={packing.batch_size}, S={packing.seq_len}], x is [B={B}, S={S}]")
            out = self._attend_varlen(q_nope, q_pe, c_kv, k_pe, packing)
            return self.o_proj(out.reshape(B, S, self.num_heads * self.v_head_dim))
        if cache is not None:
            c_kv, k_pe = cache.update(self.layer_idx, c_kv, k_pe)
        T = c_kv.shape[1]
        if attn_mask is not None and (attn_mask.shape[-2:] != (S, T) or attn_mask.dtype != torch.bool):
            raise ValueError(
                f"attn_mask must be bool [B, 1, S={S}, T={T}], got {attn_mask.dtype} {tuple(attn_mask.shape)}"
            )
        if absorb is None:
            absorb = cache is not None and S == 1
        if absorb:
            out = self._attend_absorbed(q_nope, q_pe, c_kv, k_pe, attn_mask)
        else:
            out = self._attend_naive(q_nope, q_pe, c_kv, k_pe, attn_mask)
        return self.o_proj(out.reshape(B, S, self.num_heads * self.v_head_dim))

    def _recording(self) -> bool:
        return self._capture or (self.record_max_logits and self.training)

    def _causal_mask(self, S: int, T: int, device: torch.device) -> torch.Tensor:
        qi = torch.arange(S, device=device).unsqueeze(1) + (T - S)
        return (torch.arange(T, device=device).unsqueeze(0) <= qi)[None, None]

    def _record(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """logits [B, H, S, T] (scaled); keep the running per-head max over allowed positions."""
        with torch.no_grad():
            m = logits.detach().float().masked_fill(~mask, float("-inf")).amax(dim=(0, 2, 3))  # [H]
            self.max_logits = m if self.max_logits is None else torch.maximum(self.max_logits, m)

    def _softmax_weighted(self, logits: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        # fp32 softmax: logits near the QK-Clip cap (~100) would overflow bf16 exp without the max shift
        wide = torch.promote_types(logits.dtype, torch.float32)
        probs = torch.softmax(logits.to(wide).masked_fill(~mask, float("-inf")), dim=-1).to(values.dtype)
        return probs @ values

    def _attend_naive(self, q_nope, q_pe, c_kv, k_pe, attn_mask) -> torch.Tensor:
        B, S, H, _ = q_nope.shape
        T = c_kv.shape[1]
        kv = self.kv_b_proj(c_kv).view(B, T, H, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(B, T, H, self.qk_rope_head_dim)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, *, d]
        if self._recording():
            mask = attn_mask if attn_mask is not None else self._causal_mask(S, T, q.device)
            logits = (q @ k.transpose(-1, -2)) * self.softmax_scale
            self._record(logits, mask)
            out = self._softmax_weighted(logits, mask, v)
        elif attn_mask is None and S == T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        else:
            mask = attn_mask if attn_mask is not None else self._causal_mask(S, T, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale)
        return out.transpose(1, 2)  # [B, S, H, v]

    def _attend_varlen(self, q_nope, q_pe, c_kv, k_pe, packing: DocPacking) -> torch.Tensor:
        """Block-diagonal causal attention over packed documents -> [B, S, H, v].

        One gather puts [q | k | v] of every (token, head) into its document's slot of the padded head-major
        layout, so each bucket is one contiguous ``[H * n, L, 2dq + dv]`` block (batched matmuls on views, no
        transposes); each bucket attends causally (documents are left-aligned, so a real query never sees a
        padding slot and no padding mask is needed); one gather brings the outputs back to token order.
        Scores are ``baddbmm(causal_bias, q, k^T, alpha=scale)`` (mask and scale fused into the matmul), softmax
        in >= fp32, then ``bmm`` with v; when recording, the per-head max is taken over real queries and their
        allowed keys, as :meth:`_record` does on the dense matrix. On CPU this beats SDPA at these head sizes
        (which has no fused kernel for v dim != qk dim; measured, benchmarks/bench_varlen_attention.py), so SDPA
        (``is_causal``) is used only off CPU without recording, or when ``varlen_sdpa`` is set True.
        """
        B, S, H, _ = q_nope.shape
        dq, dv = self.qk_head_dim, self.v_head_dim
        kv = self.kv_b_proj(c_kv).view(B, S, H, self.qk_nope_head_dim + dv)
        k_pe = k_pe.unsqueeze(2).expand(B, S, H, self.qk_rope_head_dim)
        tokens = torch.cat([q_nope, q_pe, kv[..., : self.qk_nope_head_dim], k_pe, kv[..., self.qk_nope_head_dim :]],
                           dim=-1).view(B * S * H, 2 * dq + dv)
        gather, scatter = packing.head_major(H)
        slots = tokens.index_select(0, gather)  # [H * P, 2dq + dv], bucket-major, then head, document, position
        # split, not slicing: the backward of a slice writes into a zero-filled full-size tensor per bucket
        sizes = [H * bk.n * bk.length for bk in packing.buckets]
        parts = slots.split(sizes) if len(sizes) > 1 else (slots,)
        record = self._recording()
        sdpa = self.varlen_sdpa if self.varlen_sdpa is not None else slots.device.type != "cpu"
        outs, maxima = [], []
        for bk, part in zip(packing.buckets, parts):
            n, L = bk.n, bk.length
            q, k, v = part.view(H * n, L, -1).split([dq, dq, dv], dim=-1)
            if sdpa and not record:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
            else:
                bias = packing.causal_bias(L, q.dtype, q.device)
                logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.softmax_scale)  # [H*n, L, L]
                if record:
                    with torch.no_grad():
                        rowmax = logits.detach().amax(dim=-1).float().view(H, n, L)
                        maxima.append(rowmax.masked_fill(~bk.valid, float("-inf")).amax(dim=(1, 2)))
                wide = torch.promote_types(logits.dtype, torch.float32)
                o = torch.bmm(torch.softmax(logits.to(wide), dim=-1).to(v.dtype), v)
            outs.append(o.reshape(H * n * L, dv))
        if maxima:
            with torch.no_grad():
                m = torch.stack(maxima).amax(dim=0)
                self.max_logits = m if self.max_logits is None else torch.maximum(self.max_logits, m)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out.index_select(0, scatter).view(B, S, H, dv)

    def _attend_absorbed(self, q_nope, q_pe, c_kv, k_pe, attn_mask) -> torch.Tensor:
        S, T = q_nope.shape[1], c_kv.shape[1]
        w_uk, w_uv = self._up_weights()
        q_lat = torch.einsum("bshn,hnc->bhsc", q_nope, w_uk)  # queries moved into latent space
        logits = torch.einsum("bhsc,btc->bhst", q_lat, c_kv) + torch.einsum("bshr,btr->bhst", q_pe, k_pe)
        logits = logits * self.softmax_scale
        mask = attn_mask if attn_mask is not None else self._causal_mask(S, T, q_nope.device)
        if self._recording():
            self._record(logits, mask)
        o_lat = self._softmax_weighted(logits, mask, c_kv.unsqueeze(1))  # [B, H, S, kv_lora]
        return torch.einsum("bhsc,hvc->bshv", o_lat, w_uv)

    def reset_max_logits(self) -> None:
        self.max_logits = None


def _mla_modules(model: nn.Module) -> Iterator[tuple[str, MLAttention]]:
    for name, m in model.named_modules():
        if isinstance(m, MLAttention):
            yield name, m


def set_max_logit_recording(model: nn.Module, enabled: bool = True) -> int:
    """Turn per-head max-logit recording (training mode only) on/off for every MLA layer; returns the count."""
    n = 0
    for _, m in _mla_modules(model):
        m.record_max_logits = bool(enabled)
        n += 1
    return n


def reset_max_logits(model: nn.Module) -> None:
    for _, m in _mla_modules(model):
        m.reset_max_logits()


def collect_max_logits(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: per-head running max logit [H]} for layers that recorded something."""
    return {n: m.max_logits for n, m in _mla_modules(model) if m.max_logits is not None}


@contextlib.contextmanager
def capture_max_logits(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record per-head max logits of every forward inside the block (any mode); the yielded dict is filled
    on exit. The layers' running maxima (used by QK-Clip) are saved and restored around the block."""
    mods = list(_mla_modules(model))
    saved = [(m.max_logits, m._capture) for _, m in mods]
    out: dict[str, torch.Tensor] = {}
    for _, m in mods:
        m.max_logits, m._capture = None, True
    try:
        yield out
        out.update({n: m.max_logits for n, m in mods if m.max_logits is not None})
    finally:
        for (_, m), (ml, cap) in zip(mods, saved):
            m.max_logits, m._capture = ml, cap
