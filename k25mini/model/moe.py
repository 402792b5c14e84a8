"""The K2 MoE feed-forward layer: sigmoid router + grouped routed experts + one shared expert.

    y = sum_k w_k * Expert_{e_k}(x) + Shared(x)      (router: :mod:`k25mini.model.router`)

Three seams, as in production MoE code: the :class:`~k25mini.model.router.Router` picks experts, a dispatcher
(:mod:`k25mini.model.dispatch`: local, or all-to-all for expert parallelism) moves tokens to them, and
:class:`~k25mini.model.experts.GroupedExperts` computes them with a chosen backend (eager / torch / triton).

Training hooks (all per layer):

* ``last_aux_loss``: the sequence-level balance loss of the last forward (``alpha * sum_i f_i P_i``, already
  weighted by ``cfg.aux_loss_alpha``; a zero scalar when alpha is 0 or the layer is in eval mode). Add it to the
  language-model loss: :func:`moe_aux_loss` sums it over a model.
* ``last_load``: tokens per expert [E] (int64) in the last forward (this process's tokens).
* ``update_bias()``: aux-loss-free balancing, ``bias += rate * sign(mean(load) - load)`` with the loads summed
  over every training-mode forward (micro-batch) since the previous call. It must run after every
  ``optimizer.step()``: :func:`attach_moe_bias_update` registers :func:`update_moe_biases` (every layer of a
  model) as the optimiser's step post-hook, and :func:`k25mini.optim.build_optimizer` does that whenever the
  model has MoE layers, so no training loop has to remember the call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from k25mini.config import TextConfig
from k25mini.model.dispatch import AllToAllDispatcher, LocalDispatcher
from k25mini.model.experts import GroupedExperts
from k25mini.model.router import Router, aux_free_bias_update, expert_load, sequence_aux_loss
from k25mini.model.swiglu import SwiGLU

__all__ = ["MoELayer", "MoEBiasUpdate", "attach_moe_bias_update", "moe_aux_loss", "update_moe_biases",
           "apply_expert_parallel", "has_moe_layers"]


class MoELayer(nn.Module):
    """forward(x [..., D]) -> [..., D].

    Parameters: ``router.weight`` [E, D]; ``experts.w_gate_up`` [E, D, 2F]; ``experts.w_down`` [E, F, D];
    ``shared_experts.{gate,up,down}_proj`` (width n_shared * F; absent when n_shared_experts == 0).
    Buffers: ``router.e_score_correction_bias`` [E] (float32, persistent), ``load_accum`` [E] (int64, not saved).
    For the sequence-level aux loss, x [B, S, D] (or [..., S, D]) holds sequences of length S; x [T, D] is one
    sequence.
    """

    def __init__(self, cfg: TextConfig, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, TextConfig):
            raise ValueError(f"cfg must be a TextConfig, got {type(cfg).__name__}")
        E, D, Fh = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.num_experts, self.dim = E, D
        self.aux_loss_alpha = float(cfg.aux_loss_alpha)
        self.bias_update_rate = float(cfg.bias_update_rate)
        self.router = Router(cfg)
        self.experts = GroupedExperts(E, D, Fh, backend=backend)
        self.shared_experts = SwiGLU(D, cfg.n_shared_experts * Fh) if cfg.n_shared_experts > 0 else None
        self.dispatcher: LocalDispatcher | AllToAllDispatcher = LocalDispatcher()
        self.register_buffer("load_accum", torch.zeros(E, dtype=torch.long), persistent=False)
        self.last_aux_loss: torch.Tensor = torch.zeros(())
        self.last_load: torch.Tensor = torch.zeros(E, dtype=torch.long)

    def __getstate__(self) -> dict:
        # last_aux_loss is a graph node after a training forward; copy/deepcopy/pickle take a detached value
        state = self.__dict__.copy()
        state["last_aux_loss"] = self.last_aux_loss.detach()
        return state

    @property
    def backend(self) -> str | None:
        return self.experts.backend

    def set_backend(self, backend: str | None) -> None:
        """Switch the expert backend ("eager" | "torch" | "triton" | None/"auto")."""
        self.experts.set_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [..., S, {self.dim}], got shape {tuple(x.shape)}")
        shape = x.shape
        h = x.reshape(-1, self.dim)
        r = self.router(h)
        y = self.dispatcher(h, r.topk_ids, r.topk_weights.to(h.dtype), self.experts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(h)

        with torch.no_grad():
            load = expert_load(r.topk_ids, self.num_experts)
            self.last_load = load
            if self.training:
                self.load_accum += load
        if self.training and self.aux_loss_alpha > 0 and h.shape[0] > 0:
            S = shape[-2]
            E, K = r.scores.shape[-1], r.topk_ids.shape[-1]
            self.last_aux_loss = sequence_aux_loss(
                r.scores.view(-1, S, E), r.topk_ids.view(-1, S, K), self.aux_loss_alpha
            )
        else:
            self.last_aux_loss = torch.zeros((), device=x.device, dtype=r.scores.dtype)
        return y.view(shape)

    @torch.no_grad()
    def update_bias(self, group: dist.ProcessGroup | None = None) -> None:
        """Aux-loss-free update from the loads accumulated since the last call, then reset the accumulator.

        Loads are summed over ``group`` (or, when the layer is expert-parallel, over its expert-parallel group)
        so every replica applies the same update. A frozen layer (router weight with ``requires_grad=False``, e.g.
        the language model during a ViT-only stage) keeps its bias: frozen means unchanged.
        """
        if not self.router.weight.requires_grad:
            self.load_accum.zero_()
            return
        load = self.load_accum.clone()
        if group is None and isinstance(self.dispatcher, AllToAllDispatcher):
            group = self.dispatcher.group
            if dist.is_initialized():
                dist.all_reduce(load, group=group)
        elif group is not None:
            dist.all_reduce(load, group=group)
        aux_free_bias_update(self.router.e_score_correction_bias, load, self.bias_update_rate)
        self.load_accum.zero_()

    @torch.no_grad()
    def enable_expert_parallel(self, group: dist.ProcessGroup | None = None) -> None:
        """Keep only this rank's E/world experts and dispatch with all-to-all over ``group`` (default world).

        Call it on every rank, with identical weights everywhere, before building the optimizer.
        """
        if isinstance(self.dispatcher, AllToAllDispatcher):
            raise ValueError("this MoELayer is already expert-parallel")
        disp = AllToAllDispatcher(self.num_experts, group)
        lo, hi = disp.rank * disp.num_local, (disp.rank + 1) * disp.num_local
        old = self.experts
        new = GroupedExperts(disp.num_local, old.dim, old.hidden, backend=old.backend)
        new.w_gate_up = nn.Parameter(old.w_gate_up[lo:hi].clone(), requires_grad=old.w_gate_up.requires_grad)
        new.w_down = nn.Parameter(old.w_down[lo:hi].clone(), requires_grad=old.w_down.requires_grad)
        self.experts = new
        self.dispatcher = disp
        self.expert_range = (lo, hi)

    def extra_repr(self) -> str:
        return f"aux_loss_alpha={self.aux_loss_alpha}, bias_update_rate={self.bias_update_rate}"


def moe_aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of ``last_aux_loss`` over every MoELayer in ``model`` (0.0 if there are none)."""
    losses = [m.last_aux_loss for m in model.modules() if isinstance(m, MoELayer)]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else 0.0


