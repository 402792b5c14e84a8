"""Preprocessing: validate raw images/videos, resize to a patch grid, cut videos into chunks, patchify.

Conventions (shapes):

* image: numpy/torch ``uint8`` ``[H, W, 3]`` (the toy world's format) or float ``[3, H, W]`` in ``[0, 1]``;
* video: ``uint8`` ``[T, H, W, 3]`` or float ``[T, 3, H, W]`` in ``[0, 1]``.

An image is a one-frame chunk. A video is split into chunks of ``cfg.temporal_chunk_size`` (4) consecutive
frames; when ``T`` is not a multiple of 4 the **last chunk keeps the remaining 1-3 frames** (no frame is
duplicated or dropped, no padding frame is invented) and its temporal mean-pool averages over the frames it
has. Every chunk becomes one media item with its own ``<|media_pad|>`` placeholder, as in the K2.5 processor.

Each chunk is resized (bicubic, aspect ratio kept) so that its patch grid ``(h, w)`` is a multiple of the
merge kernel, ``min_patches <= h*w <= max_patches``, and ``h, w`` fit the RoPE table; then normalised with
mean = std = 0.5 and cut into patches flattened as ``(channel, row, col)``, the layout of the Conv2d weight.
Patches of a chunk are ordered ``(t, row, col)`` row-major; :func:`k25mini.vision.merger.tpool_patch_merger`
regroups 2x2 neighbours from that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from k25mini.config import VisionConfig

__all__ = [
    "MEAN",
    "STD",
    "MediaChunk",
    "to_float_frames",
    "target_grid",
    "chunk_frame_counts",
    "preprocess",
    "patchify",
    "unpatchify",
]

MEAN = 0.5
STD = 0.5
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class MediaChunk:
    """One media item for the tower: ``patches [t*h*w, 3*p*p]`` and its grid ``(t, h, w)`` in patches."""

    patches: torch.Tensor
    grid_thw: tuple[int, int, int]
    source: int  # index of the image/video in the caller's list
    chunk: int  # index of the chunk within that video (0 for images)


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 or x.dtype in (np.float16, np.float32, np.float64):
            return torch.from_numpy(np.ascontiguousarray(x))
        raise ValueError(f"{name}: unsupported dtype {x.dtype}; expected uint8 [.., H, W, 3] or float [.., 3, H, W]")
    if isinstance(x, torch.Tensor):
        return x
    raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def to_float_frames(x: Any, name: str = "image") -> torch.Tensor:
    """Validate one image or video and return float32 frames ``[T, 3, H, W]`` in ``[0, 1]``.

    uint8 input is channels-last (``[H, W, 3]`` / ``[T, H, W, 3]``); float input is channels-first
    (``[3, H, W]`` / ``[T, 3, H, W]``) with values in ``[0, 1]``. Raises ValueError naming ``name``.
    """
    t = _as_tensor(x, name)
    if t.dtype == torch.uint8:
        if t.ndim not in (3, 4):
            raise ValueError(f"{name}: uint8 input must be [H, W, 3] or [T, H, W, 3], got shape {tuple(t.shape)}")
        if t.shape[-1] != 3:
            raise ValueError(f"{name}: expected 3 channels in the last dim of uint8 input, got shape {tuple(t.shape)}")
        frames = t if t.ndim == 4 else t[None]
        frames = frames.permute(0, 3, 1, 2).float() / 255.0
    elif t.dtype in _FLOAT_DTYPES:
        if t.ndim not in (3, 4):
            raise ValueError(f"{name}: float input must be [3, H, W] or [T, 3, H, W], got shape {tuple(t.shape)}")
        if t.shape[-3] != 3:
            raise ValueError(f"{name}: expected 3 channels in dim -3 of float input, got shape {tuple(t.shape)}")
        frames = (t if t.ndim == 4 else t[None]).float()
    else:
        raise ValueError(f"{name}: unsupported dtype {t.dtype}; expected uint8 or a float dtype")
    if frames.shape[0] == 0 or frames.shape[-1] == 0 or frames.shape[-2] == 0:
        raise ValueError(f"{name}: empty input, shape {tuple(t.shape)} (need T, H, W >= 1)")
    if t.dtype != torch.uint8:
        if not torch.isfinite(frames).all():
            raise ValueError(f"{name}: contains non-finite values (nan/inf)")
        lo, hi = frames.min().item(), frames.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float pixel values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return frames


def target_grid(height: int, width: int, cfg: VisionConfig) -> tuple[int, int]:
    """Patch grid ``(h, w)`` for an ``height x width`` picture: aspect ratio kept as well as whole 2x2 merge
    units allow, ``h % mh == w % mw == 0``, ``min_patches <= h*w <= max_patches``, within the RoPE table."""
    if height < 1 or width < 1:
        raise ValueError(f"height, width must be >= 1, got {height}x{width}")
    p = cfg.patch_size
    mh, mw = cfg.merge_kernel_size
    max_uh, max_uw = cfg.rope_max_height // mh, cfg.rope_max_width // mw
    max_units = cfg.max_patches // (mh * mw)
    min_units = -(-cfg.min_patches // (mh * mw))  # ceil
    if max_units < 1 or max_uh < 1 or max_uw < 1 or min_units > max_uh * max_uw:
        raise ValueError(f"cfg: the patch budget [{cfg.min_patches}, {cfg.max_patches}] admits no merge-aligned grid")
    # scale factor that brings the native patch count into the budget
    native = (height / p) * (width / p)
    s = 1.0
    if native > cfg.max_patches:
        s = math.sqrt(cfg.max_patches / native)
    elif native < cfg.min_patches:
        s = math.sqrt(cfg.min_patches / native)
    uh = min(max_uh, max(1, math.floor(height * s / (p * mh) + 0.5)))  # round half up
    uw = min(max_uw, max(1, math.floor(width * s / (p * mw) + 0.5)))
    aspect = height / width
    # shrink / grow one unit at a time along the axis that keeps the aspect ratio best
    while uh * uw > max_units:
        if (uh > 1 and (uh / uw) >= aspect * (mw / mh)) or uw == 1:
            uh -= 1
        else:
            uw -= 1
    while uh * uw < min_units:
        grow_h = uh < max_uh and ((uh / uw) <= aspect * (mw / mh) or uw >= max_uw)
        if grow_h:
            uh += 1
        else:
            uw += 1
    return uh * mh, uw * mw


def chunk_frame_counts(num_frames: int, chunk_size: int) -> list[int]:
    """Frames per chunk: full chunks of ``chunk_size`` then one shorter chunk with the remainder (if any)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    full, rest = divmod(num_frames, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def patchify(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[t, 3, h*p, w*p]`` -> patches ``[t*h*w, 3*p*p]`` ordered (t, row, col); each patch (c, py, px)."""
    t, c, H, W = frames.shape
    p = patch_size
    h, w = H // p, W // p
    x = frames.reshape(t, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(t * h * w, c * p * p)


def unpatchify(patches: torch.Tensor, grid_thw: tuple[int, int, int], patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[t*h*w, 3*p*p]`` -> ``[t, 3, h*p, w*p]``."""
    t, h, w = grid_thw
    p = patch_size
    x = patches.reshape(t, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(t, 3, h * p, w * p)


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == size:
        return frames
    # antialias so that down-scaling large pictures does not alias; clamp bicubic overshoot back into [0, 1]
    out = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def preprocess(media: list[Any] | tuple[Any, ...], cfg: VisionConfig) -> list[MediaChunk]:
    """Images and videos -> a flat list of :class:`MediaChunk` (images: one chunk; videos: ceil(T/4) chunks)."""
    if not isinstance(media, (list, tuple)):
        raise ValueError(f"media must be a list of images/videos, got {type(media).__name__}")
    out: list[MediaChunk] = []
    for i, item in enumerate(media):
        frames = to_float_frames(item, name=f"media[{i}]")
        h, w = target_grid(frames.shape[-2], frames.shape[-1], cfg)
        p = cfg.patch_size
        frames = _resize(frames, (h * p, w * p))
        frames = (frames - MEAN) / STD
        start = 0
        for c, nt in enumerate(chunk_frame_counts(frames.shape[0], cfg.temporal_chunk_size)):
            chunk = frames[start : start + nt]
            start += nt
            out.append(MediaChunk(patchify(chunk, p), (nt, h, w), source=i, chunk=c))
    return out
