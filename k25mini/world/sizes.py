"""How big the world is at each ``K25_SCALE`` (smoke / cpu / gpu).

Kept small on purpose: chapters train a ~0.5M-parameter model on this world for minutes on a CPU,
so entity counts, name vocabularies and text lengths must stay learnable at that size.
"""

from __future__ import annotations

from dataclasses import dataclass

from k25mini.scale import pick

__all__ = ["WorldSizes", "sizes"]


@dataclass(frozen=True)
class WorldSizes:
    n_entities: int  # creatures in the encyclopedia (<= 64: one colour x shape look each)
    corpus_rows: int  # rows per training corpus
    eval_items: int  # items per eval suite (fixed per scale)
    icon_side: tuple[int, int]  # min/max side of entity icons, px (H and W drawn independently)
    scene_side: tuple[int, int]  # min/max side of multi-object scenes, px
    max_objects: int  # objects per scene
    max_frames: int  # frames per video (1..16)
    video_side: tuple[int, int]  # min/max side of a video frame, px
    wide_tasks: int  # wide-search tasks
    deep_tasks: int  # deep-search tasks


def sizes(scale: str | None = None) -> WorldSizes:
    """The sizes for ``scale`` (default: the current ``K25_SCALE``)."""
    return WorldSizes(
        n_entities=pick(smoke=12, cpu=24, gpu=48, scale=scale),
        corpus_rows=pick(smoke=48, cpu=1500, gpu=20000, scale=scale),
        eval_items=pick(smoke=16, cpu=64, gpu=128, scale=scale),
        icon_side=pick(smoke=(24, 48), cpu=(24, 64), gpu=(24, 96), scale=scale),
        scene_side=pick(smoke=(48, 64), cpu=(48, 96), gpu=(48, 128), scale=scale),
        max_objects=pick(smoke=5, cpu=6, gpu=8, scale=scale),
        max_frames=pick(smoke=6, cpu=8, gpu=16, scale=scale),
        video_side=pick(smoke=(24, 40), cpu=(32, 48), gpu=(32, 64), scale=scale),
        wide_tasks=pick(smoke=4, cpu=16, gpu=64, scale=scale),
        deep_tasks=pick(smoke=4, cpu=16, gpu=64, scale=scale),
    )
