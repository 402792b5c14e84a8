"""Training on many processes: a 2-D DeviceMesh (data-parallel shard x expert parallel), FSDP2 and EP.

    mesh  = build_mesh(dp, ep)                         # dp * ep == world size; dims named ("dp", "ep")
    model = build_parallel_model(cfg, mesh, seed=0)   # meta -> EP -> (AC) -> fully_shard -> to_empty -> init
    opt   = build_parallel_optimizer(model, lr=...)  # MuonClip + QK-Clip + router-bias hook, on shards
    loss  = parallel_train_step(model, opt, mesh, batch_at(step), lr_mult)

What lives where (``W = dp * ep`` processes, every one of them a data-parallel rank with its own slice of the batch):

* Routed experts: the ``ep`` ranks of one data shard split the experts of every MoE layer (rank (d, e) owns
  experts ``[e*E/ep, (e+1)*E/ep)``, :meth:`k25mini.model.moe.MoELayer.enable_expert_parallel` over the ``ep``
  sub-group) and exchange tokens with ``all_to_all_single``. When ``dp > 1`` each layer's ep-local expert module
  is FSDP2-sharded over the ``dp`` sub-mesh (``fully_shard(experts, mesh=mesh["dp"])``, before the outer units):
  rank (d, e) stores experts ``e*E/ep + [d*c, (d+1)*c)`` with ``c = ceil(E/(ep*dp))``, whole matrices on dim 0,
  all-gathered over ``dp`` for the forward and reduce-scattered (mean over ``dp``) in backward;
  :func:`sync_expert_grads` divides by ``ep`` (the all-to-all already summed the ``ep`` peers' contributions on
  the owner), so the gradient is the mean over all W ranks, as for every other weight. With ``dp == 1`` they
  stay plain tensors (``ignored_params``) and :func:`sync_expert_grads` divides by W.
* Everything else (attention, dense MLP, shared experts, router, norms, embeddings, head, vision tower):
  FSDP2 ``fully_shard`` over all W ranks (the flattened mesh), one unit per decoder layer and per vision block,
  plus the vision tower and the root. Parameters are DTensors sharded on dim 0; FSDP averages their gradients.
* Router-bias buffers and MuonClip's max logits are replicated: loads are summed and maxima max-reduced over
  the world, so every rank applies the same update.

Deterministic initialisation (:func:`init_weights_`): every leaf module is re-initialised on the CPU from its own
seed ``seed + crc32(name)``, full size, and each rank keeps its part. The weights therefore do not depend on the
mesh, and a single process calling the same function gets the same numbers.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from k25mini.config import ModelConfig
from k25mini.model.moe import MoELayer, attach_moe_bias_update, moe_aux_loss
from k25mini.optim.build import param_groups_for
from k25mini.optim.muon import MuonClip, zeropower_via_newtonschulz
from k25mini.optim.qk_clip import QKClip, qk_clip_gamma

__all__ = [
    "ParallelDims",
    "build_mesh",
    "fsdp_mesh",
    "build_parallel_model",
    "init_weights_",
    "expert_params",
    "ShardedMuonClip",
    "ShardedQKClip",
    "build_parallel_optimizer",
    "sync_expert_grads",
    "clip_grad_norm_",
    "lm_loss",
    "parallel_train_step",
    "toy_lm_batch",
]


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the mesh: ``dp`` (data-parallel shards) x ``ep`` (expert-parallel groups)."""

    dp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "ep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")

    @property
    def world(self) -> int:
        return self.dp * self.ep


def build_mesh(dp: int, ep: int, device_type: str | None = None):
    """The 2-D DeviceMesh ``(dp, ep)`` with names ("dp", "ep"); :func:`fsdp_mesh` gives its flattened 1-D view.

    Rank ``r`` sits at ``(r // ep, r % ep)``: the ``ep`` peers of one data shard are neighbours.
    """
    from torch.distributed.device_mesh import init_device_mesh

    dims = ParallelDims(dp, ep)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("build_mesh needs an initialised process group (run under torchrun)")
    if dims.world != dist.get_world_size():
        raise ValueError(f"dp * ep must equal the world size {dist.get_world_size()}, got dp={dp} x ep={ep}")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device_type, (dp, ep), mesh_dim_names=("dp", "ep"))
    _FSDP_MESH[mesh] = mesh["dp", "ep"]._flatten("fsdp")
    return mesh


