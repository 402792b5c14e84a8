"""QK-Clip (K2 §2.1): after each optimiser step, shrink the query/key weights of heads whose
largest pre-softmax logit in the step's batch exceeded tau.

For head h with recorded max logit S_h:  gamma_h = min(1, tau / S_h).  A logit of MLA head h is
``scale * (q^C_h . k^C_h + q^R_h . k^R)``, so scaling

* q^C_h (the nope rows of head h in q_b_proj / q_proj) by sqrt(gamma_h),
* k^C_h (the nope rows of head h in kv_b_proj)          by sqrt(gamma_h),
* q^R_h (the rope rows of head h in q_b_proj / q_proj)  by gamma_h,

multiplies every logit of head h by exactly gamma_h. The shared k^R (kv_a_proj's rope rows) serves all
heads and is left untouched; the values (kv_b_proj's v rows) are not touched either. On the batch that
triggered the clip the new maximum is gamma_h * S_h = tau (for the layer's own input).

The logits are the ones recorded during the step's forward(s) (weights before the step); the scaling is
applied to the weights after the step, as in K2's Algorithm 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from k25mini.model.mla import MLAttention, set_max_logit_recording

__all__ = ["qk_clip_gamma", "clip_mla_heads_", "QKClip"]


def qk_clip_gamma(max_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """gamma_h = min(1, tau / S_h) as float64 [H]; heads with S_h <= tau (incl. negative maxima) get exactly 1."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    s = max_logits.double()  # [H] only; float64 keeps sqrt(gamma)^2 == gamma for float64 weights
    return torch.where(s > tau, tau / s.clamp(min=tau), torch.ones_like(s))


@torch.no_grad()
def clip_mla_heads_(attn: MLAttention, gamma: torch.Tensor) -> None:
    """Scale q^C, k^C by sqrt(gamma) and q^R by gamma, per head, in place. gamma: [H]."""
    H, dn, dr, dv = attn.num_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    if gamma.shape != (H,):
        raise ValueError(f"gamma must be [H={H}], got {tuple(gamma.shape)}")
    q_lin = attn.q_proj if attn.q_lora_rank is None else attn.q_b_proj
    wq = q_lin.weight.view(H, dn + dr, -1)
    wkv = attn.kv_b_proj.weight.view(H, dn + dv, -1)
    g = gamma.to(device=wq.device, dtype=torch.float64)
    root = g.sqrt()[:, None, None]
    wq[:, :dn].mul_(root.to(wq.dtype))
    wq[:, dn:].mul_(g[:, None, None].to(wq.dtype))
    wkv[:, :dn].mul_(root.to(wkv.dtype))


class QKClip:
    """Post-step hook: ``QKClip(model, tau)()`` clips every MLA layer from its recorded max logits.

    Enables max-logit recording (training mode) on the model's MLA layers. After each call the
    recorded maxima are reset; ``last_stats`` maps layer name -> (max logit [H], gamma [H]) and
    ``history`` keeps per call the largest logit seen and how many heads were clipped.

    Data parallel: when torch.distributed is initialised the maxima are all-reduced (MAX) over ``group``
    (default: world) first, so every replica applies the same gamma and the weights stay identical.
    """

    def __init__(self, model: nn.Module, tau: float = 100.0, group: dist.ProcessGroup | None = None) -> None:
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ValueError(f"tau must be a number > 0, got {tau!r}")
        self.tau = float(tau)
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MLAttention)]
        if not self.layers:
            raise ValueError("model has no MLAttention layers to clip")
        set_max_logit_recording(model, True)
        self.group = group
        self.last_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def __call__(self, *_: object) -> int:
        """Clip from the recorded logits; returns the number of clipped heads. Extra args (hook) are ignored."""
        maxima = self._synced_maxima()
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        clipped, top = 0, float("-inf")
        for (name, m), s in zip(self.layers, maxima):
            if s is None:
                continue
            gamma = qk_clip_gamma(s, self.tau)
            n = int((gamma < 1).sum())
            if n:
                clip_mla_heads_(m, gamma)
            clipped += n
            top = max(top, float(s.max()))
            stats[name] = (s.detach().cpu(), gamma.cpu())
        for _, m in self.layers:
            m.reset_max_logits()
        self.last_stats = stats
        if stats:
            self.history.append({"max_logit": top, "clipped_heads": clipped})
        return clipped

    def _synced_maxima(self) -> list[torch.Tensor | None]:
        local = [m.max_logits for _, m in self.layers]
        if not (dist.is_available() and dist.is_initialized()):
            return local
        # one flat vector, -inf where a layer recorded nothing on this rank; MAX over replicas
        ref = next((t for t in local if t is not None), None)
        device = ref.device if ref is not None else self.layers[0][1].kv_b_proj.weight.device
        flat = torch.cat([
            (t.float() if t is not None else torch.full((m.num_heads,), float("-inf"), device=device))
            for t, (_, m) in zip(local, self.layers)
        ])
        dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=self.group)
        out: list[torch.Tensor | None] = []
        for part in flat.split([m.num_heads for _, m in self.layers]):
            out.append(None if bool(torch.isinf(part).all() and (part < 0).all()) else part)
        return out
