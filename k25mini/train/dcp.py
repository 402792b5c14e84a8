"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP) that reshard across world sizes.

    save_dcp(path, model, optimizer, mesh, step=100)          # collective: every rank writes its shards
    step = load_dcp(path, model, optimizer, mesh)             # any world size, including one process (mesh=None)
    dcp_to_safetensors(path, "run.safetensors")               # one file, full tensors
    safetensors_to_dcp("run.safetensors", other_path)         # and back
    to_published(dcp_model_state_dict(path), cfg)             # k25mini.interop: the published Kimi names

What is written: ``{"model": <state dict>, "optim": <optimizer state dict>, "meta": {...}}`` as produced by
``get_state_dict`` (``torch.distributed.checkpoint.state_dict``): FSDP2 parameters and their optimizer state are
DTensors, so every rank writes its rows and DCP's metadata records where they sit in the global tensor. Routed
expert weights hold this rank's block of ``E/ep`` experts: a plain tensor when ``dp == 1``, a DTensor
``Shard(0)`` over ``mesh["dp"]`` (global shape ``[E/ep, ...]``) when ``dp > 1``. Before saving they are described
with the global shape ``[E, ...]``: the plain block as a DTensor ``Shard(0)`` over the ``ep`` mesh dimension, the
dp-sharded block as a DTensor ``(Shard(0), Shard(0))`` over the mesh transposed to ``("ep", "dp")`` (experts split
over ``ep`` first, each block over ``dp``: the rows FSDP2 keeps, uneven chunks included); with ``ep == 1`` the
dp-sharded DTensor is global already. After loading, the original tensors (which the wrappers alias, and DCP
loads in place) go to ``set_state_dict``. A checkpoint therefore always holds global tensors under the model's
own parameter names, whatever mesh wrote it.

Loading builds the same structure for the current model (its own sharding) and lets DCP read the slices each rank
needs: save at 2 processes, load at 1 or at 4. Nothing else is needed for an exact continuation of
:func:`k25mini.train.parallel.parallel_train_step` runs: the data and the learning rate are functions of the
step, the router biases are persistent buffers, max logits and expert loads are reset every step.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dcp_state", "save_dcp", "load_dcp", "dcp_model_state_dict", "dcp_to_safetensors", "safetensors_to_dcp"]


def _expert_names(model: nn.Module) -> dict[str, int]:
    """{expert parameter name: number of experts E in the full layer}."""
    from k25mini.train.parallel import expert_params

    out = {}
    for name, _ in expert_params(model):
        layer = model.get_submodule(name.rsplit(".experts.", 1)[0])
        out[name] = layer.num_experts
    return out


_EP_DP_MESH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ep_dp_mesh(mesh):
    """``mesh`` (dims ("dp", "ep")) transposed to ("ep", "dp"): the same ranks, no new process groups (only
    coordinates are needed to describe where a shard sits; nothing communicates over it)."""
    from torch.distributed.device_mesh import DeviceMesh

    if mesh not in _EP_DP_MESH:
        _EP_DP_MESH[mesh] = DeviceMesh(mesh.device_type, mesh.mesh.transpose(0, 1).contiguous(),
                                       mesh_dim_names=("ep", "dp"), _init_backend=False)
    return _EP_DP_MESH[mesh]