_FSDP_MESH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fsdp_mesh(mesh):
    """The 1-D mesh over all ranks (``dp`` and ``ep`` flattened) that FSDP2 shards the non-expert weights over."""
    if mesh not in _FSDP_MESH:
        _FSDP_MESH[mesh] = mesh["dp", "ep"]._flatten("fsdp")
    return _FSDP_MESH[mesh]


# ---------------------------------------------------------------------------------------------- construction
def _new_model(cfg: ModelConfig, kind: str, moe_backend: str | None) -> nn.Module:
    if kind == "text":
        from k25mini.model import K2ForCausalLM

        return K2ForCausalLM(cfg.text, moe_backend)
    if kind == "k25":
        from k25mini.multimodal import K25ForConditionalGeneration

        return K25ForConditionalGeneration(cfg, moe_backend)
    raise ValueError(f"kind must be 'text' or 'k25', got {kind!r}")


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


@torch.no_grad()
def _init_leaf_(m: nn.Module) -> None:
    """Initialise one materialised leaf module on the CPU as its constructor would have."""
    from k25mini.model.norm import RMSNorm
    from k25mini.vision.encoder import PositionEmbedding, sincos_time_table

    if isinstance(m, RMSNorm):
        m.weight.fill_(1.0)
    elif isinstance(m, PositionEmbedding):
        nn.init.normal_(m.weight, std=m.weight.shape[-1] ** -0.5)
        m.time_weight.copy_(sincos_time_table(m.time_weight.shape[0], m.time_weight.shape[1]))
    elif isinstance(m, MoELayer):
        m.load_accum.zero_()
    elif hasattr(m, "reset_parameters"):
        m.reset_parameters()
    else:
        raise ValueError(f"init_weights_: no initialiser for module type {type(m).__name__}")


def _expert_offset(model: nn.Module) -> dict[str, int]:
    """{expert parameter name: index of this rank's first expert} for expert-parallel MoE layers."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, MoELayer) and hasattr(m, "expert_range"):
            for pn in ("w_gate_up", "w_down"):
                out[f"{n}.experts.{pn}" if n else f"experts.{pn}"] = m.expert_range[0]
    return out


@torch.no_grad()
def init_weights_(model: nn.Module, template: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, mesh-independent initialisation of ``model`` (materialised, possibly sharded).

    ``template``: an unsharded, un-expert-parallel copy of the model (on the meta device is fine) with the same
    module names. Each leaf module of ``template`` is materialised on the CPU, seeded with
    ``seed + crc32(name)``, initialised (:func:`_init_leaf_`) and copied into ``model``: DTensor parameters take
    their shard, expert-parallel weights their expert slice. Peak extra memory: one full leaf module.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    live = dict(_leaf_modules(model))
    offsets = _expert_offset(model)
    for name, tmpl in _leaf_modules(template):
        if name not in live:
            raise ValueError(f"init_weights_: template module {name!r} has no counterpart in model")
        leaf = copy.deepcopy(tmpl).to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + zlib.crc32(name.encode()))
            _init_leaf_(leaf)
        target = live[name]
        full = dict(leaf.named_parameters(recurse=False)) | dict(leaf.named_buffers(recurse=False))
        mine = dict(target.named_parameters(recurse=False)) | dict(target.named_buffers(recurse=False))
        for k, t in mine.items():
            src = full[k]
            fq = f"{name}.{k}" if name else k
            if fq in offsets:
                lo = offsets[fq]
                src = src[lo: lo + t.shape[0]]
            if isinstance(t, DTensor):
                shard = distribute_tensor(src.to(t.device, t.dtype), t.device_mesh, t.placements, src_data_rank=None)
                t.to_local().copy_(shard.to_local())
            else:
                t.copy_(src.to(t.device, t.dtype))
    return model


def expert_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The routed-expert weights (``*.experts.w_gate_up`` / ``w_down`` of every MoE layer)."""
    out = []
    for n, m in model.named_modules():
        if isinstance(m, MoELayer):
            out += [(f"{n}.experts.{k}", p) for k, p in m.experts.named_parameters()]
    return out


