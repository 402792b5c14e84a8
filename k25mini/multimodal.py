"""K2.5 = MoonViT-3D vision tower + projector + K2 decoder, fused early (one transformer sees both).

    model = K25ForConditionalGeneration(nano())
    logits = model(input_ids, media=[img, video])      # media fill the <|media_pad|> runs in order
    loss = model.loss(input_ids, labels, media=[...], doc_ids=doc_ids)

Early fusion here means the projected vision embeddings *replace* the embeddings of the
``<|media_pad|>`` tokens, in reading order (row-major over the batch), before the first decoder
layer; from then on text and vision tokens are the same kind of thing. Labels on media pads are
ignored by the data pipeline (no loss on vision tokens); the loss is next-token cross-entropy on
text tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from k25mini.config import ModelConfig
from k25mini.model import K2ForCausalLM
from k25mini.vision import VisionTower, media_token_counts

__all__ = ["K25ForConditionalGeneration", "scatter_media"]


def scatter_media(
    embeds: torch.Tensor, input_ids: torch.Tensor, media_embeds: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """Put ``media_embeds [N, D]`` at the ``pad_id`` positions of ``input_ids [B, S]`` (row-major order).

    Returns a new ``[B, S, D]`` tensor; gradients flow to both the token and the media embeddings.
    """
    where = input_ids == pad_id
    n = int(where.sum())
    if media_embeds.shape[0] != n:
        raise ValueError(
            f"media: the vision tower produced {media_embeds.shape[0]} embeddings but input_ids hold {n} "
            f"<|media_pad|> tokens (id {pad_id}); expand each placeholder to its media_token_counts()"
        )
    if n == 0:
        return embeds
    out = embeds.clone()
    out[where] = media_embeds.to(out.dtype)
    return out


class K25ForConditionalGeneration(nn.Module):
    """The K2.5 model. Parameters = ``count_params(cfg)`` exactly (vision tower + projector + backbone)."""

    def __init__(self, cfg: ModelConfig, moe_backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        if cfg.vision is None or cfg.media_placeholder_token_id is None:
            raise ValueError("cfg must have a vision config and a media_placeholder_token_id (use nano/small/k25)")
        self.config = cfg
        self.pad_id = cfg.media_placeholder_token_id
        self.vision_tower = VisionTower(cfg.vision, cfg.text.hidden_size)
        self.language_model = K2ForCausalLM(cfg.text, moe_backend)

    # ------------------------------------------------------------------ media
    def media_token_counts(self, item: Any) -> list[int]:
        """Merged tokens per chunk of an image/video (how many pads each placeholder expands to)."""
        return media_token_counts(item, self.config.vision)

    def encode_media(self, media: Sequence[Any]) -> torch.Tensor:
        """All media of a batch in one packed forward -> ``[sum of tokens, text_hidden]`` in order."""
        if not media:
            return torch.zeros(0, self.config.text.hidden_size, device=self.language_model.lm_head.weight.device)
        parts = self.vision_tower.encode(list(media))
        return torch.cat(parts, dim=0)

    def embed(self, input_ids: torch.Tensor, media: Sequence[Any] | None = None) -> torch.Tensor:
        """Token embeddings with the vision embeddings fused in at the media pads."""
        embeds = self.language_model.model.embed_tokens(input_ids)
        n_pads = int((input_ids == self.pad_id).sum())
        # FSDP2 with the tower sharded: every rank must run the tower's units (all-gather, then reduce-scatter in
        # backward) whenever any rank does; a rank without media runs one blank image and adds 0 x its output
        peers = self._vision_sharded() and self._any_rank_has_media(bool(media), input_ids.device)
        if not media:
            if n_pads:
                raise ValueError(f"media: input_ids hold {n_pads} <|media_pad|> tokens but no media were given")
            if peers:
                blank = self.vision_tower.encode([self._blank_image()])[0]
                embeds = embeds + 0.0 * blank.sum()
            return embeds
        return scatter_media(embeds, input_ids, self.encode_media(media), self.pad_id)

    def _vision_sharded(self) -> bool:
        """True when the vision tower is FSDP2-sharded over more than one process: a rank whose batch has no media
        must still all-gather (and reduce-scatter) the tower's units with its peers, or the collectives of the
        ranks that do encode media would wait forever (or pair with the wrong messages)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return False
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in self.vision_tower.modules())

    @staticmethod
    def _any_rank_has_media(mine: bool, device: torch.device) -> bool:
        """Whether any rank's batch holds media (one max all-reduce; every rank calls it at the same point).
        When none does, no rank runs the tower: its gradients stay None everywhere, as on one process."""
        flag = torch.tensor([1.0 if mine else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _blank_image(self) -> np.ndarray:
        """The smallest image the tower takes: one merge unit of patches, black."""
        v = self.config.vision
        return np.zeros((v.patch_size * v.merge_kernel_size[0], v.patch_size * v.merge_kernel_size[1], 3), np.uint8)

    # ------------------------------------------------------------------ LM
    def forward(self, input_ids: torch.Tensor, media: Sequence[Any] | None = None, **kw) -> torch.Tensor:
        """Logits ``[B, S, vocab]``; ``kw`` as :meth:`k25mini.model.K2Model.forward` (doc_ids, position_ids...)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids must be an integer tensor [B, S]")
        return self.language_model(inputs_embeds=self.embed(input_ids, media), **kw)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, media: Sequence[Any] | None = None,
             shift: bool = False, **kw) -> torch.Tensor:
        """Cross-entropy on text targets. By default ``labels`` are already next tokens (``shift=False``),
        as :class:`k25mini.pretrain.packing.MixedPacker` produces them."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids must be an integer tensor [B, S]")
        return self.language_model.loss(inputs_embeds=self.embed(input_ids, media), labels=labels,
                                        shift=shift, **kw)

    def moe_aux_loss(self) -> torch.Tensor:
        return self.language_model.moe_aux_loss()

    def update_moe_bias(self, group=None) -> None:
        self.language_model.update_moe_bias(group)
