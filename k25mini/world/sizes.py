"""How big the world is at each ``K25_SCALE`` (smoke / cpu / gpu).

Kept small on purpose: chapters train a ~0.5M-parameter model on this world for minutes on a CPU,
so entity counts, name vocabularies and text lengths must stay learnable at that size.

The ``cpu`` world is shaped for a model that must learn to *see* in minutes (issue #15; docs/world.md):

* 16 entities whose looks are spread evenly: each colour and each shape is worn by exactly two of them,
  so an icon is recognised by its colour *and* its shape;
* every image side a multiple of 16 px (``side_step``): one merged vision token of the ``nano`` preset
  (8 px patches, 2x2 merge) covers exactly 16x16 px, so nothing is resampled on the way in;
* scenes of 48x48 px (a 3x3 grid of vision tokens: one token per grid cell) with at most 4 objects;
* OCR strips of 2-3 digits, every glyph zoomed x2 in its own 16-px slot (one token column per character);
* (world v4) everything else on the token grid too: each scene object centred in its own 16-px cell (so a token
  holds one object or none) and boxes answered in thirds (cells); bar charts of three bars, one per token column,
  values 1-6 at 8 px per unit; videos of 48x48 px and exactly 8 frames (two temporal chunks of 4, pooled to one
  token grid each) in which the object moves 4 px per frame, 16 px from one chunk's mean position to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from k25mini.scale import pick

__all__ = ["WorldSizes", "sizes"]

OCR_LETTERS = "abcdefghijklmnopqrstuvwxyz"
OCR_DIGITS = "0123456789"


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
    even_looks: bool = False  # spread entity looks evenly over colours and shapes (needs n_entities <= 16)
    side_step: int = 1  # image sides are drawn as multiples of this (px); 1 = any side
    ocr_chars: str = ""  # OCR strings: "" = 2-3 syllable words or 1-4 digit numbers; else strings of these chars
    ocr_len: tuple[int, int] = (2, 3)  # min/max characters of an OCR string (when ``ocr_chars`` is set)
    ocr_zoom: tuple[int, int] = (1, 3)  # min/max zoom of the OCR bitmap font
    ocr_slot: int = 0  # > 0: each character drawn in its own slot of this many px (after zoom); 0 = proportional
    scene_grid: int = 0  # > 0: scene objects centred one per cell of a scene_grid x scene_grid grid; 0 = anywhere
    box_unit: int = 10  # box answers in 1/box_unit of the image side (10: tenths; 3: thirds = grid cells)
    chart_bars: tuple[int, int] = (3, 5)  # min/max bars of a chart (vision charts; the text twin keeps 3-5)
    chart_max: int = 9  # bar values 1..chart_max (vision charts)
    chart_grid: bool = False  # charts without margins, bar i centred in the i-th equal column
    min_frames: int = 1  # fewest frames of a video (motion questions: at least 2)
    video_speed: int = 0  # px per frame of a moving object; 0 = drawn from the room there is


def sizes(scale: str | None = None) -> WorldSizes:
    """The sizes for ``scale`` (default: the current ``K25_SCALE``)."""
    return WorldSizes(
        n_entities=pick(smoke=12, cpu=16, gpu=48, scale=scale),
        corpus_rows=pick(smoke=48, cpu=1500, gpu=20000, scale=scale),
        eval_items=pick(smoke=16, cpu=64, gpu=128, scale=scale),
        icon_side=pick(smoke=(24, 48), cpu=(32, 48), gpu=(24, 96), scale=scale),
        scene_side=pick(smoke=(48, 64), cpu=(48, 48), gpu=(48, 128), scale=scale),
        max_objects=pick(smoke=5, cpu=4, gpu=8, scale=scale),
        max_frames=pick(smoke=6, cpu=8, gpu=16, scale=scale),
        video_side=pick(smoke=(24, 40), cpu=(48, 48), gpu=(32, 64), scale=scale),
        wide_tasks=pick(smoke=4, cpu=16, gpu=64, scale=scale),
        deep_tasks=pick(smoke=4, cpu=16, gpu=64, scale=scale),
        even_looks=pick(smoke=False, cpu=True, gpu=False, scale=scale),
        side_step=pick(smoke=1, cpu=16, gpu=1, scale=scale),
        ocr_chars=pick(smoke="", cpu=OCR_DIGITS, gpu="", scale=scale),
        ocr_len=pick(smoke=(2, 3), cpu=(2, 3), gpu=(2, 3), scale=scale),
        ocr_zoom=pick(smoke=(1, 3), cpu=(2, 2), gpu=(1, 3), scale=scale),
        ocr_slot=pick(smoke=0, cpu=16, gpu=0, scale=scale),
        scene_grid=pick(smoke=0, cpu=3, gpu=0, scale=scale),
        box_unit=pick(smoke=10, cpu=3, gpu=10, scale=scale),
        chart_bars=pick(smoke=(3, 5), cpu=(3, 3), gpu=(3, 5), scale=scale),
        chart_max=pick(smoke=9, cpu=6, gpu=9, scale=scale),
        chart_grid=pick(smoke=False, cpu=True, gpu=False, scale=scale),
        min_frames=pick(smoke=1, cpu=8, gpu=1, scale=scale),
        video_speed=pick(smoke=0, cpu=4, gpu=0, scale=scale),
    )