def _wrap(t: torch.Tensor, num_experts: int, mesh) -> torch.Tensor:
    from torch.distributed.tensor import DTensor, Shard

    if mesh is None or t.shape[0] == num_experts:  # whole, or a DTensor that is global already (ep == 1)
        return t
    shape = (num_experts, *t.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    if isinstance(t, DTensor):  # [E/ep, ...] FSDP-sharded over dp: ep blocks, each split over dp
        if t.placements != (Shard(0),) or t.device_mesh.mesh_dim_names != ("dp",):
            raise ValueError(f"expert DTensor must be Shard(0) over the 'dp' mesh, got {t.placements} over "
                             f"{t.device_mesh.mesh_dim_names}")
        return DTensor.from_local(t.to_local(), _ep_dp_mesh(mesh), [Shard(0), Shard(0)], run_check=False,
                                  shape=shape, stride=stride)
    return DTensor.from_local(t, mesh["ep"], [Shard(0)], run_check=False, shape=shape, stride=stride)


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer, mesh) -> tuple[dict[str, Any], dict[int, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    msd, osd = get_state_dict(model, optimizer)
    originals: dict[int, Any] = {}  # id(wrapper) -> the tensor it describes (and aliases)

    def wrap(t: torch.Tensor, e: int) -> torch.Tensor:
        w = _wrap(t, e, mesh)
        if w is not t:
            originals[id(w)] = t
        return w

    for name, e in _expert_names(model).items():
        if name in msd:
            msd[name] = wrap(msd[name], e)
        if name in osd.get("state", {}):
            # a new dict: get_optimizer_state_dict may hand out the optimiser's own per-parameter dicts
            osd["state"][name] = {k: wrap(v, e) if isinstance(v, torch.Tensor) and v.ndim > 0 else v
                                  for k, v in osd["state"][name].items()}
    return {"model": msd, "optim": osd}, originals


def dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer, mesh=None) -> dict[str, Any]:
    """``{"model", "optim"}`` from ``get_state_dict``, expert blocks described as global ``[E, ...]`` tensors."""
    return _dcp_state(model, optimizer, mesh)[0]


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns "assuming the intent is to load in a single process" even when told so (no_dist): it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to .* in a single process.*")
        yield


def _check_path(path: str | os.PathLike, what: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be a path, got {type(path).__name__}")
    return Path(path)


def save_dcp(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, mesh=None, *,
             step: int, meta: dict[str, Any] | None = None) -> Path:
    """Write a DCP checkpoint directory at ``path`` (collective under torch.distributed)."""
    import torch.distributed.checkpoint as dcp

    p = _check_path(path)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    state = dcp_state(model, optimizer, mesh)
    info = {"step": step, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "mesh": None if mesh is None else {"dp": mesh["dp"].size(), "ep": mesh["ep"].size()}}
    state["meta"] = {"json": json.dumps({**info, **(meta or {})})}
    with _single_process_ok():
        dcp.save(state, checkpoint_id=str(p), no_dist=not dist.is_initialized())
    return p


def load_dcp(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, mesh=None) -> dict:
    """Load a checkpoint written by :func:`save_dcp` (at any world size) into ``model`` / ``optimizer`` as they are
    sharded now; returns its ``meta`` dict (``step``, ``world_size``, ``mesh``, ...)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    p = _check_path(path)
    if not (p / ".metadata").is_file():
        raise FileNotFoundError(f"path {str(p)!r} is not a DCP checkpoint (no .metadata file)")
    state, originals = _dcp_state(model, optimizer, mesh)
    state["meta"] = {"json": ""}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(p), no_dist=not dist.is_initialized())

    def unwrap(v: Any) -> Any:  # DCP loaded in place into the wrapper, i.e. into the tensor it aliases
        return originals.get(id(v), v)

    msd = {k: unwrap(v) for k, v in state["model"].items()}
    osd = state["optim"]
    osd["state"] = {name: {k: unwrap(v) for k, v in st.items()} for name, st in osd.get("state", {}).items()}
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)
    return json.loads(state["meta"]["json"])


# ---------------------------------------------------------------------------------------------- safetensors
def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor], other: dict[str, Any]) -> None:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().contiguous()
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        for k, v in obj.items():
            if "/" in k:
                raise ValueError(f"state key {k!r} contains '/', which the safetensors layout uses as separator")
            _flatten(v, f"{prefix}/{k}" if prefix else k, tensors, other)
    else:
        other[prefix] = obj


def _unflatten(tensors: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in [*tensors.items(), *other.items()]:
        node = out
        *parents, last = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = v
    return out


def _gather(src: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if not (src / ".metadata").is_file():
        raise FileNotFoundError(f"dcp_dir {str(src)!r} is not a DCP checkpoint (no .metadata file)")
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "full.pt")
        with _single_process_ok():
            dcp_to_torch_save(str(src), tmp)
        return torch.load(tmp, weights_only=False)


def dcp_model_state_dict(dcp_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a DCP checkpoint as one full state dict (k25mini names, global shapes; one process).

    For the published Kimi / DeepSeek-V3 names pass it to :func:`k25mini.interop.to_published`, or load it into
    an unsharded model and call :func:`k25mini.interop.save_pretrained`."""
    return dict(_gather(_check_path(dcp_dir, "dcp_dir"))["model"])


def dcp_to_safetensors(dcp_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Gather a DCP checkpoint into one ``.safetensors`` file (one process, no process group needed).

    Tensors are stored under "/"-joined paths (``model/<parameter name>``, ``optim/state/<name>/exp_avg``, ...);
    everything else (optimizer step counts, param groups, ``meta``) goes into the file's metadata as JSON
    (key ``k25mini.nontensor``).
    """
    from safetensors.torch import save_file

    src, dst = _check_path(dcp_dir, "dcp_dir"), _check_path(out_file, "out_file")
    state = _gather(src)
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, Any] = {}
    _flatten(state, "", tensors, other)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata={"k25mini.nontensor": json.dumps(other), "format": "pt"})
    return dst


def safetensors_to_dcp(in_file: str | os.PathLike, dcp_dir: str | os.PathLike) -> Path:
    """Write a single-file checkpoint (:func:`dcp_to_safetensors`'s layout) back as a DCP directory."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

    src, dst = _check_path(in_file, "in_file"), _check_path(dcp_dir, "dcp_dir")
    if not src.is_file():
        raise FileNotFoundError(f"in_file {str(src)!r} does not exist")
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata() or {}
    if "k25mini.nontensor" not in meta:
        raise ValueError(f"in_file {str(src)!r} was not written by dcp_to_safetensors (no k25mini.nontensor metadata)")
    state = _unflatten(load_file(str(src)), json.loads(meta["k25mini.nontensor"]))
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "full.pt")
        torch.save(state, tmp)
        with _single_process_ok():
            torch_save_to_dcp(tmp, str(dst))
    return dst
