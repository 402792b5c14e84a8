"""MuonClip's optimiser half: Muon for weight matrices, AdamW for everything else, in one optimiser.

Muon step for a matrix W [m, n] with gradient G (K2 Algorithm 1, momentum written as an EMA):

    B <- mu B + (1 - mu) G                       (momentum buffer)
    U  = (1 - mu) G + mu B      if nesterov else B
    O  = NewtonSchulz5(U)                        (~ U V^T of U's SVD: all singular values ~ 1)
    W <- W (1 - lr wd) - lr * 0.2 * sqrt(max(m, n)) * O

The EMA buffer is (1 - mu) times the paper's sum buffer M <- mu M + G; Newton-Schulz normalises its
input, so the update is the same. An orthogonal m x n matrix has RMS 1/sqrt(max(m, n)), so the
0.2 * sqrt(max(m, n)) factor gives every matrix an update RMS of ~0.2, the typical RMS of an AdamW
update: Muon can then share AdamW's learning rate and weight decay ("match_rms_adamw" in
``torch.optim.Muon``; tested equal to it on 2-D parameters).

Leading dimensions are a batch: a stacked expert weight [E, D, 2F] is E independent matrices.
``split_last=k`` additionally cuts the last dim into k equal blocks that are orthogonalised
separately - used for the fused [gate | up] expert weight, so gate and up are treated as the two
separate matrices they are in K2 (each gets its own Newton-Schulz and its own
0.2 * sqrt(max(D, F)) scale), instead of one [D, 2F] matrix whose orthogonalisation would couple them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["zeropower_via_newtonschulz", "MuonClip", "NS_COEFFICIENTS"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic from Keller Jordan's Muon (also torch.optim.Muon's)


def zeropower_via_newtonschulz(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Approximately orthogonalise every trailing [m, n] matrix of g [..., m, n]; returns ``dtype``.

    X <- X / ||X||_F, then ``steps`` times: A = X X^T; X <- a X + (b A + c A^2) X (on the wide side).
    """
    if g.ndim < 2:
        raise ValueError(f"g must have >= 2 dims [..., m, n], got shape {tuple(g.shape)}")
    if not 0 < steps < 100:
        raise ValueError(f"steps must be in [1, 99], got {steps}")
    a, b, c = coefficients
    tall = g.shape[-2] > g.shape[-1]
    x = g.to(dtype)
    if tall:  # iterate on the wide orientation: the Gram matrix is the small one
        x = x.mT
    if x.ndim == 2:  # the exact op sequence of torch.optim.Muon for plain matrices
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        lead = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:])
        x = x / torch.linalg.matrix_norm(x.float()).to(dtype).clamp(min=eps)[:, None, None]
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        x = x.reshape(*lead, *x.shape[-2:])
    return x.mT if tall else x


class MuonClip(torch.optim.Optimizer):
    """Muon (groups with ``use_muon=True``) + AdamW (``use_muon=False``) in one optimiser.

    Group keys: ``lr``, ``weight_decay`` (decoupled: W <- W (1 - lr wd) for both kinds), and
    Muon: ``momentum``, ``nesterov``, ``ns_steps``, ``ns_coefficients``, ``eps``, ``split_last``, ``rms_scale``;
    AdamW: ``betas``, ``adam_eps``. QK-Clip is attached as a post-step hook (:func:`k25mini.optim.build_optimizer`).

    ``ns_dtype``: Newton-Schulz precision. None: bfloat16 for CUDA parameters (as Keller Jordan's Muon, K2 and
    ``torch.optim.Muon``), float32 on CPU, where bf16 matmuls are 5-30x slower than fp32 (and fp32 is more exact).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-4,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        rms_scale: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        for name, v in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum), ("rms_scale", rms_scale)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not all(0 <= bt < 1 for bt in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients), eps=eps, rms_scale=rms_scale, betas=tuple(betas),
            adam_eps=adam_eps, use_muon=True, split_last=1,
        )
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            k = group["split_last"]
            for p in group["params"]:
                if group["use_muon"] and p.ndim < 2:
                    raise ValueError(f"use_muon groups need params with >= 2 dims, got shape {tuple(p.shape)}")
                if group["use_muon"] and (not isinstance(k, int) or k < 1 or p.shape[-1] % k):
                    raise ValueError(f"split_last={k!r} must be an int >= 1 dividing the last dim of {tuple(p.shape)}")

    @staticmethod
    def update_scale(shape: torch.Size | tuple[int, ...], rms_scale: float = 0.2, split_last: int = 1) -> float:
        """The Muon lr multiplier rms_scale * sqrt(max(m, n)) for the trailing [m, n / split_last] matrices."""
        return rms_scale * math.sqrt(max(shape[-2], shape[-1] // split_last))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict) -> None:
        lr, wd, mu, k = group["lr"], group["weight_decay"], group["momentum"], group["split_last"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - mu)
            u = g.lerp(buf, mu) if group["nesterov"] else buf
            blocks = u.chunk(k, dim=-1) if k > 1 else (u,)
            ns_dtype = self.ns_dtype or (torch.bfloat16 if p.device.type == "cuda" else torch.float32)
            o = torch.cat(
                [zeropower_via_newtonschulz(b, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                            ns_dtype) for b in blocks],
                dim=-1,
            )
            p.mul_(1 - lr * wd)
            p.add_(o.to(p.dtype), alpha=-lr * self.update_scale(p.shape, group["rms_scale"], k))

    def _adamw_group(self, group: dict) -> None:
        lr, wd, (b1, b2), eps = group["lr"], group["weight_decay"], group["betas"], group["adam_eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
