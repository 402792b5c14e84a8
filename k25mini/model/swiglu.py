"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases (the K2 dense FFN and the shared expert)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """x [..., dim] -> [..., dim]. ``gate_proj``/``up_proj`` [hidden, dim], ``down_proj`` [dim, hidden]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be an int > 0, got {v!r}")
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
