"""Chapter 05's experiment config: :class:`FusionConfig`, its per-scale values and the hashes that key runs.

A run is reused only when its config key matches; the shared stages A (text), B1 (ViT through a caption
decoder) and B (the finished ViT stage) have their own keys so that changing only the joint stage reuses
their checkpoints. Results schema 2 dropped the carve-outs that kept keys of older results valid: every
field is hashed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from k25mini.pretrain.fusion_schedule import SCHEDULES
from k25mini.scale import current_scale, pick, validate_scale

__all__ = ["FusionConfig", "config_for", "text_data_version", "TEXT_SUITES", "VIT_CORPORA", "VIT_SKILLS",
           "VIT_QA_CORPORA", "VIT_QA_SKILLS",
           "VISION_DOCS_VERSION", "VIT_ALIGN"]

TEXT_SUITES: tuple[str, ...] = ("TextKnow", "TextReason", "Code")
# the ViT stage's "caption loss": caption-style rows only (what is in the picture), never Q&A
VIT_CORPORA: tuple[str, ...] = ("captions", "ocr", "charts", "video")
VIT_SKILLS = frozenset({"caption_entity", "caption_scene", "caption_ground", "chart_caption", "video_caption", "ocr"})
# ``vit_qa=True`` (issue #15): the ViT stage also reads dense question-answer rows about its images (visual
# reasoning, chart and motion questions, and the name/fact questions about the non-held-out entities' icons)
VIT_QA_CORPORA: tuple[str, ...] = VIT_CORPORA + ("vis_reasoning", "vis_knowledge")
VIT_QA_SKILLS = VIT_SKILLS | {"count", "compare", "locate", "box", "chart", "motion", "vis_knowledge", "vis_name"}
#: version of the world's vision documents (bump when a corpus changes: it invalidates stage B and every joint run)
#: 1: captions without positions; 2: + grounding captions (objects with cell and box) in stage B and the joint mix;
#: 3: the cpu world made to be seen (issue #15: 8 entities with distinct colours and shapes, images on the 16-px
#: token grid, 48-px scenes, slotted digit OCR). It changes the text corpora too (fewer entities), so from version 3
#: on stage A's key includes it (as :func:`text_data_version`); 4: the cpu world's scenes, boxes, charts and videos
#: on the token grid too (objects one per cell, boxes in thirds, one bar per token column, 8-frame videos at 4 px per
#: frame). Version 4 changed vision documents only (the text corpora and text suites are byte-identical to version
#: 3's), so stage A keeps version 3's key.
VISION_DOCS_VERSION = 4
VIT_ALIGN: tuple[str, ...] = ("decoder", "frozen")

def text_data_version(data_version: int) -> int:
    """The version of the *text* documents inside vision-documents version ``data_version`` (what stage A, text
    only, depends on): 1 and 2 predate the split (A's key did not include it), 3 changed the text corpora, 4 did
    not."""
    return min(int(data_version), 3)


_STAGE_FIELDS = {
    "A": ("scale", "preset", "rows", "seq_len", "text_steps", "optimizer", "text_lr", "warmup", "world_seed",
          "stage_seed", "data_version"),
    "B1": ("vit_steps", "vit_lr", "vit_align", "vit_qa", "grid_pos"),
    "B": ("proj_steps", "proj_lr"),
}


@dataclass(frozen=True)
class FusionConfig:
    """Everything that shapes the ablation's numbers (its hash decides whether saved results are reused)."""

    scale: str
    preset: str = "nano"
    rows: int = 4  # sequences per step
    seq_len: int = 256
    text_steps: int = 1000  # stage A
    vit_steps: int = 300  # stage B
    joint_steps: int = 400  # the fixed joint budget = joint_steps * rows * seq_len tokens
    vision_share: float = 0.10  # total vision share of the joint budget (Table 1: 10 %)
    optimizer: str = "muonclip"
    text_lr: float = 4e-3
    vit_lr: float = 3e-3
    joint_lr: float = 2e-3
    warmup: int = 20
    track_every: int = 25  # text-suite curve during joint training
    eval_items: int = 64  # per suite, final eval (greedy generation)
    max_new_tokens: int = 28
    world_seed: int = 0
    stage_seed: int = 0  # seed of the shared stages A and B
    seeds: tuple[int, ...] = (0, 1, 2)
    schedules: tuple[str, ...] = ("early", "mid", "late")
    data_version: int = VISION_DOCS_VERSION
    vit_align: str = "decoder"  # "decoder": B1 (ViT + projector via a trainable LM copy) + B2; "frozen": one step
    proj_steps: int = 300  # B2: projector-only steps into the frozen language model (vit_align="decoder")
    proj_lr: float | None = None  # B2's peak learning rate (None: vit_lr)
    vit_qa: bool = True  # the ViT stage (B1 and B2) also trains on dense Q&A rows about images (issue #15)
    # the vision tower's ``grid_pos_emb`` (issue #15; not the paper's projector): a learned position of each merged
    # token in its picture, added after the projector. Stage A (text only) never builds it; B1 starts it fresh.
    grid_pos: bool = False

    def __post_init__(self) -> None:
        if self.vit_align not in VIT_ALIGN:
            raise ValueError(f"vit_align must be one of {VIT_ALIGN}, got {self.vit_align!r}")
        for name in ("text_steps", "vit_steps", "joint_steps", "proj_steps"):
            v = getattr(self, name)
            low = 1 if name != "proj_steps" or self.vit_align == "decoder" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        for name in ("vit_qa", "grid_pos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.proj_lr is not None and (isinstance(self.proj_lr, bool) or not isinstance(self.proj_lr, (int, float))
                                         or not self.proj_lr > 0):
            raise ValueError(f"proj_lr must be None (use vit_lr) or a float > 0, got {self.proj_lr!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.rows * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"], d["schedules"] = list(self.seeds), list(self.schedules)
        return d

    def stage_key(self, stage: str) -> str:
        """Hash of the fields stage ``"A"`` (text), ``"B1"`` (ViT via the caption decoder) or ``"B"`` (the finished
        ViT stage) depends on (each includes the earlier ones'), so changing only the joint stage reuses the
        shared checkpoints."""
        if stage not in _STAGE_FIELDS:
            raise ValueError(f"stage must be 'A', 'B1' or 'B', got {stage!r}")
        order = list(_STAGE_FIELDS)
        fields = [f for s in order[: order.index(stage) + 1] for f in _STAGE_FIELDS[s]]
        if self.vit_align == "frozen":  # one-step ViT stage: B2's fields mean nothing to it
            fields = [f for f in fields if f not in _STAGE_FIELDS["B"]]
        d = self.to_dict()
        if stage == "A":
            d["data_version"] = text_data_version(self.data_version)
        return hashlib.sha256(json.dumps({k: d[k] for k in fields}, sort_keys=True).encode()).hexdigest()[:12]

    def key(self) -> str:
        """Hash of everything except the seed list, plus the schedules' definitions (a run is reusable when key
        and seed match)."""
        d = self.to_dict()
        d.pop("seeds")
        d["schedule_defs"] = {s: [SCHEDULES[s].inject_at, SCHEDULES[s].vision_ratio] for s in self.schedules}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def config_for(scale: str | None = None, **overrides: Any) -> FusionConfig:
    """The ablation's config at ``scale`` (default: ``K25_SCALE``)."""
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    base = dict(
        rows=pick(smoke=2, cpu=4, gpu=16, scale=sc),
        seq_len=pick(smoke=160, cpu=256, gpu=512, scale=sc),
        text_steps=pick(smoke=4, cpu=3000, gpu=6000, scale=sc),
        vit_steps=pick(smoke=3, cpu=1500, gpu=1500, scale=sc),
        proj_steps=pick(smoke=2, cpu=300, gpu=300, scale=sc),
        joint_steps=pick(smoke=10, cpu=4000, gpu=4000, scale=sc),
        warmup=pick(smoke=1, cpu=20, gpu=100, scale=sc),
        track_every=pick(smoke=5, cpu=100, gpu=200, scale=sc),
        eval_items=pick(smoke=4, cpu=128, gpu=256, scale=sc),
        max_new_tokens=pick(smoke=4, cpu=28, gpu=28, scale=sc),
    )
    base.update(overrides)
    return FusionConfig(scale=sc, **base)

