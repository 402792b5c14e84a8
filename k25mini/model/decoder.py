"""The K2 decoder: embeddings -> L x [RMSNorm -> MLA -> + ; RMSNorm -> MLP -> +] -> RMSNorm -> lm_head.

The first ``first_k_dense_replace`` layers use a dense SwiGLU MLP, the others the MoE layer
(:class:`~k25mini.model.moe.MoELayer`). Embeddings and the output head are untied (K2), unless
``cfg.tie_word_embeddings``. Module names follow the published DeepSeek-V3 / Kimi-K2 checkpoints
(``model.layers.{i}.self_attn.q_a_proj``, ``model.norm``, ``lm_head``, ...), except the MoE internals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from k25mini.config import TextConfig
from k25mini.model.cache import MLACache
from k25mini.model.masks import (
    DocPacking,
    attention_mask,
    doc_ids_from_cu_seqlens,
    doc_packing,
    doc_runs,
    positions_from_doc_ids,
)
from k25mini.model.mla import MLAttention, capture_max_logits, collect_max_logits, set_max_logit_recording
from k25mini.model.moe import MoELayer, moe_aux_loss, update_moe_biases
from k25mini.model.norm import RMSNorm
from k25mini.model.rope import RotaryEmbedding
from k25mini.model.swiglu import SwiGLU

__all__ = ["DenseMLP", "K2DecoderLayer", "K2Model", "K2ForCausalLM", "set_varlen_attention"]

DenseMLP = SwiGLU  # gate_proj / up_proj [I, D], down_proj [D, I]


class K2DecoderLayer(nn.Module):
    """Pre-norm block. forward(x [B, S, D], cos, sin, attn_mask, cache, absorb, packing) -> [B, S, D]."""

    def __init__(self, cfg: TextConfig, layer_idx: int, moe_backend: str | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = layer_idx >= cfg.first_k_dense_replace
        self.mlp: nn.Module = (
            MoELayer(cfg, backend=moe_backend) if self.is_moe else DenseMLP(cfg.hidden_size, cfg.intermediate_size)
        )

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
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache, absorb, packing)
        return x + self.mlp(self.post_attention_layernorm(x))


class K2Model(nn.Module):
    """Token embeddings -> decoder layers -> final RMSNorm. forward(...) -> hidden states [B, S, D].

    Packed documents attend through the block-diagonal (varlen) MLA path: the layout
    (:func:`~k25mini.model.masks.doc_packing`) is built once per forward and shared by every layer. Set
    ``varlen_attention = False`` on the instance (or :func:`set_varlen_attention`) to force the dense
    ``[B, 1, S, S]`` masked path instead (tests and benchmarks compare the two).
    """

    varlen_attention: bool = True

    def __init__(self, cfg: TextConfig, moe_backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, TextConfig):
            raise ValueError(f"cfg must be a TextConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(K2DecoderLayer(cfg, i, moe_backend) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(
            cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        kv_cache: MLACache | None = None,
        absorb: bool | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exactly one of ``input_ids`` [B, S] (int) or ``inputs_embeds`` [B, S, D].

        * ``doc_ids`` [B, S] or ``cu_seqlens`` [n+1]: packed documents (attention within a document,
          positions restart per document unless ``position_ids`` is given). Attention runs block-diagonally per
          document (varlen path) unless ``absorb=True`` or ``self.varlen_attention`` is False (dense mask).
        * ``kv_cache``: an :class:`MLACache`; new tokens are appended and positions continue after the cache.
        * ``absorb``: force the absorbed (True) or naive (False) MLA path; default absorbed for 1-token decode.
        * ``attn_mask``: an explicit bool mask [B|1, 1, S, T] (True = attend; T = cached + S), e.g. for
          left-padded batches of prompts of different lengths; not with ``doc_ids``. With ``position_ids`` given,
          the position limit is checked on the largest position instead of the cache length.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, S] or inputs_embeds [B, S, D]")
        if input_ids is not None:
            if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be an integer tensor [B, S], got {input_ids.dtype} "
                                 f"{tuple(input_ids.shape)}")
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size):
                raise ValueError(f"input_ids must be in [0, vocab_size={cfg.vocab_size})")
            x = self.embed_tokens(input_ids)
        else:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != cfg.hidden_size:
                raise ValueError(f"inputs_embeds must be [B, S, {cfg.hidden_size}], got {tuple(inputs_embeds.shape)}")
            x = inputs_embeds
        B, S = x.shape[:2]
        if S == 0:
            raise ValueError("the sequence must hold at least one token (S > 0)")
        if doc_ids is not None and cu_seqlens is not None:
            raise ValueError("pass doc_ids or cu_seqlens, not both")
        if cu_seqlens is not None:
            doc_ids = doc_ids_from_cu_seqlens(cu_seqlens, B, S).to(x.device)
        if doc_ids is not None:
            if doc_ids.shape != (B, S):
                raise ValueError(f"doc_ids must be [B={B}, S={S}], got {tuple(doc_ids.shape)}")
            if kv_cache is not None:
                raise ValueError("packed documents (doc_ids/cu_seqlens) cannot be combined with kv_cache")
        if attn_mask is not None and position_ids is None:
            raise ValueError("attn_mask needs explicit position_ids [B, S]")
        past = 0
        if kv_cache is not None:
            if kv_cache.num_layers != len(self.layers):
                raise ValueError(f"kv_cache has {kv_cache.num_layers} layers, the model {len(self.layers)}")
            past = kv_cache.seq_len(0)
        if position_ids is None:
            if doc_ids is not None:
                position_ids = positions_from_doc_ids(doc_ids)
            else:
                position_ids = (torch.arange(S, device=x.device) + past).expand(B, S)
        elif position_ids.shape != (B, S):
            raise ValueError(f"position_ids must be [B={B}, S={S}], got {tuple(position_ids.shape)}")
        if attn_mask is not None:
            if doc_ids is not None:
                raise ValueError("pass attn_mask or packed documents (doc_ids/cu_seqlens), not both")
            if attn_mask.dtype != torch.bool or attn_mask.ndim != 4 or attn_mask.shape[-2:] != (S, past + S):
                raise ValueError(f"attn_mask must be bool [B, 1, S={S}, T={past + S}], got {attn_mask.dtype} "
                                 f"{tuple(attn_mask.shape)}")
        longest = past + S if attn_mask is None else int(position_ids.max()) + 1
        if longest > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {longest} exceeds max_position_embeddings={cfg.max_position_embeddings}"
            )
        cos, sin = self.rotary_emb(position_ids.to(x.device), dtype=x.dtype)
        mask, packing = attn_mask, None
        if doc_ids is not None:
            if self.varlen_attention and not absorb:
                packing = doc_packing(doc_ids.to(x.device))
            else:
                mask = attention_mask(S, S, doc_ids=doc_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, kv_cache, absorb, packing)
        return self.norm(x)


class K2ForCausalLM(nn.Module):
    """K2 language model. forward(...) -> logits [B, S, vocab]; see :meth:`K2Model.forward` for the inputs."""

    def __init__(self, cfg: TextConfig, moe_backend: str | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.model = K2Model(cfg, moe_backend)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor | None = None, **kw) -> torch.Tensor:
        return self.lm_head(self.model(input_ids, **kw))

    def loss(
        self,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ignore_index: int = -100,
        *,
        shift: bool = True,
        **kw,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over targets != ``ignore_index`` (float32).

        ``labels`` [B, S] are aligned with the inputs (Hugging Face convention): with ``shift=True`` position t
        predicts ``labels[:, t + 1]``; pass ``shift=False`` if labels are already the next tokens. With packed
        documents the target across a document boundary is ignored. MoE aux losses are *not* included
        (add :meth:`moe_aux_loss`).
        """
        if labels is None:
            raise ValueError("labels [B, S] are required")
        logits = self(input_ids, **kw)
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must be [B, S] = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        labels = labels.to(logits.device)
        if shift:
            doc_ids = kw.get("doc_ids")
            if doc_ids is None and kw.get("cu_seqlens") is not None:
                doc_ids = doc_ids_from_cu_seqlens(kw["cu_seqlens"], *labels.shape)
            logits, labels = logits[:, :-1], labels[:, 1:]
            if doc_ids is not None:
                runs = doc_runs(doc_ids.to(labels.device))
                labels = labels.masked_fill(runs[:, 1:] != runs[:, :-1], ignore_index)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=ignore_index)

    # ------------------------------------------------------------------ MoE / QK-Clip hooks
    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def moe_aux_loss(self) -> torch.Tensor:
        """Sum of the MoE layers' sequence-level aux losses from the last forward (0-dim tensor)."""
        aux = moe_aux_loss(self)
        return aux if isinstance(aux, torch.Tensor) else torch.zeros(())

    def update_moe_bias(self, group=None) -> None:
        """Aux-loss-free bias update on every MoE layer, by hand. Optimisers from
        :func:`k25mini.optim.build_optimizer` (and so the Trainer and :func:`k25mini.rl.policy_update`) already run
        it as a step post-hook (:func:`k25mini.model.moe.attach_moe_bias_update`); call this only with an optimiser
        of your own. Under data parallelism pass the process ``group`` so expert loads are summed across ranks."""
        update_moe_biases(self, group)

    def moe_load(self) -> torch.Tensor:
        """Tokens per expert in the last forward, [num_moe_layers, E] int64."""
        return torch.stack([m.last_load for m in self.moe_layers()])

    def set_max_logit_recording(self, enabled: bool = True) -> None:
        """Record per-head max pre-softmax logits in training-mode forwards (QK-Clip does this for you)."""
        set_max_logit_recording(self, enabled)

    def max_logits(self) -> dict[str, torch.Tensor]:
        """{attention module name: running per-head max logit [H]} since the last reset."""
        return collect_max_logits(self)

    capture_max_logits = capture_max_logits  # ``with model.capture_max_logits() as d: model(x)``

    def new_kv_cache(self) -> MLACache:
        return MLACache(self.config.num_hidden_layers)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        absorb: bool = True,
    ) -> torch.Tensor:
        """Greedy (``temperature=0``) or sampled continuation; returns [B, S + n] (n <= max_new_tokens, fewer
        if every row produced ``eos_token_id``; finished rows are padded with it).

        With ``use_cache`` the prompt is prefilled once into an :class:`MLACache` of latents and each new
        token attends over it (absorbed path unless ``absorb=False``); otherwise the whole prefix is re-run.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, S] with S > 0, got {tuple(input_ids.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"top_k must be in [1, vocab_size], got {top_k}")
        was_training = self.training
        self.eval()
        try:
            out = input_ids
            if max_new_tokens == 0:
                return out
            cache = self.new_kv_cache() if use_cache else None
            logits = self(input_ids, kv_cache=cache)[:, -1]
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for step in range(max_new_tokens):
                nxt = self._next_token(logits, temperature, top_k, generator)
                if eos_token_id is not None:
                    nxt = nxt.masked_fill(finished, eos_token_id)
                    finished |= nxt == eos_token_id
                out = torch.cat([out, nxt[:, None]], dim=1)
                if step == max_new_tokens - 1 or bool(finished.all()):
                    break
                if cache is not None:
                    logits = self(nxt[:, None], kv_cache=cache, absorb=absorb)[:, -1]
                else:
                    logits = self(out)[:, -1]
            return out
        finally:
            self.train(was_training)

    @staticmethod
    def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                    generator: torch.Generator | None) -> torch.Tensor:
        logits = logits.float()
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def set_varlen_attention(model: nn.Module, enabled: bool = True) -> int:
    """Use (True, the default) or bypass (False: dense masked attention) the block-diagonal path for packed
    documents in every :class:`K2Model` inside ``model``; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, K2Model):
            m.varlen_attention = bool(enabled)
            n += 1
    return n
