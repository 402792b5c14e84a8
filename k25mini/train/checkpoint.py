"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout under a checkpoint root (``<out_dir>/checkpoints``)::

    step_00000120/
        model.safetensors        full (gathered) model state dict
        optimizer.safetensors    optimiser state tensors, key "<param fqn>/<state key>"
        rank_00000.json          per-rank state: RNG states, data-source state
        state.json               step, config, optimiser scalars and param groups, and (format /2) the
                                 sha256 and byte size of every other file plus a digest of itself; written LAST
    latest                       text file with the name of the newest complete checkpoint

A checkpoint is first written to ``.tmp-step_XXXXXXXX``; the checksums are computed from the files read back
after fsync, state.json is written and fsync'd, and only then is the directory renamed into place; ``latest``
is then replaced atomically (write temp file, ``os.replace``), and only after that are checkpoints beyond
``keep_last`` removed (renamed to ``.del-*`` first, so a kill mid-delete never leaves a partial ``step_*``), along
with checkpoints of later steps than the new one (an abandoned trajectory). Re-saving an existing step moves the
old copy to ``.old-step_N`` before renaming the new one in; if a kill falls between the two renames, the old
copy is what "the latest" resolves to, and the next save puts it back. An exception or a kill at any point
leaves ``latest`` naming a complete checkpoint, or (in that one window) its previous copy.

Loading verifies the checksums (:func:`verify_checkpoint`): a corrupt, truncated or missing file raises a
``CheckpointError`` (a ValueError) or FileNotFoundError naming the file. Asking for "the latest" checkpoint
(:func:`latest_checkpoint`, :func:`resolve_checkpoint` on a root or out_dir, ``Trainer.resume``) falls back to
the newest checkpoint that verifies: the ``latest`` target first, then older ones, newest first, with a
warning naming each skipped checkpoint and why. Format /1 checkpoints (no checksums) still load, unverified,
with a warning. Loading reads only safetensors and JSON: nothing is ever unpickled.

Optimiser state is keyed by parameter name (``torch.distributed.checkpoint.state_dict``), so the same files
load into one process or into an FSDP2-sharded model on any number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
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
    "verify_checkpoint",
    "CheckpointError",
    "FORMAT_V1",
]

FORMAT = "k25mini.train.checkpoint/2"
FORMAT_V1 = "k25mini.train.checkpoint/1"  # no checksums; still loadable (unverified)
_STEP_DIR = re.compile(r"^step_\d{8}$")
_noted_unverified: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint that fails verification: a corrupt, truncated or inconsistent file (the message names it)."""


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_digest(state: dict[str, Any]) -> str:
    """sha256 of state.json's content without its own digest field, in a canonical JSON form (so a
    write -> read round trip gives the same digest)."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    canon = json.dumps(json.loads(json.dumps(body, allow_nan=True)), sort_keys=True, allow_nan=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _remove_dir(path: Path) -> None:
    """Delete a directory so that a kill midway leaves no partial ``step_*``: rename to ``.del-*``, then rmtree."""
    gone = path.with_name(f".del-{path.name}")
    if gone.exists():
        shutil.rmtree(gone)
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


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


