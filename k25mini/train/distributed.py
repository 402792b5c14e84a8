"""Data-parallel plumbing for the trainer: torchrun set-up, FSDP2 sharding, small collectives.

Launch any training script with ``torchrun --nproc_per_node N script.py``; in the script call
:func:`init_distributed` once, build the model, :func:`shard_model` it, then hand it to the Trainer as usual.
Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "shard_model",
    "is_distributed",
    "rank",
    "world_size",
    "barrier",
    "all_reduce_mean",
    "broadcast_object",
    "is_sharded",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment (idempotent).

    ``backend`` defaults to nccl on CUDA and gloo on CPU. On CUDA the process's device is set to
    ``cuda:LOCAL_RANK``. Without torchrun's env vars it returns rank 0 of 1 and initialises nothing.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ and not is_distributed():
        return DistInfo(0, 1, 0, device)
    if cuda:
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def _default_units(model: nn.Module) -> list[nn.Module]:
    """Every element of every nn.ModuleList (the transformer blocks in practice)."""
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            out.extend(c for c in m if any(True for _ in c.parameters()))
    return out


def shard_model(
    model: nn.Module,
    mesh: object | None = None,
    units: Callable[[str, nn.Module], bool] | None = None,
    reshard_after_forward: bool = True,
    mp_policy: object | None = None,
) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to the chosen sub-modules, then to the root; returns ``model`` (sharded in place).

    ``units(name, module) -> bool`` picks the sub-modules that get their own all-gather unit (default: each
    element of every ``nn.ModuleList``). ``mesh``: a 1-D DeviceMesh (default: the whole world on the
    model's device type). Call after the model is on its device and before building the optimiser.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not is_distributed():
        raise ValueError("shard_model needs an initialised process group (call init_distributed under torchrun)")
    if mesh is None:
        dev = next(model.parameters()).device.type
        mesh = init_device_mesh(dev, (dist.get_world_size(),))
    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    chosen = [m for n, m in model.named_modules() if m is not model and units(n, m)] if units else _default_units(model)
    for m in chosen:
        fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when any parameter is a DTensor (FSDP2 / tensor parallel)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a float tensor over ranks (identity on one process)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (identity on one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
