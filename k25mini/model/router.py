"""Sigmoid top-k router with an aux-loss-free selection bias (DeepSeek-V3 ``noaux_tc``, as used by Kimi K2).

For T tokens and E routed experts (K chosen per token):

* scores      s = sigmoid(x W_r^T)                       [T, E], computed in (at least) float32
* selection   ids = top-K of (s + b)                     b = ``e_score_correction_bias`` [E], a buffer that only
  decides WHICH experts are chosen; it never enters the output, so it gets no gradient.
  With ``n_group > 1`` the experts are split into ``n_group`` equal groups, each group is scored by the sum of
  its two best biased scores, only the best ``topk_group`` groups stay eligible (node-limited routing).
* weights     w = s[ids] (unbiased), divided by their sum when ``norm_topk_prob``, then x ``routed_scaling_factor``.

Load balance is kept without an auxiliary loss by nudging the bias after each optimizer step:
``b_i += rate * sign(mean_j load_j - load_i)`` (overloaded experts become less attractive).

The optional sequence-level balance loss (DeepSeek-V3 eqs. 17-20), per sequence of length S::

    f_i  = E / (K S) * #{t : expert i in top-K(t)}           (detached: an indicator)
    P_i  = 1/S * sum_t  s_{t,i} / sum_j s_{t,j}              (differentiable through the scores)
    L    = alpha * sum_i f_i P_i                             averaged over the sequences of the batch

A perfectly balanced router gives f_i = 1 and P_i = 1/E, so L = alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from k25mini.config import TextConfig

__all__ = [
    "Router",
    "RouterOutput",
    "router_scores",
    "select_experts",
    "topk_weights_from_scores",
    "expert_load",
    "sequence_aux_loss",
    "aux_free_bias_update",
]


@dataclass
class RouterOutput:
    """topk_ids [T, K] int64, topk_weights [T, K] (float32 or wider), scores [T, E] unbiased sigmoid scores."""

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    scores: torch.Tensor


def router_scores(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sigmoid affinities, x [T, D], weight [E, D] -> [T, E] in float32 (float64 stays float64)."""
    # fp32 logits: bf16 logits of near-equal experts tie and flip the top-k choice between runs
    wide = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
    return torch.sigmoid(F.linear(x.to(wide), weight.to(wide)))


def select_experts(
    scores: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_group: int = 1, topk_group: int = 1
) -> torch.Tensor:
    """Top-k experts on ``scores + bias`` [T, E] with optional group-limited selection -> ids [T, K] int64."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [T, E], got shape {tuple(scores.shape)}")
    T, E = scores.shape
    if E % n_group:
        raise ValueError(f"n_group ({n_group}) must divide the number of experts ({E})")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must be in [1, n_group={n_group}], got {topk_group}")
    if not 1 <= top_k <= topk_group * (E // n_group):
        raise ValueError(f"top_k must be in [1, topk_group * E / n_group = {topk_group * (E // n_group)}], got {top_k}")
    choice = scores.detach() if bias is None else scores.detach() + bias.to(scores.dtype)
    if n_group > 1:
        per = E // n_group
        grouped = choice.view(T, n_group, per)
        group_score = grouped.topk(min(2, per), dim=-1).values.sum(-1)  # [T, n_group]
        keep = group_score.topk(topk_group, dim=-1).indices
        eligible = torch.zeros(T, n_group, dtype=torch.bool, device=scores.device).scatter_(1, keep, True)
        # -inf (not 0) so a masked expert can never beat an eligible one with a negative biased score
        choice = choice.masked_fill(~eligible.unsqueeze(-1).expand(T, n_group, per).reshape(T, E), float("-inf"))
    return choice.topk(top_k, dim=-1).indices


def topk_weights_from_scores(
    scores: torch.Tensor, topk_ids: torch.Tensor, norm_topk_prob: bool, routed_scaling_factor: float
) -> torch.Tensor:
    """Unbiased scores of the chosen experts [T, K], optionally normalised to sum 1, times the scaling factor."""
    w = scores.gather(-1, topk_ids)
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor


def expert_load(topk_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: topk_ids [..., K] -> [E] int64."""
    return torch.bincount(topk_ids.reshape(-1), minlength=n_experts)


def sequence_aux_loss(scores: torch.Tensor, topk_ids: torch.Tensor, alpha: float) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss (module docstring). scores [B, S, E], topk_ids [B, S, K] -> scalar."""
    if scores.dim() != 3 or topk_ids.dim() != 3 or scores.shape[:2] != topk_ids.shape[:2]:
        raise ValueError(
            f"scores must be [B, S, E] and topk_ids [B, S, K], got {tuple(scores.shape)} and {tuple(topk_ids.shape)}"
        )
    B, S, E = scores.shape
    K = topk_ids.shape[-1]
    chosen = torch.zeros_like(scores, dtype=scores.dtype).scatter_(-1, topk_ids, 1.0)
    f = chosen.sum(1) * (E / (K * S))  # [B, E], no grad (scatter of constants)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)  # [B, E]
    return alpha * (f * p).sum(-1).mean()


@torch.no_grad()
def aux_free_bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """In place: bias += rate * sign(mean(load) - load). bias, load [E]. Returns bias."""
    load = load.to(torch.float64)
    bias.add_((rate * torch.sign(load.mean() - load)).to(bias.dtype))
    return bias


class Router(nn.Module):
    """Gate of one MoE layer. forward(x [T, D]) -> :class:`RouterOutput`.

    ``weight`` [E, D] is a parameter; ``e_score_correction_bias`` [E] is a float32 buffer (selection only).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TextConfig):
            raise ValueError(f"cfg must be a TextConfig, got {type(cfg).__name__}")
        E, D = cfg.n_routed_experts, cfg.hidden_size
        if cfg.num_experts_per_tok > cfg.topk_group * (E // cfg.n_group):
            raise ValueError(
                f"num_experts_per_tok ({cfg.num_experts_per_tok}) must be <= topk_group * n_routed_experts / n_group "
                f"({cfg.topk_group * (E // cfg.n_group)}): fewer experts are eligible than must be chosen"
            )
        self.n_experts, self.dim = E, D
        self.top_k = cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.norm_topk_prob = bool(cfg.norm_topk_prob)
        self.routed_scaling_factor = float(cfg.routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(E, D))
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.dim**-0.5  # nn.Linear's default range for fan_in = D
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.e_score_correction_bias)

    def _apply(self, fn: Callable, recurse: bool = True) -> Router:
        # keep the bias in float32 even after model.to(bfloat16): updates of 1e-3 vanish in bf16 near |b| ~ 1
        super()._apply(fn, recurse)
        b = self.e_score_correction_bias
        if b.is_floating_point() and b.dtype != torch.float32:
            self.e_score_correction_bias = b.float()
        return self

    def forward(self, x: torch.Tensor) -> RouterOutput:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [T, {self.dim}], got shape {tuple(x.shape)}")
        scores = router_scores(x, self.weight)
        ids = select_experts(scores, self.e_score_correction_bias, self.top_k, self.n_group, self.topk_group)
        w = topk_weights_from_scores(scores, ids, self.norm_topk_prob, self.routed_scaling_factor)
        return RouterOutput(topk_ids=ids, topk_weights=w, scores=scores)

    def extra_repr(self) -> str:
        return (
            f"experts={self.n_experts}, dim={self.dim}, top_k={self.top_k}, n_group={self.n_group}, "
            f"topk_group={self.topk_group}, norm_topk_prob={self.norm_topk_prob}, "
            f"routed_scaling_factor={self.routed_scaling_factor}"
        )
