"""``build_optimizer(model, kind)``: which parameters Muon gets, which AdamW gets, and QK-Clip.

Parameter routing (``param_groups_for``):

* AdamW, no weight decay: every parameter with < 2 dims (RMSNorm weights, biases, 1-D tables).
* AdamW, with weight decay: embeddings (``nn.Embedding`` / ``embed_tokens``), the output head
  (``lm_head``), the MoE router (``router``), and any >= 3-D tensor that is not a stack of expert
  matrices (conv kernels, position tables): these are not "hidden-layer matrices" in Muon's sense.
* Muon: 2-D weight matrices, and stacked expert weights (``experts.*`` with 3 dims, one matrix per
  expert); the fused ``w_gate_up`` [E, D, 2F] is orthogonalised as separate gate and up halves
  (``split_last=2``, see :mod:`k25mini.optim.muon`).

Step post-hooks: QK-Clip (when on), then the MoE router-bias update (whenever the model has MoE layers,
:func:`k25mini.model.moe.attach_moe_bias_update`), so every loop that steps the optimiser updates the bias.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from k25mini.model.moe import attach_moe_bias_update
from k25mini.optim.muon import MuonClip
from k25mini.optim.qk_clip import QKClip

__all__ = ["build_optimizer", "param_groups_for", "KINDS"]

KINDS = ("muonclip", "muon", "adamw")
_ADAMW_2D_NAMES = ("embed_tokens", "lm_head", "router")


def _route(name: str, p: torch.Tensor, module: nn.Module) -> str:
    if p.ndim < 2:
        return "adamw_no_decay"
    if isinstance(module, nn.Embedding) or any(k in name.split(".") for k in _ADAMW_2D_NAMES):
        return "adamw"
    if p.ndim == 2:
        return "muon"
    if p.ndim == 3 and "experts" in name.split("."):
        return "muon_split" if name.endswith("w_gate_up") else "muon"
    return "adamw"


def param_groups_for(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{"muon", "muon_split", "adamw", "adamw_no_decay"} -> [(name, param)] for trainable params."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner[id(p)] = (f"{mname}.{pname}" if mname else pname, mod)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in ("muon", "muon_split", "adamw", "adamw_no_decay")}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        _, mod = owner[id(p)]
        out[_route(name, p, mod)].append((name, p))
    return out


def build_optimizer(
    model: nn.Module,
    kind: str = "muonclip",
    lr: float = 2e-4,
    weight_decay: float = 0.1,
    *,
    adamw_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
    qk_clip_tau: float | None = None,
    moe_group: dist.ProcessGroup | None = None,
) -> torch.optim.Optimizer:
    """An optimiser for ``model``.

    * ``kind="muonclip"``: :class:`MuonClip` (Muon for matrices, AdamW for the rest, lr shared thanks to the
      0.2*sqrt(max(n, m)) update scale) + QK-Clip as a post-step hook, threshold ``qk_clip_tau``
      (default 100, K2's value).
    * ``kind="muon"``: the same without QK-Clip (unless ``qk_clip_tau`` is given).
    * ``kind="adamw"``: ``torch.optim.AdamW`` with the same decay/no-decay split; QK-Clip only if
      ``qk_clip_tau`` is given.
    ``adamw_lr`` (default ``lr``) is the learning rate of the AdamW-managed parameters under MuonClip.

    When ``model`` has MoE layers, their aux-loss-free router-bias update runs as a step post-hook after
    QK-Clip (:func:`~k25mini.model.moe.attach_moe_bias_update`); ``moe_group`` is the process group the expert
    loads are summed over (pass the data-parallel group, e.g. ``dist.group.WORLD``, when training data
    parallel; None: local, or the expert-parallel group of an expert-parallel layer).

    The returned optimiser has ``.qk_clip`` (a :class:`QKClip` or None) for logging and ``.moe_bias_update``
    (a :class:`~k25mini.model.moe.MoEBiasUpdate`, or None without MoE layers).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if moe_group is not None and not (dist.is_available() and isinstance(moe_group, dist.ProcessGroup)):
        raise ValueError(f"moe_group must be None or a torch.distributed.ProcessGroup, got {type(moe_group).__name__}")
    alr = lr if adamw_lr is None else adamw_lr
    groups = param_groups_for(model)
    if kind == "adamw":
        decay = [p for k in ("muon", "muon_split", "adamw") for _, p in groups[k]]
        pg = [{"params": decay, "weight_decay": weight_decay},
              {"params": [p for _, p in groups["adamw_no_decay"]], "weight_decay": 0.0}]
        opt: torch.optim.Optimizer = torch.optim.AdamW([g for g in pg if g["params"]], lr=alr, betas=betas, eps=eps)
    else:
        pg = [
            {"params": [p for _, p in groups["muon"]], "use_muon": True},
            {"params": [p for _, p in groups["muon_split"]], "use_muon": True, "split_last": 2},
            {"params": [p for _, p in groups["adamw"]], "use_muon": False, "lr": alr},
            {"params": [p for _, p in groups["adamw_no_decay"]], "use_muon": False, "lr": alr, "weight_decay": 0.0},
        ]
        opt = MuonClip([g for g in pg if g["params"]], lr=lr, weight_decay=weight_decay, momentum=momentum,
                       betas=betas, adam_eps=eps)
    tau = qk_clip_tau if qk_clip_tau is not None else (100.0 if kind == "muonclip" else None)
    clip = QKClip(model, tau) if tau is not None else None
    if clip is not None:
        opt.register_step_post_hook(lambda _opt, _args, _kwargs: clip())
    opt.qk_clip = clip  # type: ignore[attr-defined]
    opt.moe_bias_update = None  # type: ignore[attr-defined]
    attach_moe_bias_update(opt, model, moe_group)  # after QK-Clip; sets opt.moe_bias_update when it attaches
    return opt
