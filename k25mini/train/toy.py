"""A seconds-long toy task for exercising the trainer (tests, docs): predict the largest token of a window.

``TinyCharMLP``: embedding -> concat window -> Linear -> GELU -> Dropout -> Linear -> logits [B, V]. The dropout
makes the loss depend on the torch RNG, which is what a resume test must prove is restored.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyCharMLP", "toy_batch_at", "toy_loss", "ToyStream", "toy_job", "TOY_JOB"]

#: the toy task as a job of the entry point: ``python -m k25mini.train --job k25mini.train.toy:toy_job``
TOY_JOB = "k25mini.train.toy:toy_job"


class TinyCharMLP(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 16, window: int = 4, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.vocab, self.window = vocab, window
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([nn.Linear(window * dim, hidden), nn.Linear(hidden, vocab)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, window] int64 -> logits [B, vocab]."""
        h = self.embed(x).flatten(1)
        h = self.drop(F.gelu(self.blocks[0](h)))
        return self.blocks[1](h)


def toy_batch_at(index: int, batch: int = 8, vocab: int = 16, window: int = 4) -> dict[str, torch.Tensor]:
    """A pure function of ``index``: {"x": [batch, window] tokens, "y": [batch] = max(x)}."""
    g = torch.Generator().manual_seed(10_007 * index + 1)
    x = torch.randint(vocab, (batch, window), generator=g)
    return {"x": x, "y": x.max(-1).values}


def toy_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = model(batch["x"])
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: take the loss in float32
        logits = logits.float()
    loss = F.cross_entropy(logits, batch["y"])
    return loss, {"acc": (logits.argmax(-1) == batch["y"]).float().mean()}


class ToyStream:
    """The stateful form of the data contract: ``next()`` plus JSON ``state_dict`` (a counter and a seed)."""

    def __init__(self, seed: int = 0, batch: int = 8) -> None:
        self.seed, self.batch, self.pos = seed, batch, 0

    def __iter__(self) -> ToyStream:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        out = toy_batch_at(self.seed * 1_000_003 + self.pos, self.batch)
        self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.pos = int(state["seed"]), int(state["pos"])


def toy_job(out: str | None = None, steps: int = 20, lr: float = 3e-3, seed: int = 0, batch: int = 8,
            dropout: float = 0.0, optimizer: str = "adamw", ckpt_every: int = 0):
    """The toy task as a :class:`~k25mini.train.job.JobParts` (an example job; the tests' parity subject)."""
    from k25mini.train.config import TrainConfig
    from k25mini.train.job import JobParts

    torch.manual_seed(seed)
    model = TinyCharMLP(dropout=dropout)
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=min(2, steps), optimizer=optimizer, seed=seed, out_dir=out,
                      ckpt_every=ckpt_every, log_every=1, progress=False)
    return JobParts(model, toy_loss, lambda i: toy_batch_at(i, batch), cfg, info={"batch": batch})
