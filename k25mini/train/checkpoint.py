"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout under a checkpoint root (``<out_dir>/checkpoints``)::

    step_00000120/
        model.safetensors        full (gathered) model state dict
        optimizer.safetensors    optimiser state tensors, key "<param fqn>/<state key>"
        rank_00000.json          per-rank state: RNG states, data-source state
        state.json               step, config, optimiser scalars and param groups; written LAST
    latest                       text file with the name of the newest complete checkpoint

A checkpoint is first written to ``.tmp-step_XXXXXXXX`` and renamed into place only once every file is
on disk (fsync'd); ``latest`` is then replaced atomically (write temp file, ``os.replace``). An exception or
a kill at any point before that leaves ``latest`` naming the previous complete checkpoint. Loading reads
only safetensors and JSON: nothing is ever unpickled.

Optimiser state is keyed by parameter name (``torch.distributed.checkpoint.state_dict``), so the same files
load into one process or into an FSDP2-sharded model on any number of ranks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from k25mini.train import distributed as D

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "checkpoint_name",
]

FORMAT = "k25mini.train.checkpoint/1"
MODEL_FILE, OPTIM_FILE, STATE_FILE, LATEST = "model.safetensors", "optimizer.safetensors", "state.json", "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _rank_file(r: int) -> str:
    return f"rank_{r:05d}.json"


# ----------------------------------------------------------------------------- small atomic-write helpers
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path))
    _fsync_file(path)


def _replace_text(path: Path, text: str) -> None:
    """Atomically set ``path``'s content (write a sibling temp file, then os.replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- (de)serialising state
def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # a private contiguous copy: safetensors refuses aliased tensors (tied weights) and non-contiguous views
    return t.detach().to("cpu", copy=True).contiguous()


def _json_value(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, (tuple, list)):
        return [_json_value(x, where) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _json_value(v.item(), where)
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).removeprefix("torch.")}
    raise ValueError(f"{where}: cannot store a {type(v).__name__} in a checkpoint (JSON scalars, lists, tensors only)")


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    if isinstance(v, dict) and "__dtype__" in v:
        return getattr(torch, v["__dtype__"])
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def _split_optimizer_state(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """FQN-keyed optimiser state dict -> (tensors for safetensors, JSON part)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{fqn}/{k}"] = _cpu_copy(v)
            else:
                scalars.setdefault(fqn, {})[k] = _json_value(v, f"optimizer state {fqn}/{k}")
    groups = []
    for i, g in enumerate(osd["param_groups"]):
        groups.append({k: (list(v) if k == "params" else _json_value(v, f"optimizer param_groups[{i}].{k}"))
                       for k, v in g.items()})
    return tensors, {"scalars": scalars, "param_groups": groups}