def _checkpoint_layer(layer: nn.Module) -> None:
    """Activation checkpointing without renaming anything: the layer's forward re-runs in backward."""
    from torch.utils.checkpoint import checkpoint

    inner = layer.forward
    layer.forward = functools.partial(checkpoint, inner, use_reentrant=False)  # type: ignore[method-assign]


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    units: list[nn.Module] = []
    vt = getattr(model, "vision_tower", None)
    if vt is not None:
        for m in vt.modules():
            if isinstance(m, nn.ModuleList):
                units += list(m)
        units.append(vt)
    for m in model.modules():
        if type(m).__name__ == "K2DecoderLayer":
            units.append(m)
    return units


def build_parallel_model(cfg: ModelConfig, mesh=None, *, kind: str = "text", seed: int = 0,
                         activation_checkpointing: bool = False, mixed_precision: bool | None = None,
                         device: torch.device | str | None = None, moe_backend: str | None = None) -> nn.Module:
    """Build on the meta device, make experts parallel over ``mesh["ep"]``, checkpoint layers (optional),
    ``fully_shard`` the rest over all ranks, ``to_empty`` and :func:`init_weights_`.

    ``mesh=None``: one process, no sharding (the reference the parity tests compare with).
    ``dp > 1``: every layer's ep-local expert module gets its own ``fully_shard`` over ``mesh["dp"]`` first (its
    parameters become DTensors ``Shard(0)`` over ``dp``: whole expert matrices); the outer units then skip them.
    ``mixed_precision``: bf16 parameters with fp32 gradient reduction (default: on CUDA only; fp32 on CPU).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    if not isinstance(activation_checkpointing, bool):
        raise ValueError(f"activation_checkpointing must be True or False, got {activation_checkpointing!r}")
    if mixed_precision is not None and not isinstance(mixed_precision, bool):
        raise ValueError(f"mixed_precision must be None, True or False, got {mixed_precision!r}")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    with torch.device("meta"):
        model = _new_model(cfg, kind, moe_backend)
    template = copy.deepcopy(model)
    if mesh is not None:
        ep = mesh["ep"].size()
        if cfg.text.n_routed_experts % ep:
            raise ValueError(f"n_routed_experts ({cfg.text.n_routed_experts}) must be divisible by ep={ep}")
        if ep > 1:
            group = mesh["ep"].get_group()
            with torch.device("meta"):  # the new expert modules are built (and sliced) on meta too
                for m in model.modules():
                    if isinstance(m, MoELayer):
                        m.enable_expert_parallel(group)
    if activation_checkpointing:
        # kernels.grouped_torch probes F.grouped_mm (forward + backward) once per device and dtype, on first use: if
        # that first use were inside a checkpointed forward, the probe's saved tensors would be counted there and
        # not in the recomputation ("a different number of tensors was saved"). Probe now.
        from kernels.grouped_torch import grouped_mm_usable

        for dt in (torch.float32, torch.bfloat16):
            grouped_mm_usable(dt, 16, 16, device)
        for m in model.modules():
            if type(m).__name__ == "K2DecoderLayer":
                _checkpoint_layer(m)
    if mesh is not None:
        mp = mixed_precision if mixed_precision is not None else device.type == "cuda"
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mp \
            else MixedPrecisionPolicy()
        ignored: set[nn.Parameter] | None = None
        if mesh["dp"].size() > 1:  # experts: sharded over the dp ranks that hold the same block (as torchtitan)
            for m in model.modules():
                if isinstance(m, MoELayer):
                    fully_shard(m.experts, mesh=mesh["dp"], mp_policy=policy)
        else:  # one data shard: the block is whole on its rank, nothing to shard it over
            ignored = {p for _, p in expert_params(model)} or None
        kw: dict[str, Any] = dict(mesh=fsdp_mesh(mesh), mp_policy=policy, ignored_params=ignored)
        for u in _fsdp_units(model):
            fully_shard(u, **kw)
        fully_shard(model, **kw)
    model.to_empty(device=device)
    _rebuild_plain_tensors_(model, cfg, device)
    init_weights_(model, template, seed)
    return model


def _rebuild_plain_tensors_(model: nn.Module, cfg: ModelConfig, device: torch.device) -> None:
    """Tensors held as plain attributes (not parameters or buffers) stay on meta through ``to_empty``:
    the RoPE frequency table and the MoE layers' last-step statistics. Rebuild them; any other is an error."""
    from k25mini.model.rope import RotaryEmbedding

    t = cfg.text
    for name, m in model.named_modules():
        if isinstance(m, RotaryEmbedding):
            fresh = RotaryEmbedding(t.qk_rope_head_dim, t.rope_theta, t.rope_scaling, t.max_position_embeddings)
            m.inv_freq64, m._per_device = fresh.inv_freq64, {}
        elif isinstance(m, MoELayer):
            m.last_aux_loss = torch.zeros((), device=device)
            m.last_load = torch.zeros(m.num_experts, dtype=torch.long, device=device)
        for k, v in vars(m).items():
            if isinstance(v, torch.Tensor) and v.is_meta:
                raise ValueError(f"build_parallel_model: {name}.{k} is still on the meta device")


