"""The one record every generator returns: training samples and eval items share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from k25mini.world.media import IMAGE_PLACEHOLDER, media_placeholder

__all__ = ["Item", "EvalItem", "SUITES", "IMAGE", "video_tag", "check_suite"]

# Table 1's columns, in the paper's order.
SUITES: tuple[str, ...] = ("VisKnow", "VisReason", "OCR", "TextKnow", "TextReason", "Code")
IMAGE = IMAGE_PLACEHOLDER


def video_tag(num_frames: int) -> str:
    """Placeholder for a video: one ``<|media_pad|>`` per 4-frame chunk (the vision tower's chunking)."""
    return media_placeholder("video", num_frames=num_frames)


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    return suite


@dataclass
class Item:
    """A question about the world.

    ``prompt`` ends with ``A:`` and holds one media placeholder per entry of ``images`` (in order);
    ``images`` are ``uint8 [H, W, 3]`` (or ``[T, H, W, 3]`` videos); ``answer`` is short;
    ``meta`` is the ground truth: at least ``skill``, ``scorer``, ``key`` (content identity), plus
    what the scorer and the chance baseline need.
    """

    suite: str
    prompt: str
    images: list[np.ndarray] = field(default_factory=list)
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The training string: prompt and answer (documents keep their text in ``prompt``, answer empty)."""
        return f"{self.prompt} {self.answer}" if self.answer else self.prompt


EvalItem = Item