def verify_checkpoint(path: str | os.PathLike, files: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check a checkpoint directory against the checksums in its state.json; returns the state dict.

    ``files``: check only these file names (default: every file state.json lists). Raises CheckpointError
    (a ValueError) naming the file for a corrupt/truncated file or a state.json that is not valid JSON, not
    of a known format or does not match its own digest; FileNotFoundError naming a missing file. A format /1
    checkpoint (written before checksums existed) is returned unverified, with a warning the first time."""
    ckpt = Path(path)
    sp = ckpt / STATE_FILE
    try:
        state = _read_json(sp)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{str(sp)!r} is not a {FORMAT} checkpoint state")
    if state["format"] == FORMAT_V1:
        if str(ckpt) not in _noted_unverified:
            _noted_unverified.add(str(ckpt))
            warnings.warn(f"checkpoint {str(ckpt)!r} predates checksums ({FORMAT_V1}): used without verification",
                          stacklevel=2)
        return state
    if state.get("state_sha256") != _state_digest(state):
        raise CheckpointError(f"{str(sp)!r} does not match its own digest (corrupt or edited)")
    listed = state.get("files")
    if not isinstance(listed, dict):
        raise CheckpointError(f"{str(sp)!r} has no 'files' checksum table")
    for name in listed if files is None else files:
        fp = ckpt / name
        meta = listed.get(name)
        if meta is None:
            raise CheckpointError(f"{str(sp)!r} records no checksum for {name!r}")
        if not fp.is_file():
            raise FileNotFoundError(f"checkpoint file {str(fp)!r} is missing (listed in state.json)")
        size = fp.stat().st_size
        if size != meta["bytes"]:
            what = "truncated" if size < meta["bytes"] else "longer than written"
            raise CheckpointError(f"checkpoint file {str(fp)!r} is {what}: {size} bytes on disk, "
                                  f"{meta['bytes']} recorded in state.json")
        if _sha256(fp) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file {str(fp)!r} is corrupt: its sha256 differs from the one "
                                  "recorded in state.json")
    return state


def latest_checkpoint(root: str | os.PathLike, verify: bool = True) -> Path | None:
    """The newest usable checkpoint under ``root``; None when there is none at all.

    Candidates: the checkpoint ``root/latest`` names, then the complete checkpoints older than it, newest
    first (with no readable pointer: every complete checkpoint, newest first). Checkpoints newer than the
    pointer's target are never used: they can only be left over from an abandoned trajectory or from a kill
    between the rename and the pointer update. When the pointer's target is missing but its ``.old-`` copy is
    complete (a kill between the two renames of a re-save), that copy comes first. With ``verify`` (default)
    the first candidate that passes :func:`verify_checkpoint` is returned and each one passed over is named,
    with its reason, in a warning; CheckpointError when checkpoints exist but none verifies.
    ``verify=False``: the first candidate as is."""
    root = Path(root)
    found = list_checkpoints(root)[::-1]  # newest first
    ptr = root / LATEST
    skipped: list[str] = []
    candidates = found
    if ptr.is_file():
        try:
            name = ptr.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            name = f"<unreadable: {e}>"
        if _STEP_DIR.match(name) and (root / name / STATE_FILE).is_file():
            candidates = [root / name] + [p for p in found if p.name < name]
        else:
            skipped.append(f"{LATEST} points at {name!r}, which is not a complete checkpoint")
            if _STEP_DIR.match(name):
                candidates = [p for p in found if p.name < name]
                prev = root / f".old-{name}"  # a kill between the two renames of a re-save: its previous copy
                if (prev / STATE_FILE).is_file():
                    candidates.insert(0, prev)
    elif not found:
        return None
    chosen: Path | None = None
    for c in candidates:
        if not verify:
            chosen = c
            break
        try:
            verify_checkpoint(c)
        except (ValueError, OSError) as e:
            skipped.append(f"{c.name}: {e}")
            continue
        chosen = c
        break
    if chosen is None:
        raise CheckpointError(f"no usable checkpoint under {str(root)!r}: " + "; ".join(skipped or ["none found"]))
    if skipped:
        warnings.warn(f"using checkpoint {str(chosen)!r}; passed over: " + "; ".join(skipped), stacklevel=2)
    return chosen


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from: the directory itself, a checkpoint root, or an out_dir (its
    ``checkpoints``); for a root or out_dir, :func:`latest_checkpoint` (newest that verifies). FileNotFoundError
    / ValueError name the path. A checkpoint directory given directly is verified when it is loaded."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {str(p)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"checkpoint path {str(p)!r} must be a directory (a checkpoint, its root, or an out_dir)")
    if (p / STATE_FILE).is_file():
        return p
    for root in (p, p / "checkpoints"):
        if (root / LATEST).is_file() or list_checkpoints(root):
            found = latest_checkpoint(root)
            assert found is not None
            return found
    raise FileNotFoundError(f"no checkpoint at {str(p)!r}: no {STATE_FILE}, no {LATEST} pointer, "
                            f"no checkpoints/{LATEST}")


# ----------------------------------------------------------------------------- save / load
def _clear_debris(root: Path) -> None:
    """Tidy what a kill left under ``root``: ``.tmp-step_N`` (an unfinished write) and ``.del-step_N`` (an
    unfinished delete) are removed; ``.old-step_N`` (the previous copy of a step being re-saved) is put back
    as ``step_N`` when the new copy never arrived, since it may be what ``latest`` names, and removed otherwise."""
    for debris in sorted(root.glob(".*-step_*")):
        if not debris.is_dir():
            continue
        kind, _, name = debris.name.partition("-")
        if kind == ".old" and _STEP_DIR.match(name) and not (root / name).exists() \
                and (debris / STATE_FILE).is_file():
            os.replace(debris, root / name)
            _fsync_dir(root)
        else:
            shutil.rmtree(debris)


def _prune(root: Path, final: Path, keep_last: int) -> None:
    """After ``final`` is complete and ``latest`` names it: keep it and the ``keep_last - 1`` newest checkpoints
    before it. Checkpoints of later steps are removed too: ``latest`` never reaches them again (they belong to a
    trajectory abandoned by resuming from an earlier step), and left in place they would later count as
    fallbacks that do not belong to this run."""
    ckpts = list_checkpoints(root)
    older = [p for p in ckpts if p.name < final.name]
    newer = [p for p in ckpts if p.name > final.name]
    for p in newer + older[: max(len(older) - (keep_last - 1), 0)]:
        _remove_dir(p)


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
    goes to state.json. ``keep_last``: once the new checkpoint is in place, keep it and the ``keep_last - 1``
    newest ones before it; older ones, and any of later steps (an abandoned trajectory), are deleted.
    """
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    if keep_last is not None and not (isinstance(keep_last, int) and not isinstance(keep_last, bool)
                                      and keep_last >= 1):
        raise ValueError(f"save_checkpoint: keep_last must be None or an int >= 1, got {keep_last!r}")
    root = Path(root)
    r, main = D.rank(), D.rank() == 0
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)  # collective under FSDP
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    if main:
        root.mkdir(parents=True, exist_ok=True)
        _clear_debris(root)
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
            # checksums of the bytes read back after fsync (every rank's file included: shared filesystem)
            full_state["files"] = {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
                                   for f in sorted(tmp.iterdir()) if f.name != STATE_FILE}
            full_state["state_sha256"] = _state_digest(full_state)
            _write_json(tmp / STATE_FILE, full_state)  # last: its presence marks a complete checkpoint
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume): swap the old copy out first
                old = root / f".old-{final.name}"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
                os.replace(tmp, final)
                _fsync_dir(root)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            _fsync_dir(root)
            _replace_text(root / LATEST, final.name + "\n")
            if keep_last is not None:  # only now: the new checkpoint is complete and ``latest`` names it
                _prune(root, final, keep_last)
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
    """(checkpoint dir, its state.json) with the format and every checksum verified."""
    ckpt = resolve_checkpoint(path)
    return ckpt, verify_checkpoint(ckpt)