# ---------------------------------------------------------------------------------------------- optimiser
def _ns_local(u: torch.Tensor, group: dict, ns_dtype: torch.dtype) -> torch.Tensor:
    k = group["split_last"]
    blocks = u.chunk(k, dim=-1) if k > 1 else (u,)
    return torch.cat([zeropower_via_newtonschulz(b, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                                 ns_dtype) for b in blocks], dim=-1)


class ShardedMuonClip(MuonClip):
    """:class:`~k25mini.optim.muon.MuonClip` for FSDP2 DTensor parameters (and plain ones, unchanged).

    Newton-Schulz needs whole matrices. A parameter sharded on one of its two matrix dims (every FSDP2 matrix:
    ``Shard(0)``) has its momentum-corrected update gathered with ``full_tensor()`` (an all-gather of the
    matrix, the size of the parameter, per step), orthogonalised on every rank, and each rank keeps its rows.
    Stacks of matrices sharded on a leading (batch) dim need nothing: each matrix is whole on one rank, and
    Newton-Schulz runs per matrix on the local ones. That is the case of the routed experts FSDP-sharded over
    ``dp`` (``[E/ep, D, 2F]`` on ``Shard(0)``: each rank orthogonalises the experts it stores, no gather; a rank
    whose shard is empty, when ``dp > E/ep``, has nothing to do). The momentum buffer stays sharded. AdamW
    groups are element-wise and run on the shards as they are.
    ``gathered_bytes`` counts what this rank received for Newton-Schulz in the last step.
    """

    gathered_bytes: int = 0

    @torch.no_grad()
    def init_state(self) -> None:
        """Create every state entry now (zeros, step 0), as the first step would: checkpoints then have a
        complete template before any step, and DCP never has to run a fake step to make one."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if group["use_muon"]:
                    st.setdefault("momentum_buffer", torch.zeros_like(p))
                elif "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)

    def _muon_group(self, group: dict) -> None:
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor

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
            ns_dtype = self.ns_dtype or (torch.bfloat16 if p.device.type == "cuda" else torch.float32)
            if isinstance(u, DTensor):
                whole = all(not isinstance(pl, Shard) or pl.dim < u.ndim - 2 for pl in u.placements)
                if whole:  # a stack sharded on its batch dim: every matrix is on one rank
                    u_local = u.to_local()
                    o_local = _ns_local(u_local, group, ns_dtype) if u_local.numel() else u_local.clone()
                    o = DTensor.from_local(o_local, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
                else:
                    full = u.full_tensor()
                    self.gathered_bytes += full.numel() * full.element_size()
                    o = distribute_tensor(_ns_local(full, group, ns_dtype), u.device_mesh, u.placements,
                                          src_data_rank=None)
            else:
                o = _ns_local(u, group, ns_dtype)
            p.mul_(1 - lr * wd)
            p.add_(o.to(p.dtype), alpha=-lr * self.update_scale(p.shape, group["rms_scale"], k))

    @torch.no_grad()
    def step(self, closure=None):
        self.gathered_bytes = 0
        return super().step(closure)


@torch.no_grad()
def _scale_rows_(w: torch.Tensor, rows: torch.Tensor) -> None:
    """w[i, :] *= rows[i] in place; ``w`` may be a DTensor sharded on dim 0 (each rank scales its rows)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    rows = rows.to(device=w.device, dtype=w.dtype)[:, None]
    if isinstance(w, DTensor):
        w.to_local().mul_(distribute_tensor(rows, w.device_mesh, w.placements, src_data_rank=None).to_local())
    else:
        w.mul_(rows)