def update_moe_biases(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Call :meth:`MoELayer.update_bias` on every MoE layer (after ``optimizer.step()``)."""
    for m in model.modules():
        if isinstance(m, MoELayer):
            m.update_bias(group)


def has_moe_layers(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one :class:`MoELayer`."""
    return any(isinstance(m, MoELayer) for m in model.modules())


class MoEBiasUpdate:
    """The optimiser step post-hook that :func:`attach_moe_bias_update` registers.

    Each call runs :func:`update_moe_biases` on ``model`` with ``group``; ``calls`` counts them.
    ``remove()`` unregisters the hook (the optimiser's ``moe_bias_update`` attribute is cleared).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                 group: dist.ProcessGroup | None) -> None:
        self.model = model
        self.group = group
        self.calls = 0
        self._optimizer = optimizer
        self._handle = optimizer.register_step_post_hook(self._hook)

    def _hook(self, _opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        update_moe_biases(self.model, self.group)
        self.calls += 1

    def remove(self) -> None:
        """Unregister the hook; later steps no longer update the biases."""
        self._handle.remove()
        if getattr(self._optimizer, "moe_bias_update", None) is self:
            self._optimizer.moe_bias_update = None  # type: ignore[attr-defined]


def attach_moe_bias_update(optimizer: torch.optim.Optimizer, model: nn.Module,
                           group: dist.ProcessGroup | None = None) -> MoEBiasUpdate | None:
    """Run the aux-loss-free bias update of every MoE layer of ``model`` after each ``optimizer.step()``.

    Registers a :class:`MoEBiasUpdate` with ``optimizer.register_step_post_hook`` (it runs after the hooks
    registered before it, e.g. QK-Clip) and stores it as ``optimizer.moe_bias_update``. ``group``: sum the
    expert loads over this process group (data parallelism) so every replica moves its bias alike; None keeps
    :meth:`MoELayer.update_bias`'s default (the expert-parallel group of an expert-parallel layer, else local).
    Frozen layers keep their bias (see :meth:`MoELayer.update_bias`).

    Idempotent: attaching again for the same model and group returns the existing hook (one update per step).
    Returns None, attaching nothing, when ``model`` has no MoE layer. Raises ValueError when the optimiser
    already updates another model's biases or uses another group.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if group is not None and not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise ValueError(f"group must be None or a torch.distributed.ProcessGroup, got {type(group).__name__}")
    existing = getattr(optimizer, "moe_bias_update", None)
    if existing is not None:
        if existing.model is not model:
            raise ValueError("this optimizer already runs the MoE bias update of another model")
        if existing.group is not group:
            raise ValueError(f"this optimizer already runs the MoE bias update with group {existing.group!r}, "
                             f"not {group!r}; build the optimizer with the process group you train with")
        return existing
    if not has_moe_layers(model):
        return None
    hook = MoEBiasUpdate(optimizer, model, group)
    optimizer.moe_bias_update = hook  # type: ignore[attr-defined]
    return hook


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Make every MoELayer in ``model`` expert-parallel over ``group`` (see :meth:`MoELayer.enable_expert_parallel`)."""
    for m in list(model.modules()):
        if isinstance(m, MoELayer):
            m.enable_expert_parallel(group)
    return model
