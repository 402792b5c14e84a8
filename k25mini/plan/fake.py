"""What FSDP2 + expert parallelism really put on one GPU, measured without memory: FakeTensorMode + a fake process
group.

:func:`fake_fsdp_memory` builds :class:`~k25mini.multimodal.K25ForConditionalGeneration` under
``torch._subclasses.fake_tensor.FakeTensorMode`` (tensors carry shapes and dtypes, no storage), initialises a
``fake`` process group of ``dp`` ranks (``torch.testing._internal.distributed.fake_pg``: collectives return at
once), makes the MoE layers expert-parallel over ``ep`` ranks, applies FSDP2 ``fully_shard`` (each routed-expert
block over the ``dp / ep`` ranks that hold the same experts, every decoder layer and the root over all ``dp``
ranks), gives every parameter a gradient shaped like its shard (a backward under fake tensors would stop at the
MoE's data-dependent token counts) and runs one optimizer step, which allocates the optimizer state. It returns
rank 0's local bytes of parameters, gradients and optimizer state. This is what
:func:`k25mini.plan.plan_memory` (``sharding="fsdp"``, ``pp=1``) must agree with.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from k25mini.config import ModelConfig

__all__ = ["fake_fsdp_memory"]


def _local_bytes(t: torch.Tensor) -> int:
    loc = t.to_local() if hasattr(t, "to_local") else t
    return loc.numel() * loc.element_size()


def fake_fsdp_memory(config: ModelConfig, dp: int, ep: int = 1, optimizer: str = "muon",
                     dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Rank 0's bytes ``{"params", "grads", "optimizer"}`` for ``config`` under FSDP2 over ``dp`` ranks with ``ep``-way
    expert parallelism (``ep`` divides ``dp``), parameters in ``dtype``, ``optimizer`` ``muon`` or ``adamw``.

    Needs no process group to be initialised (it makes and destroys its own fake one) and no memory: the full
    ``k25`` config runs in seconds on a laptop.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from k25mini.model.moe import MoELayer, apply_expert_parallel
    from k25mini.multimodal import K25ForConditionalGeneration
    from k25mini.optim.build import build_optimizer

    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    for name, v in (("dp", dp), ("ep", ep)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be an int > 0, got {v!r}")
    if dp % ep:
        raise ValueError(f"ep ({ep}) must divide dp ({dp})")
    if config.text.n_routed_experts % ep:
        raise ValueError(f"ep ({ep}) must divide n_routed_experts ({config.text.n_routed_experts})")
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    if dist.is_initialized():
        raise ValueError("fake_fsdp_memory makes its own fake process group: call it with none initialised")

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=dp)
    try:
        world = init_device_mesh("cpu", (dp,), mesh_dim_names=("dp",))
        mesh = init_device_mesh("cpu", (dp // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in dtype (a later .to() cannot swap fake parameters)
        try:
            with FakeTensorMode():
                model = K25ForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(old)
        with FakeTensorMode(allow_non_fake_inputs=True):
            if ep > 1:
                apply_expert_parallel(model, mesh["ep"].get_group())
            for layer in model.language_model.model.layers:
                if isinstance(layer.mlp, MoELayer):
                    fully_shard(layer.mlp.experts, mesh=mesh["dp_mod_ep"])
                fully_shard(layer, mesh=world)
            fully_shard(model.vision_tower, mesh=world)
            fully_shard(model, mesh=world)
            params = sum(_local_bytes(p) for p in model.parameters())
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            grads = sum(_local_bytes(p.grad) for p in model.parameters())
            opt = build_optimizer(model, optimizer)
            opt.step()
            state = sum(_local_bytes(v) for s in opt.state.values() for v in s.values()
                        if isinstance(v, torch.Tensor) and v.ndim > 0)  # per-tensor step counters excluded
    finally:
        dist.destroy_process_group()
    return {"params": params, "grads": grads, "optimizer": state}