class ShardedQKClip(QKClip):
    """QK-Clip for sharded MLA weights: the same per-head factors (max logits max-reduced over the world), applied
    as a per-row scale so each rank scales only its rows of ``q_b_proj`` / ``kv_b_proj`` (no gather)."""

    @torch.no_grad()
    def __call__(self, *_: object) -> int:
        maxima = self._synced_maxima()
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        clipped, top = 0, float("-inf")
        for (name, m), s in zip(self.layers, maxima):
            if s is None:
                continue
            gamma = qk_clip_gamma(s, self.tau)
            n = int((gamma < 1).sum())
            if n:
                H, dn, dr, dv = m.num_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
                g = gamma.double().cpu()
                q = torch.cat([g.sqrt()[:, None].expand(H, dn), g[:, None].expand(H, dr)], 1).reshape(-1)
                kv = torch.cat([g.sqrt()[:, None].expand(H, dn), torch.ones(H, dv, dtype=g.dtype)], 1).reshape(-1)
                q_lin = m.q_proj if m.q_lora_rank is None else m.q_b_proj
                _scale_rows_(q_lin.weight, q)
                _scale_rows_(m.kv_b_proj.weight, kv)
            clipped += n
            top = max(top, float(s.max()))
            stats[name] = (s.detach().cpu(), gamma.cpu())
        for _, m in self.layers:
            m.reset_max_logits()
        self.last_stats = stats
        if stats:
            self.history.append({"max_logit": top, "clipped_heads": clipped})
        return clipped