def _join_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        fqn, k = key.rsplit("/", 1)
        state.setdefault(fqn, {})[k] = t
    for fqn, st in meta["scalars"].items():
        state.setdefault(fqn, {}).update({k: _from_json(v) for k, v in st.items()})
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(f"checkpoint has {len(saved_groups)} optimizer param groups, the optimizer has "
                         f"{len(optimizer.param_groups)} (different optimizer kind or model?)")
    groups = []
    for saved, cur in zip(saved_groups, optimizer.param_groups):
        g = {k: _from_json(v) for k, v in saved.items()}
        for k, v in g.items():  # JSON has no tuples: give back the optimiser's own container type
            if k != "params" and isinstance(cur.get(k), tuple) and isinstance(v, list):
                g[k] = tuple(v)
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- finding checkpoints
def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (those with state.json), oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``root/latest``, or None when there is no pointer yet."""
    ptr = Path(root) / LATEST
    if not ptr.is_file():
        return None
    name = ptr.read_text(encoding="utf-8").strip()
    path = Path(root) / name
    if not name or "/" in name or not (path / STATE_FILE).is_file():
        raise ValueError(f"{ptr} points at {name!r}, which is not a complete checkpoint")
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from: the directory itself, a checkpoint root (uses ``latest``), or an out_dir
    (uses ``out_dir/checkpoints/latest``). FileNotFoundError / ValueError name the path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {str(p)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"checkpoint path {str(p)!r} must be a directory (a checkpoint, its root, or an out_dir)")
    if (p / STATE_FILE).is_file():
        return p
    for root in (p, p / "checkpoints"):
        if (root / LATEST).is_file():
            found = latest_checkpoint(root)
            assert found is not None
            return found
    raise FileNotFoundError(f"no checkpoint at {str(p)!r}: no {STATE_FILE}, no {LATEST} pointer, "
                            f"no checkpoints/{LATEST}")


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``latest`` at it; returns its path.

    Collective under torch.distributed (every rank calls it): state dicts are gathered to full tensors, rank 0
    writes them, every rank writes its own ``rank_XXXXX.json`` (``rank_state``: JSON-able). ``state`` (JSON-able)
    goes to state.json. ``keep_last``: delete older complete checkpoints beyond the newest N.
    """
    root = Path(root)
    r, main = D.rank(), D.rank() == 0
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)  # collective under FSDP
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # debris from an earlier interrupted write of the same step
            shutil.rmtree(tmp)
        tmp.mkdir()
    D.barrier()
    try:
        _write_json(tmp / _rank_file(r), rank_state)
        D.barrier()
        if main:
            _write_tensors(tmp / MODEL_FILE, {k: _cpu_copy(v) for k, v in msd.items()})
            full_state = {"format": FORMAT, "step": step, "world_size": D.world_size(), **state}
            if osd is not None:
                otensors, ometa = _split_optimizer_state(osd)
                _write_tensors(tmp / OPTIM_FILE, otensors)
                full_state["optimizer"] = ometa
            _write_json(tmp / STATE_FILE, full_state)  # last: its presence marks a complete checkpoint
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume): swap the old copy out first
                old = root / f".old-{final.name}"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            _fsync_dir(root)
            _replace_text(root / LATEST, final.name + "\n")
            if keep_last is not None:
                for old_ckpt in list_checkpoints(root)[:-keep_last]:
                    if old_ckpt != final:
                        shutil.rmtree(old_ckpt, ignore_errors=True)
    except BaseException:
        if main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    D.barrier()
    return final


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {str(path)!r} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is not valid JSON ({e})") from e


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is not a readable safetensors file ({e})") from e


def read_state(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(checkpoint dir, its state.json) with the format checked."""
    ckpt = resolve_checkpoint(path)
    state = _read_json(ckpt / STATE_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(ckpt / STATE_FILE)!r} is not a {FORMAT} checkpoint state")
    return ckpt, state


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> Path:
    """Load only the model weights of a checkpoint (any of the forms :func:`resolve_checkpoint` takes)."""
    ckpt = resolve_checkpoint(path)
    sd = _read_tensors(ckpt / MODEL_FILE)
    try:
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=strict))
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not fit this model: {e}") from e
    return ckpt


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load model (and optimiser) state in place; returns (state.json dict, this rank's rank-state or None).

    Every rank calls it under torch.distributed (full tensors are read by each rank and sharded locally).
    The rank-state is None when the checkpoint was written by fewer ranks than this rank's index.
    """
    ckpt, state = read_state(path)
    load_weights(model, ckpt)
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"checkpoint {str(ckpt)!r} has no optimizer state")
        tensors = _read_tensors(ckpt / OPTIM_FILE)
        osd = _join_optimizer_state(tensors, state["optimizer"], optimizer)
        # strict=False: parameters that never received a gradient before the checkpoint (e.g. a vision tower
        # whose data enters later in training) legitimately have no optimizer state yet
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True, strict=False))
        # torch materialises state for *every* parameter while loading (a zero-grad step); drop it again for the
        # parameters that had none, or their first real step would count as the second (Adam bias correction)
        for name, p in model.named_parameters():
            if name not in osd["state"]:
                optimizer.state.pop(p, None)
    rank_path = ckpt / _rank_file(D.rank())
    rank_state = _read_json(rank_path) if rank_path.is_file() else None
    return state, rank_state
