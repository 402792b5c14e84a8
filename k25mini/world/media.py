"""How media appear in the world's prompts: one placeholder block per image (per 4-frame chunk for videos).

The world owns this text so it imports nothing from ``k25mini.data`` (layering: ``world`` <- ``data``);
the toy tokenizer (:mod:`k25mini.data.tokenizer`) re-exports these names and maps each special token to an id.
"""

from __future__ import annotations

__all__ = ["IMAGE_PLACEHOLDER", "media_placeholder", "num_video_chunks"]

IMAGE_PLACEHOLDER = "<|media_begin|>image<|media_content|><|media_pad|><|media_end|>"


def num_video_chunks(num_frames: int, chunk_size: int = 4) -> int:
    """Chunks the vision tower cuts a ``num_frames`` video into (the last one may be shorter)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return -(-num_frames // chunk_size)


def media_placeholder(kind: str = "image", num_frames: int = 1, chunk_size: int = 4) -> str:
    """Placeholder text for one image, or for a video (one block with one pad per chunk)."""
    if kind == "image":
        return IMAGE_PLACEHOLDER
    if kind == "video":
        pads = "<|media_pad|>" * num_video_chunks(num_frames, chunk_size)
        return f"<|media_begin|>video<|media_content|>{pads}<|media_end|>"
    raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