def build_parallel_optimizer(model: nn.Module, *, lr: float = 2e-3, weight_decay: float = 0.1,
                             qk_clip_tau: float | None = 100.0, momentum: float = 0.95,
                             betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> ShardedMuonClip:
    """MuonClip with the routing of :func:`k25mini.optim.build_optimizer`, working on sharded parameters.

    Step post-hooks: QK-Clip (``qk_clip_tau``; None: off), then the MoE router-bias update with expert loads summed
    over the whole world (every process is a data-parallel rank). State is created up front
    (:meth:`ShardedMuonClip.init_state`).
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if qk_clip_tau is not None and not (isinstance(qk_clip_tau, (int, float)) and qk_clip_tau > 0):
        raise ValueError(f"qk_clip_tau must be None or a number > 0, got {qk_clip_tau!r}")
    groups = param_groups_for(model)
    pg = [
        {"params": [p for _, p in groups["muon"]], "use_muon": True},
        {"params": [p for _, p in groups["muon_split"]], "use_muon": True, "split_last": 2},
        {"params": [p for _, p in groups["adamw"]], "use_muon": False},
        {"params": [p for _, p in groups["adamw_no_decay"]], "use_muon": False, "weight_decay": 0.0},
    ]
    opt = ShardedMuonClip([g for g in pg if g["params"]], lr=lr, weight_decay=weight_decay, momentum=momentum,
                          betas=betas, adam_eps=eps)
    opt.init_state()
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    world = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
    clip = ShardedQKClip(model, qk_clip_tau, group=world) if qk_clip_tau is not None else None
    if clip is not None:
        opt.register_step_post_hook(lambda _o, _a, _k: clip())
    opt.qk_clip = clip  # type: ignore[attr-defined]
    opt.moe_bias_update = None  # type: ignore[attr-defined]
    attach_moe_bias_update(opt, model, world)
    return opt


# ---------------------------------------------------------------------------------------------- one step
def sync_expert_grads(model: nn.Module, mesh=None) -> None:
    """Expert gradients to (1/W) sum over all W ranks of d(local loss)/dW: the average FSDP applies elsewhere.

    The reverse all-to-all already summed the ``ep`` peers' contributions on the owner. ``dp > 1``: FSDP's
    reduce-scatter over ``dp`` has averaged them (DTensor gradients), what is left is a division by ``ep``.
    ``dp == 1``: plain tensors, divided by W (= ep).
    """
    from torch.distributed.tensor import DTensor

    if mesh is None:
        return
    dp, ep = mesh["dp"].size(), mesh["ep"].size()
    for _, p in expert_params(model):
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):  # FSDP-sharded over dp: already the mean over dp
            if ep > 1:
                p.grad.div_(ep)  # a local op on each shard
            continue
        if dp > 1:  # not reached by build_parallel_model (experts are FSDP-sharded when dp > 1)
            dist.all_reduce(p.grad, group=mesh["dp"].get_group())
        p.grad.div_(dp * ep)


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float | None, mesh=None) -> float:
    """Global gradient L2 norm over every parameter (sharded, expert-parallel or plain); clips when ``max_norm``.

    Sharded: each rank sums the squares of what it holds (its DTensor shards, experts included: every expert row
    lives on exactly one rank; plain expert blocks replicated over ``dp`` are counted on ``dp`` coordinate 0
    only), one all-reduce over the world. Returns the norm before clipping.
    """
    from torch.distributed.tensor import DTensor

    experts = {id(p) for _, p in expert_params(model)}
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            g = p.grad.to_local()
        elif id(p) in experts and dp_rank != 0:
            continue
        else:
            g = p.grad
        sq += g.double().pow(2).sum().cpu()
    if mesh is not None:
        dev = grads[0].device if grads else torch.device("cpu")
        sq = sq.to(dev if dev.type != "cpu" else "cpu")
        dist.all_reduce(sq)
    norm = float(sq.sqrt())
    if max_norm is not None and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(coef)
    return norm


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token cross-entropy + MoE aux loss, the cross-entropy alone) for ``{"input_ids": [B, S]}``.

    The cross-entropy is taken in float64 (the logits are upcast): its mean over a rank's tokens is then exact to
    ~1e-16, so what a parity test measures is the model, not the rounding of the loss's own reduction (in fp32
    the mean over half a batch and over the whole batch already differ by a few ulps, ~1e-6 at loss 6).
    """
    ids = batch["input_ids"]
    logits = model(ids)
    ce = F.cross_entropy(logits[:, :-1].double().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    aux = moe_aux_loss(model)
    return ce + aux, ce.detach()


def toy_lm_batch(index: int, batch: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    """A pure function of ``index``: sequences ``x_t = (a + b t) mod m`` (random a, b per row; m <= vocab),
    so a model can learn to continue them. Same global batch whatever the world size."""
    for name, v in (("index", index), ("batch", batch), ("seq", seq), ("vocab", vocab)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "index" else 2):
            raise ValueError(f"{name} must be an int >= {0 if name == 'index' else 2}, got {v!r}")
    g = torch.Generator().manual_seed(1_000_003 * index + 17)
    m = min(vocab, 97)
    a = torch.randint(m, (batch, 1), generator=g)
    b = torch.randint(1, 8, (batch, 1), generator=g)
    return {"input_ids": (a + b * torch.arange(seq)) % m}


def _local_slice(batch: dict[str, torch.Tensor], mesh) -> dict[str, torch.Tensor]:
    if mesh is None:
        return batch
    w, r = dist.get_world_size(), dist.get_rank()
    out = {}
    for k, t in batch.items():
        if t.shape[0] % w:
            raise ValueError(f"global batch {t.shape[0]} must be divisible by the world size {w}")
        n = t.shape[0] // w
        out[k] = t[r * n:(r + 1) * n]
    return out


def parallel_train_step(model: nn.Module, opt: torch.optim.Optimizer, mesh, batch: dict[str, torch.Tensor],
                        lr_mult: float = 1.0, grad_clip: float | None = 1.0,
                        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]] = lm_loss,
                        ) -> dict[str, float]:
    """One optimiser step on this rank's slice of the global ``batch``; returns world-averaged values."""
    model.train()
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * lr_mult
    dev = next(p for p in model.parameters()).device
    local = {k: v.to(dev) for k, v in _local_slice(batch, mesh).items()}
    loss, ce = loss_fn(model, local)
    loss.backward()
    sync_expert_grads(model, mesh)
    gnorm = clip_grad_norm_(model, grad_clip, mesh)
    opt.step()
    opt.zero_grad(set_to_none=True)
    vals = torch.stack([loss.detach().double(), ce.double()]).to(dev)
    if mesh is not None:
        dist.all_reduce(vals)
        vals /= dist.get_world_size()
    return {"loss": float(vals[0]), "ce": float(vals[1]), "grad_norm": gnorm}
