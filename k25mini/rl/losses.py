"""Policy losses in one registry, so the K2.5 loss can be compared with its relatives.

Every loss has the same signature::

    loss, stats = loss_fn(logp, old_logp, advantages, mask, *, num_tokens=None, num_sequences=None, **hparams)

* ``logp``      [B, L] log π_θ of the sampled tokens (requires grad).
* ``old_logp``  [B, L] log π_old of the same tokens (the sampler's log-probs; detached here).
* ``advantages`` [B] per response (or [B, L] per token), e.g. ``group_advantages(rewards, K)``.
* ``mask``      [B, L] 1 for response tokens that count, 0 for padding / prompt / tool output.
* ``num_tokens`` / ``num_sequences``: the *global* normaliser. Leave None for a single batch; when a
  batch is split into shards (gradient accumulation, data parallel), pass the full batch's count to
  every shard and **sum** the shard losses: the result equals the full-batch loss exactly.

``stats`` holds python floats: ``masked_frac`` (fraction of counted tokens — or sequences, for the
sequence-level losses — whose policy-gradient term is cut to zero by the clip / mask), ``ratio_mean``,
``kl_k3`` (mean of ρ − 1 − log ρ), ``num_tokens`` (local count) and loss-specific extras.

Padding positions may hold anything (even -inf / NaN log-probs): they are replaced by a zero log-ratio
before any arithmetic, so they never reach the loss value or the gradient.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor

LossFn = Callable[..., tuple[Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}

#: exp() of a log-ratio beyond this would overflow / dominate; every loss clamps log ρ to ±this.
LOG_RATIO_CLAMP = 20.0


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator: add ``fn`` to :data:`LOSSES` under ``name``."""

    def deco(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss name {name!r} is already registered")
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    """Look a loss up by name; ValueError lists the known names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


def policy_loss(name: str, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, **hparams):
    """Convenience: ``get_loss(name)(logp, old_logp, advantages, mask, **hparams)``."""
    return get_loss(name)(logp, old_logp, advantages, mask, **hparams)


# --------------------------------------------------------------------------- shared helpers


def _prepare(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clamp: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate; return (log_ratio [B,L] clamped and zero on padding, valid bool [B,L], adv [B,L], mask_f)."""
    if not isinstance(logp, Tensor) or logp.ndim != 2 or not logp.is_floating_point():
        raise ValueError(f"logp must be a floating tensor [B, L]; got {getattr(logp, 'shape', type(logp))}")
    if not isinstance(old_logp, Tensor) or old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must have the shape of logp {tuple(logp.shape)}")
    if not isinstance(mask, Tensor) or mask.shape != logp.shape:
        raise ValueError(f"mask must have the shape of logp {tuple(logp.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or contain only 0 and 1")
        mask = mask != 0
    B = logp.shape[0]
    if not isinstance(advantages, Tensor) or advantages.shape not in ((B,), tuple(logp.shape)):
        raise ValueError(f"advantages must be a tensor of shape [B]=({B},) or [B, L]={tuple(logp.shape)}")
    if not 0 < clamp < float("inf"):  # also rejects NaN
        raise ValueError(f"log_ratio_clamp must be finite and > 0; got {clamp}")
    adv = advantages.detach().to(logp.dtype)
    adv = adv[:, None].expand_as(logp) if adv.ndim == 1 else adv
    raw = logp - old_logp.detach().to(logp.dtype)
    # where() (not multiply) so that NaN/-inf on padding cannot leak into values or gradients
    log_ratio = torch.where(mask, raw, torch.zeros_like(raw)).clamp(-clamp, clamp)
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    return log_ratio, mask, adv, mask.to(logp.dtype)


def _count(value: int | None, default: int, name: str) -> int:
    n = default if value is None else value
    if isinstance(n, Tensor):
        n = int(n.item())
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must be a positive int (the global normaliser); got {value!r}")
    return n


def _reals(optional: tuple[str, ...] = (), **hparams: object) -> None:
    """Each hyperparameter must be a real number (None only where ``optional``): a string, bool or None would
    otherwise surface as a bare TypeError, or slip through a range check as a truthy value."""
    for name, v in hparams.items():
        if v is None and name in optional:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number; got {v!r}")


def _common_stats(log_ratio: Tensor, valid: Tensor) -> dict[str, float]:
    n = int(valid.sum())
    with torch.no_grad():
        lr = log_ratio.detach()
        ratio = lr.exp()
        denom = max(n, 1)
        return {
            "num_tokens": float(n),
            "ratio_mean": float((ratio * valid).sum() / denom),
            "kl_k3": float(((ratio - 1 - lr) * valid).sum() / denom),
            "log_ratio_absmax": float(lr.abs().max()) if lr.numel() else 0.0,
        }


def _frac(flags: Tensor, valid: Tensor) -> float:
    return float((flags & valid).sum()) / max(int(valid.sum()), 1)


# --------------------------------------------------------------------------- K2.5 and K2


@register_loss("kimi_k25")
def kimi_k25_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 2.0,
    tau: float = 0.01,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    penalty_on_masked: bool = False,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """K2.5 policy loss [K25 §4.4.2], to minimise:

        L = (1/N) Σ_j Σ_i  m_ji · ( −ρ_ji · A_j + τ · (log ρ_ji)² ),   m_ji = 1[α ≤ ρ_ji ≤ β]

    ρ = π_θ/π_old per token, A_j = r_j − mean_group(r) (no std), N = the batch's response-token count.
    The mask is computed on the detached ratio and ignores the sign of A (unlike PPO's one-sided clip), so
    a token outside [α, β] gets exactly zero gradient. ``penalty_on_masked=True`` keeps the τ term on
    masked tokens (the literal formula, where Clip wraps only ρ); the default masks the whole token, which
    is the stated intent ("tokens outside [α, β] get zero gradient"). α, β, τ are not published; the
    defaults (0.5, 2.0: IcePop's band; τ = 0.01) are ours. At ρ = 1 the gradient is −A·∇log π/N.
    ``num_sequences`` is accepted and ignored (uniform signature).
    """
    del num_sequences
    _reals(alpha=alpha, beta=beta, tau=tau, log_ratio_clamp=log_ratio_clamp)
    if not isinstance(penalty_on_masked, bool):
        raise ValueError(f"penalty_on_masked must be True or False; got {penalty_on_masked!r}")
    if not (0 < alpha < 1 < beta):
        raise ValueError(f"need 0 < alpha < 1 < beta; got alpha={alpha}, beta={beta}")
    if not 0 <= tau < float("inf"):  # also rejects NaN
        raise ValueError(f"tau must be finite and >= 0; got {tau}")
    log_ratio, valid, adv, _ = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    N = _count(num_tokens, int(valid.sum()), "num_tokens")
    ratio = log_ratio.exp()
    r = ratio.detach()
    too_low, too_high = r < alpha, r > beta
    keep = valid & ~too_low & ~too_high
    pg = -ratio * adv
    pen = tau * log_ratio**2
    zero = torch.zeros_like(pg)
    pg_sum = torch.where(keep, pg, zero).sum()
    pen_sum = torch.where(keep if not penalty_on_masked else valid, pen, zero).sum()
    loss = (pg_sum + pen_sum) / N
    stats = _common_stats(log_ratio, valid)
    stats.update(
        masked_frac=_frac(too_low | too_high, valid),
        masked_low_frac=_frac(too_low, valid),
        masked_high_frac=_frac(too_high, valid),
        pg_loss=float(pg_sum.detach() / N),
        penalty=float(pen_sum.detach() / N),
    )
    return loss, stats


@register_loss("kimi_k2")
def kimi_k2_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    tau: float = 1.0,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """K2's squared loss [K2 §3.2.2]: L = (1/K) Σ_j (A_j − τ · log π_θ(y_j)/π_old(y_j))².

    The sequence log-ratio is the masked sum of token log-ratios; A_j = r_j − mean_group(r). At ρ = 1 the
    gradient is −2τ·A_j·∇log π_θ(y_j)/K. Advantages must be per sequence [B]. τ is not published (ours: 1).
    """
    del num_tokens
    _reals(tau=tau, log_ratio_clamp=log_ratio_clamp)
    if not 0 < tau < float("inf"):  # also rejects NaN
        raise ValueError(f"tau must be finite and > 0; got {tau}")
    if advantages.ndim != 1:
        raise ValueError("kimi_k2 needs per-sequence advantages [B]")
    log_ratio, valid, _, _ = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    K = _count(num_sequences, logp.shape[0], "num_sequences")
    seq_lr = log_ratio.sum(dim=1)
    per_seq = (advantages.detach().to(logp.dtype) - tau * seq_lr) ** 2
    loss = per_seq.sum() / K
    stats = _common_stats(log_ratio, valid)
    stats.update(masked_frac=0.0, seq_log_ratio_mean=float(seq_lr.detach().mean()))
    return loss, stats


# --------------------------------------------------------------------------- PPO family


def _ppo_token_terms(log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """Per-token PPO surrogate to minimise, max(−Aρ, −A·clip(ρ)), and the bool 'clipped' (zero-grad) flags."""
    if not (0 <= eps_low < 1 and 0 <= eps_high < float("inf")):  # comparisons with NaN are False: rejected
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0; got {eps_low}, {eps_high}")
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    per_tok = torch.maximum(unclipped, clipped)
    return per_tok, (clipped > unclipped).detach()


@register_loss("ppo_clip")
def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps: float = 0.2,
    eps_high: float | None = None,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, averaged over all response tokens of the batch (DAPO's token-level mean;
    ``eps_high`` > ``eps`` is DAPO's clip-higher). The clip is one-sided in A, unlike K2.5's mask."""
    del num_sequences
    _reals(eps=eps, eps_high=eps_high, log_ratio_clamp=log_ratio_clamp, optional=("eps_high",))
    log_ratio, valid, adv, mf = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    N = _count(num_tokens, int(valid.sum()), "num_tokens")
    per_tok, clipped = _ppo_token_terms(log_ratio, adv, eps, eps if eps_high is None else eps_high)
    loss = (per_tok * mf).sum() / N
    stats = _common_stats(log_ratio, valid)
    stats["masked_frac"] = _frac(clipped, valid)
    return loss, stats


LOSSES["dapo"] = ppo_clip_loss  # same aggregation; pass eps_high for clip-higher


@register_loss("grpo")
def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps: float = 0.2,
    eps_high: float | None = None,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO (no KL term): PPO clip per token, mean over each response's tokens, then mean over responses.
    Pair it with ``group_advantages(..., std_normalize=True)``."""
    del num_tokens
    _reals(eps=eps, eps_high=eps_high, log_ratio_clamp=log_ratio_clamp, optional=("eps_high",))
    log_ratio, valid, adv, mf = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    K = _count(num_sequences, logp.shape[0], "num_sequences")
    per_tok, clipped = _ppo_token_terms(log_ratio, adv, eps, eps if eps_high is None else eps_high)
    lengths = mf.sum(dim=1).clamp_min(1)  # an empty response contributes 0
    loss = ((per_tok * mf).sum(dim=1) / lengths).sum() / K
    stats = _common_stats(log_ratio, valid)
    stats["masked_frac"] = _frac(clipped, valid)
    return loss, stats


@register_loss("dr_grpo")
def dr_grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps: float = 0.2,
    max_len: int | None = None,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO: PPO clip, token sum divided by a constant K·max_len (no length bias). ``max_len`` defaults
    to L; pass the generation budget explicitly when sharding (shards may be padded differently)."""
    del num_tokens
    _reals(eps=eps, log_ratio_clamp=log_ratio_clamp)
    log_ratio, valid, adv, mf = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    K = _count(num_sequences, logp.shape[0], "num_sequences")
    T = _count(max_len, logp.shape[1], "max_len")
    per_tok, clipped = _ppo_token_terms(log_ratio, adv, eps, eps)
    loss = (per_tok * mf).sum() / (K * T)
    stats = _common_stats(log_ratio, valid)
    stats["masked_frac"] = _frac(clipped, valid)
    return loss, stats


@register_loss("cispo")
def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float | None = None,
    eps_high: float = 0.28,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1): L = −(1/N) Σ sg(clip(ρ, 1−ε_low, 1+ε_high)) · A · log ρ. The importance weight
    is clipped but every token keeps a gradient (nothing is masked). ε_low=None means no lower clip.
    log ρ has the same gradient as log π_θ (π_old is constant) and is 0 at ρ = 1."""
    del num_sequences
    _reals(eps_low=eps_low, eps_high=eps_high, log_ratio_clamp=log_ratio_clamp, optional=("eps_low",))
    log_ratio, valid, adv, mf = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    N = _count(num_tokens, int(valid.sum()), "num_tokens")
    if eps_low is not None and not 0 <= eps_low <= 1:
        raise ValueError(f"eps_low must be None or in [0, 1]; got {eps_low}")
    if not 0 <= eps_high < float("inf"):
        raise ValueError(f"eps_high must be finite and >= 0; got {eps_high}")
    r = log_ratio.detach().exp()
    lo = 0.0 if eps_low is None else 1 - eps_low
    weight = r.clamp(min=lo, max=1 + eps_high)
    loss = (-(weight * adv * log_ratio) * mf).sum() / N
    stats = _common_stats(log_ratio, valid)
    stats["masked_frac"] = 0.0
    stats["weight_clipped_frac"] = _frac((r > 1 + eps_high) | (r < lo), valid)
    return loss, stats


@register_loss("gspo")
def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, float]]:
    """GSPO: sequence-level ratio s_j = exp(mean_t log ρ_jt), PPO-clipped per sequence, mean over sequences.
    ``masked_frac`` here is the fraction of *sequences* clipped."""
    del num_tokens
    _reals(eps_low=eps_low, eps_high=eps_high, log_ratio_clamp=log_ratio_clamp)
    if advantages.ndim != 1:
        raise ValueError("gspo needs per-sequence advantages [B]")
    log_ratio, valid, _, mf = _prepare(logp, old_logp, advantages, mask, log_ratio_clamp)
    K = _count(num_sequences, logp.shape[0], "num_sequences")
    seq_lr = log_ratio.sum(dim=1) / mf.sum(dim=1).clamp_min(1)
    per_seq, clipped = _ppo_token_terms(seq_lr, advantages.detach().to(logp.dtype), eps_low, eps_high)
    loss = per_seq.sum() / K
    stats = _common_stats(log_ratio, valid)
    stats["masked_frac"] = float(clipped.float().mean()) if clipped.numel() else 0.0
    return loss, stats
