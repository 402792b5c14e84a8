"""What a speedrun stage is: a named step of one model's life that trains from the previous stage's output.

A chapter's ``speedrun_stages(scale)`` returns :class:`Stage` objects; ``k25mini.speedrun`` runs them in chapter
order with one :class:`StageContext`. A stage reads what earlier stages left in ``ctx.state`` (e.g.
``ctx.state["checkpoint"]``), trains under ``ctx.runs_dir`` (resuming whatever is finished there), and returns a
:class:`StageResult`. With ``ctx.mode == "reuse"`` it trains nothing and returns the committed result it stands
for (``reused`` = that file), flagged when the code that made it differs from the current code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "Stage", "StageContext", "StageResult"]

#: train (resume what is finished), reuse (replay committed results), fresh (ignore everything on disk)
MODES: tuple[str, ...] = ("train", "reuse", "fresh")


@dataclass
class StageContext:
    scale: str
    runs_dir: Path  # this speedrun's checkpoints and per-stage results (never the committed results/)
    results_dir: Path  # the committed results (read for --reuse and for the report card)
    mode: str = "train"
    progress: bool = True
    state: dict[str, Any] = field(default_factory=dict)  # outputs of earlier stages
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass
class StageResult:
    lines: dict[str, str]  # the stage's result line(s), printed and kept in results/speedrun_<scale>.json
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers the report card compares
    reused: str | None = None  # the committed file replayed (mode "reuse")
    stale: str | None = None  # why the reused / resumed result's code version differs from the current code
    resumed: bool = False  # finished by an earlier run of this speedrun, not trained now


@dataclass(frozen=True)
class Stage:
    key: str  # short id, unique in the speedrun ("text", "vit", "joint", "swarm", ...)
    title: str
    run: Callable[[StageContext], StageResult]
