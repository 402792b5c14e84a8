"""``TrainConfig``: every knob of :class:`k25mini.train.Trainer`, validated at construction.

Counting conventions: ``steps`` are optimiser steps; one step consumes ``grad_accum`` micro-batches.
``*_every = 0`` switches the periodic action off (eval and checkpoint still happen once at the end when
``eval_at_end`` / ``save_final`` say so).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "OPTIMIZERS", "DECAYS", "NONFINITE"]

OPTIMIZERS = ("adamw", "muon", "muonclip")
DECAYS = ("cosine", "linear", "constant")
NONFINITE = ("raise", "skip")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """Training-loop settings (see module docstring for the counting conventions).

    Optimiser: ``optimizer`` in {"adamw", "muon", "muonclip"} is built by ``k25mini.optim.build_optimizer``
    (``qk_clip_tau`` and ``adamw_lr`` are passed through; ``qk_clip_tau=None`` keeps its default: 100 for
    muonclip, off otherwise). LR: linear warmup over ``warmup_steps`` to ``lr``, then ``decay`` down to
    ``lr * min_lr_ratio`` at the last step; every param group is scaled by the same factor, so per-group
    base-lr ratios are preserved. ``bf16``: autocast to bfloat16 on CUDA only (never on CPU, so CPU runs
    stay bit-exact float32/float64).

    Numerical guard: ``nonfinite`` says what a step with a NaN/inf loss or gradient does. "raise" (default):
    FloatingPointError naming the step and "loss" or the first module with a non-finite gradient; the weights,
    optimiser state and checkpoints are left as they were before that step. "skip": the step's gradients are
    dropped and the optimiser does not step, but the step counter (so the LR schedule and the data position)
    advances; skips are logged ("skipped": fraction of the log interval, "skipped_total": running count).
    ``halt_on_nonfinite`` is the older spelling (True = "raise", False = "skip"); when given it sets
    ``nonfinite`` and is then reset to None.
    """

    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    decay: str = "cosine"
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    qk_clip_tau: float | None = None
    adamw_lr: float | None = None
    grad_accum: int = 1
    eval_every: int = 0
    eval_at_end: bool = True
    ckpt_every: int = 0
    save_final: bool = True
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    out_dir: str | None = None
    device: str = "auto"
    bf16: bool = True
    shard_batch: bool = True
    nonfinite: str = "raise"
    halt_on_nonfinite: bool | None = None  # deprecated alias of nonfinite (True = "raise", False = "skip")
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what it should be."""
        for name in ("steps", "grad_accum", "keep_last"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "log_every", "seed"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 0):
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {v!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must be <= steps={self.steps}, got {self.warmup_steps}")
        if not (_is_num(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.adamw_lr is not None and not (_is_num(self.adamw_lr) and self.adamw_lr > 0):
            raise ValueError(f"TrainConfig.adamw_lr must be None or a finite number > 0, got {self.adamw_lr!r}")
        if not (_is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay must be one of {DECAYS}, got {self.decay!r}")
        if not (_is_num(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (_is_num(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be None (off) or a finite number > 0, got {self.grad_clip!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        b = self.betas
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_num(x) and 0 <= x < 1 for x in b)):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {b!r}")
        self.betas = (float(b[0]), float(b[1]))
        if not (_is_num(self.eps) and self.eps > 0):
            raise ValueError(f"TrainConfig.eps must be a finite number > 0, got {self.eps!r}")
        if self.qk_clip_tau is not None and not (_is_num(self.qk_clip_tau) and self.qk_clip_tau > 0):
            raise ValueError(f"TrainConfig.qk_clip_tau must be None or a finite number > 0, got {self.qk_clip_tau!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            self.out_dir = str(self.out_dir)  # accept pathlib.Path; stored as str so the config is JSON-able
        dev = self.device
        if not (isinstance(dev, str) and (dev == "auto" or dev.split(":")[0] in ("cpu", "cuda"))):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"TrainConfig.nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")
        if self.halt_on_nonfinite is not None:
            if not isinstance(self.halt_on_nonfinite, bool):
                raise ValueError(f"TrainConfig.halt_on_nonfinite must be None or bool, got {self.halt_on_nonfinite!r}")
            if self.halt_on_nonfinite and self.nonfinite == "skip":
                raise ValueError("TrainConfig.halt_on_nonfinite=True contradicts nonfinite='skip' (use nonfinite only)")
            self.nonfinite = "raise" if self.halt_on_nonfinite else "skip"
            self.halt_on_nonfinite = None
        for name in ("bf16", "shard_batch", "progress", "eval_at_end", "save_final"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"TrainConfig.extra must be a dict, got {type(self.extra).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig got unknown fields {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
