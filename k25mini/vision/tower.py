"""``VisionTower``: MoonViT-3D encoder + ``tpool_patch_merger`` + projector, on the packed format.

    tower = VisionTower(cfg.vision, cfg.text.hidden_size)
    embeds = tower(patches, grid_thw)            # [sum_i (h_i/2)*(w_i/2), text_hidden], packing order
    per_item = tower.encode([img_uint8, video_uint8])   # list of [n_i, text_hidden]

Images and videos share every weight; an image is a one-frame chunk. Each chunk yields
``num_media_tokens(t, h, w, cfg) = (h/2)*(w/2)`` embeddings whatever its t (temporal mean-pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from k25mini.config import VisionConfig
from k25mini.vision.encoder import MoonViT3dEncoder, PatchEmbed
from k25mini.vision.merger import PatchMergerProjector, tpool_patch_merger
from k25mini.vision.packing import as_grid_thw, cu_seqlens_from_grid, pack, rope_position_ids
from k25mini.vision.preprocess import MediaChunk, chunk_frame_counts, preprocess, target_grid, to_float_frames
from k25mini.vision.rope import rope_angles

__all__ = ["VisionTower", "num_media_tokens", "media_token_counts"]


def num_media_tokens(t: int | torch.Tensor, h: int | None = None, w: int | None = None,
                     cfg: VisionConfig | None = None) -> int | list[int]:
    """Merged tokens of one chunk with patch grid ``(t, h, w)``: ``(h/kh)*(w/kw)`` (t is pooled away).

    Also accepts a ``grid_thw [N, 3]`` tensor as first argument and returns a list (one count per chunk).
    """
    kh, kw = (cfg.merge_kernel_size if cfg is not None else (2, 2))
    if isinstance(t, torch.Tensor):
        g = as_grid_thw(t)
        return [num_media_tokens(*row, cfg=cfg) for row in g.tolist()]
    if h is None or w is None:
        raise ValueError("num_media_tokens needs (t, h, w) or a grid_thw tensor")
    if min(t, h, w) < 1 or h % kh or w % kw:
        raise ValueError(f"(t, h, w) = {(t, h, w)} must be >= 1 with h, w multiples of the merge kernel {(kh, kw)}")
    return (h // kh) * (w // kw)


def media_token_counts(item: Any, cfg: VisionConfig, name: str = "media") -> list[int]:
    """Tokens per chunk (one ``<|media_pad|>`` placeholder per chunk) for a raw image or video."""
    frames = to_float_frames(item, name)
    h, w = target_grid(frames.shape[-2], frames.shape[-1], cfg)
    return [num_media_tokens(t, h, w, cfg) for t in chunk_frame_counts(frames.shape[0], cfg.temporal_chunk_size)]


class VisionTower(nn.Module):
    """MoonViT-3D + patch-merger projector. Parameter layout matches :func:`k25mini.config.count_params`."""

    def __init__(self, cfg: VisionConfig, text_hidden_size: int) -> None:
        super().__init__()
        if not isinstance(cfg, VisionConfig):
            raise ValueError(f"cfg must be a VisionConfig, got {type(cfg).__name__}")
        if isinstance(text_hidden_size, bool) or not isinstance(text_hidden_size, int) or text_hidden_size < 1:
            raise ValueError(f"text_hidden_size must be an int >= 1, got {text_hidden_size!r}")
        if cfg.temporal_chunk_size > cfg.init_pos_emb_time:
            raise ValueError(f"cfg.temporal_chunk_size ({cfg.temporal_chunk_size}) must be <= init_pos_emb_time "
                             f"({cfg.init_pos_emb_time}) so every chunk frame has a temporal embedding")
        if cfg.hidden_size % 2:
            raise ValueError(f"cfg.hidden_size must be even (sin-cos time table), got {cfg.hidden_size}")
        self.cfg = cfg
        self.text_hidden_size = text_hidden_size
        self.patch_embed = PatchEmbed(cfg)
        self.encoder = MoonViT3dEncoder(cfg)
        grid_table = (cfg.init_pos_emb_height, cfg.init_pos_emb_width) if cfg.grid_pos_emb else None
        self.projector = PatchMergerProjector(cfg.hidden_size, cfg.merge_area, text_hidden_size, cfg.projector_ln_eps,
                                              grid_table)

    # ----------------------------------------------------------------------------------------------
    def _validate(self, patches: torch.Tensor, grid_thw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        p = cfg.patch_size
        g = as_grid_thw(grid_thw)
        if not isinstance(patches, torch.Tensor):
            raise ValueError(f"patches must be a tensor [L, 3*p*p] or [L, 3, p, p], got {type(patches).__name__}")
        if patches.ndim == 4 and tuple(patches.shape[1:]) == (3, p, p):
            patches = patches.flatten(1)
        if patches.ndim != 2 or patches.shape[1] != 3 * p * p:
            raise ValueError(f"patches must have shape [L, {3 * p * p}] or [L, 3, {p}, {p}], "
                             f"got {tuple(patches.shape)}")
        if not patches.dtype.is_floating_point:
            raise ValueError(f"patches must be a float tensor (normalised pixels), got {patches.dtype}")
        L = int(g.prod(1).sum())
        if patches.shape[0] != L:
            raise ValueError(f"patches has {patches.shape[0]} rows but grid_thw {g.tolist()} needs sum(t*h*w) = {L}")
        kh, kw = cfg.merge_kernel_size
        for t, h, w in g.tolist():
            if t > cfg.init_pos_emb_time:
                raise ValueError(f"grid_thw: t={t} exceeds init_pos_emb_time={cfg.init_pos_emb_time} (split videos "
                                 f"into chunks of <= {cfg.temporal_chunk_size} frames)")
            if h % kh or w % kw:
                raise ValueError(f"grid_thw: h={h}, w={w} must be multiples of merge_kernel_size {(kh, kw)}")
            if h > cfg.rope_max_height or w > cfg.rope_max_width:
                raise ValueError(f"grid_thw: (h, w)=({h}, {w}) exceeds the RoPE table "
                                 f"({cfg.rope_max_height}, {cfg.rope_max_width})")
        return patches, g

    def forward_features(self, patches: torch.Tensor, grid_thw: Any, backend: str | None = None) -> torch.Tensor:
        """Encoder output before merging: ``[sum t*h*w, D]`` in packing order."""
        patches, g = self._validate(patches, grid_thw)
        w = self.patch_embed.proj.weight
        patches = patches.to(device=w.device, dtype=w.dtype)
        grid = g.tolist()
        cu = cu_seqlens_from_grid(g, device=patches.device)
        # angles stay in float32 (float64 for gradcheck) even for bf16 weights: position x frequency needs the bits
        adt = torch.float64 if w.dtype == torch.float64 else torch.float32
        angles = rope_angles(rope_position_ids(g, patches.device), self.cfg.head_dim, self.cfg.rope_theta, adt)
        x = self.patch_embed(patches, grid)
        return self.encoder(x, cu, angles, backend)

    def forward(self, patches: torch.Tensor, grid_thw: Any, backend: str | None = None) -> torch.Tensor:
        """Packed ``patches [L, 3*p*p]`` + ``grid_thw [N, 3]`` -> ``[sum_i (h_i/2)(w_i/2), text_hidden]``."""
        x = self.forward_features(patches, grid_thw, backend)
        grid = as_grid_thw(grid_thw).tolist()
        merged = tpool_patch_merger(x, grid, self.cfg.merge_kernel_size)
        if self.projector.grid_pos is None:
            return self.projector(merged)
        kh, kw = self.cfg.merge_kernel_size
        return self.projector(merged, [(h // kh, w // kw) for _, h, w in grid])

    # ----------------------------------------------------------------------------------------------
    def preprocess(self, media: Sequence[Any]) -> list[MediaChunk]:
        """Raw images/videos -> chunks (see :mod:`k25mini.vision.preprocess`)."""
        return preprocess(list(media) if isinstance(media, tuple) else media, self.cfg)

    def encode(self, media: Sequence[Any], backend: str | None = None, per_chunk: bool = False
               ) -> list[torch.Tensor]:
        """Encode images ``[H, W, 3]`` uint8 / ``[3, H, W]`` float and videos ``[T, H, W, 3]`` / ``[T, 3, H, W]``
        in one packed forward. Returns one ``[n_i, text_hidden]`` per input (its chunks concatenated in time
        order), or one tensor per chunk if ``per_chunk``."""
        chunks = self.preprocess(media)
        batch = pack([c.patches for c in chunks], [c.grid_thw for c in chunks])
        out = self(batch.patches, batch.grid_thw, backend)  # __call__: module hooks (FSDP2's unshard) run
        counts = [num_media_tokens(*c.grid_thw, cfg=self.cfg) for c in chunks]
        parts = list(torch.split(out, counts, dim=0))
        if per_chunk:
            return parts
        per_item: list[list[torch.Tensor]] = [[] for _ in media]
        for c, part in zip(chunks, parts):
            per_item[c.source].append(part)
        return [torch.cat(p, dim=0) for p in per_item]
