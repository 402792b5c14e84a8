"""The trainer's data contract: a deterministic, resumable source of micro-batches.

``train_data`` is one of

1. **a callable** ``batch_at(index: int) -> batch``, where ``index = step * grad_accum + micro`` counts
   micro-batches from 0. It must be a pure function of ``index`` (seed your generator from it), so a
   resumed run gets exactly the batches the uninterrupted run would have got. Nothing is saved.
2. **a stateful iterator**: an object with ``__next__()``, ``state_dict() -> dict`` and
   ``load_state_dict(dict)``. The state must be JSON-serialisable (ints, floats, strings, lists, dicts);
   it is saved in every checkpoint (per rank) and restored on resume.

A batch is a tensor, or a dict / list / tuple nesting tensors and other values; the trainer moves its tensors
to the device. With several data-parallel ranks and ``TrainConfig.shard_batch=True`` (the default) the source
returns the *global* micro-batch and each rank keeps its contiguous slice of dim 0 (so a 2-rank run sees the
same data as a 1-rank run); with ``shard_batch=False`` the source must return the rank's own batch itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["shard_rows_with_media", "media_shard_fn", "StatefulBatches", "BatchSource", "as_batch_source",
           "shard_batch", "to_device"]


@runtime_checkable
class StatefulBatches(Protocol):
    """An iterator of batches whose position can be saved and restored (JSON state)."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchSource:
    """Uniform view of either contract: ``get(index)``, ``state_dict()``, ``load_state_dict()``."""

    def __init__(self, data: Callable[[int], Any] | StatefulBatches) -> None:
        self.stateful = all(hasattr(data, a) for a in ("__next__", "state_dict", "load_state_dict"))
        if not self.stateful and not callable(data):
            raise ValueError(
                "train_data must be a callable batch_at(index) -> batch, or an iterator with state_dict() and "
                f"load_state_dict() (see k25mini.train.data); got {type(data).__name__}"
            )
        self.data = data

    def get(self, index: int) -> Any:
        return next(self.data) if self.stateful else self.data(index)  # type: ignore[call-overload]

    def state_dict(self) -> dict[str, Any] | None:
        return self.data.state_dict() if self.stateful else None  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.stateful:
            if state is None:
                raise ValueError("checkpoint has no data state, but train_data is a stateful iterator")
            self.data.load_state_dict(state)  # type: ignore[union-attr]


def as_batch_source(data: Any) -> BatchSource:
    return data if isinstance(data, BatchSource) else BatchSource(data)


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_map_tensors(v, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s contiguous 1/world_size slice of dim 0 of every tensor in ``batch`` (0-dim tensors kept)."""
    if world_size == 1:
        return batch

    def cut(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        if t.shape[0] % world_size:
            raise ValueError(f"batch dim 0 ({t.shape[0]}) must be divisible by world_size={world_size} "
                             "to shard it (or set TrainConfig.shard_batch=False)")
        n = t.shape[0] // world_size
        return t[rank * n : (rank + 1) * n]

    return _map_tensors(batch, cut)


def shard_rows_with_media(batch: dict[str, Any], rank: int, world_size: int, counts_fn: Callable[[Any], Any],
                          pad_id: int, media_key: str = "media", ids_key: str = "input_ids") -> dict[str, Any]:
    """:func:`shard_batch` for packed multimodal rows: the tensors are cut on dim 0 as there, and the row-major
    ``batch[media_key]`` list keeps the media whose pads lie in this rank's rows.

    Each media item fills ``sum(counts_fn(item))`` consecutive ``pad_id`` tokens of one row, in list order (what
    the packers and :func:`k25mini.sft.data.sft_batch` build); a batch that does not match raises ValueError."""
    ids = batch[ids_key]
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError(f"batch[{ids_key!r}] must be a [rows, seq] tensor")
    rows = ids.shape[0]
    if rows % world_size:
        raise ValueError(f"rows ({rows}) must be divisible by world_size={world_size} to shard them")
    media = list(batch.get(media_key) or [])
    pads = (ids == pad_id).sum(1).tolist()
    owner, row, left = [], 0, pads[0] if rows else 0
    for k, item in enumerate(media):
        need = int(sum(counts_fn(item)))
        while left == 0 and row < rows - 1:
            row += 1
            left = pads[row]
        if need > left:
            raise ValueError(f"{media_key}[{k}] needs {need} pads but row {row} has {left} left: the media list "
                             "does not follow the rows' pads in order")
        owner.append(row)
        left -= need
    if sum(pads) != sum(int(sum(counts_fn(m))) for m in media):
        raise ValueError(f"{ids_key} holds {sum(pads)} pads but the {len(media)} media items fill a different number")
    out = shard_batch({k: v for k, v in batch.items() if k != media_key}, rank, world_size)
    n = rows // world_size
    out[media_key] = [m for m, r in zip(media, owner) if rank * n <= r < (rank + 1) * n]
    return out


def media_shard_fn(model: Any, media_key: str = "media", ids_key: str = "input_ids") -> Callable[..., dict[str, Any]]:
    """The ``shard_fn`` for packed multimodal batches of ``model`` (anything with ``media_token_counts`` and
    ``pad_id``, e.g. :class:`k25mini.model.K25ForConditionalGeneration`): :func:`shard_rows_with_media` with the
    model's media-token counts and pad id bound."""
    for attr in ("media_token_counts", "pad_id"):
        if not hasattr(model, attr):
            raise ValueError(f"model must have .{attr} to shard multimodal rows; {type(model).__name__} has not")
    return functools.partial(shard_rows_with_media, counts_fn=model.media_token_counts, pad_id=model.pad_id,
                             media_key=media_key, ids_key=ids_key)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` to ``device``."""
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=True))
