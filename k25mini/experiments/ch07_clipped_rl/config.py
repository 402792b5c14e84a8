"""Chapter 07's Table 2 experiment config: vision-only RL from chapter 06's checkpoint, per scale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from k25mini.rl.losses import LOSSES
from k25mini.scale import current_scale, pick, validate_scale

__all__ = ["RLConfig", "config_for", "SUITES", "VISION_SUITES", "TEXT_SUITES", "PACKAGE", "EXPERIMENT", "PAPER"]

#: the module whose code (and everything it imports) stamps chapter 07's results
PACKAGE = "k25mini.experiments.ch07_clipped_rl.run"
EXPERIMENT = "vision_rl"

VISION_SUITES: tuple[str, ...] = ("VisKnow", "VisReason", "OCR")
TEXT_SUITES: tuple[str, ...] = ("TextKnow", "TextReason", "Code")
SUITES: tuple[str, ...] = VISION_SUITES + TEXT_SUITES

#: the paper's Table 2 [K25 §4.4]: text benchmarks before and after vision-only RL; our nearest text suite
PAPER = {
    "section": "arXiv 2602.02276 §4.4, Table 2",
    "claim": "outcome-based RL on visual tasks alone also improves text benchmarks",
    "rows": [("MMLU-Pro", 84.7, 86.4, "TextKnow"), ("GPQA-Diamond", 84.3, 86.4, "TextReason"),
             ("LongBench v2", 56.7, 58.9, None)],
}


@dataclass(frozen=True)
class RLConfig:
    scale: str
    iterations: int = 200
    items_per_iter: int = 8  # prompts per iteration, drawn from the train split of the vision suites
    k: int = 8  # samples per prompt (the group)
    max_new_tokens: int = 24
    temperature: float = 1.0
    lr: float = 3e-4
    optimizer: str = "muonclip"
    loss: str = "kimi_k25"
    alpha: float = 0.5
    beta: float = 2.0
    tau: float = 0.01
    penalty_on_masked: bool = False
    ban_tool_call: bool = True  # the RL environment has no tool: the call marker is never sampled
    eval_items: int = 128  # per suite: chapter 05's frozen held-out suites
    seeds: tuple[int, ...] = (0, 1, 2)
    sft_seed: int = 0  # chapter 06's zero-vision SFT run RL starts from

    def __post_init__(self) -> None:
        for name in ("iterations", "items_per_iter", "k", "max_new_tokens", "eval_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of ints >= 0, got {self.seeds!r}")
        if isinstance(self.sft_seed, bool) or not isinstance(self.sft_seed, int) or self.sft_seed < 0:
            raise ValueError(f"sft_seed must be an int >= 0, got {self.sft_seed!r}")

    def loss_kwargs(self) -> dict[str, Any]:
        if self.loss == "kimi_k25":
            return {"alpha": self.alpha, "beta": self.beta, "tau": self.tau,
                    "penalty_on_masked": self.penalty_on_masked}
        return {}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def key(self) -> str:
        """Hash of everything one seed's run depends on (not the seed list)."""
        d = self.to_dict()
        d.pop("seeds")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def config_for(scale: str | None = None, **overrides: Any) -> RLConfig:
    """The experiment's config at ``scale`` (default: ``K25_SCALE``)."""
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    base = dict(
        iterations=pick(smoke=2, cpu=200, gpu=600, scale=sc),
        items_per_iter=pick(smoke=2, cpu=8, gpu=16, scale=sc),
        k=pick(smoke=2, cpu=8, gpu=8, scale=sc),
        max_new_tokens=pick(smoke=6, cpu=24, gpu=32, scale=sc),
        eval_items=pick(smoke=2, cpu=128, gpu=256, scale=sc),
    )
    base.update(overrides)
    return RLConfig(scale=sc, **base)