def _set_weights(model: nn.Module, ckpt: Path, strict: bool) -> None:
    sd = _read_tensors(ckpt / MODEL_FILE)
    if strict:  # set_model_state_dict(strict=True) reports unexpected tensors but not missing ones (torch 2.13)
        missing = [k for k in (n.replace("_orig_mod.", "") for n in model.state_dict()) if k not in sd]
        if missing:
            raise ValueError(f"checkpoint {str(ckpt)!r} does not fit this model: it lacks {len(missing)} of the "
                             f"model's tensors, e.g. {missing[:4]} (strict=False keeps their current values)")
    try:
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=strict))
    except RuntimeError as e:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not fit this model: {e}") from e


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> Path:
    """Load only the model weights of a checkpoint (any of the forms :func:`resolve_checkpoint` takes);
    model.safetensors is verified against its checksum first."""
    ckpt = resolve_checkpoint(path)
    verify_checkpoint(ckpt, files=(MODEL_FILE,))
    _set_weights(model, ckpt, strict)
    return ckpt


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load model (and optimiser) state in place; returns (state.json dict, this rank's rank-state or None).

    Every file of the checkpoint is verified first (:func:`verify_checkpoint`). Every rank calls it under
    torch.distributed (full tensors are read by each rank and sharded locally). The rank-state is None when
    the checkpoint was written by fewer ranks than this rank's index.
    """
    ckpt, state = read_state(path)
    _set_weights(model, ckpt, strict=True)
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
