"""MoonViT-3D vision tower for k25mini: NaViT packing, 2D RoPE, 4-frame chunks with temporal pooling,
2x2 patch merger and MLP projector (paper_facts §3).

Public API: :class:`VisionTower`, :func:`varlen_attention`, :func:`num_media_tokens`,
:func:`media_token_counts`, :func:`preprocess`, :func:`pack` / :func:`unpack`, :func:`tpool_patch_merger`.
"""

from k25mini.vision.attention import BACKENDS, available_backends, select_backend, varlen_attention
from k25mini.vision.encoder import EncoderBlock, MoonViT3dEncoder, PatchEmbed, PositionEmbedding, sincos_time_table
from k25mini.vision.merger import PatchMergerProjector, tpool_patch_merger
from k25mini.vision.packing import (
    PackedBatch,
    as_grid_thw,
    block_diagonal_mask,
    cu_seqlens_from_grid,
    pack,
    pad_to_max,
    padding_stats,
    rope_position_ids,
    segment_ids,
    unpack,
)
from k25mini.vision.preprocess import (
    MediaChunk,
    chunk_frame_counts,
    patchify,
    preprocess,
    target_grid,
    to_float_frames,
    unpatchify,
)
from k25mini.vision.rope import apply_rope_2d, rope_angles, rope_frequencies
from k25mini.vision.tower import VisionTower, media_token_counts, num_media_tokens

__all__ = [
    "BACKENDS",
    "EncoderBlock",
    "MediaChunk",
    "MoonViT3dEncoder",
    "PackedBatch",
    "PatchEmbed",
    "PatchMergerProjector",
    "PositionEmbedding",
    "VisionTower",
    "apply_rope_2d",
    "as_grid_thw",
    "available_backends",
    "block_diagonal_mask",
    "chunk_frame_counts",
    "cu_seqlens_from_grid",
    "media_token_counts",
    "num_media_tokens",
    "pack",
    "pad_to_max",
    "padding_stats",
    "patchify",
    "preprocess",
    "rope_angles",
    "rope_frequencies",
    "rope_position_ids",
    "segment_ids",
    "select_backend",
    "sincos_time_table",
    "target_grid",
    "to_float_frames",
    "tpool_patch_merger",
    "unpack",
    "unpatchify",
    "varlen_attention",
]
