"""Measure activation memory on CPU: the bytes autograd saves for backward, with and without checkpointing.

:func:`saved_tensor_bytes` runs a forward under ``torch.autograd.graph.saved_tensors_hooks`` and adds up the
storages of the tensors saved for backward, each storage once (views and re-saves of one tensor share it),
leaving out parameters (they are not activations). :func:`checkpoint_layers` wraps every decoder layer in
non-reentrant activation checkpointing (``torch.utils.checkpoint``), so only each layer's inputs are saved and
the layer is recomputed in backward. These are what :func:`k25mini.plan.activation_bytes` predicts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["saved_tensor_bytes", "checkpoint_layers", "CheckpointedLayer"]


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: nn.Module | None = None) -> tuple[int, torch.Tensor]:
    """``(bytes, out)``: run ``fn()`` and sum the distinct storages autograd saves for its backward.

    Storages of ``exclude``'s parameters and buffers are not counted. Only the forward is hooked: tensors that a
    checkpointed layer saves while it is recomputed in backward are not included (see
    :func:`k25mini.plan.activation_bytes`'s ``recompute_peak``).
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    if exclude is not None and not isinstance(exclude, nn.Module):
        raise ValueError(f"exclude must be an nn.Module or None, got {type(exclude).__name__}")
    skip = set()
    if exclude is not None:
        skip = {t.untyped_storage().data_ptr() for t in list(exclude.parameters()) + list(exclude.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip and st.nbytes() > 0:
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


class CheckpointedLayer(nn.Module):
    """A decoder layer whose forward is recomputed in backward (``torch.utils.checkpoint``, non-reentrant)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kw):
        return checkpoint(self.layer, *args, use_reentrant=False, **kw)


def checkpoint_layers(model: nn.Module) -> int:
    """Wrap every element of the decoder's ``layers`` ModuleList (a ``K2Model`` inside ``model``) in
    :class:`CheckpointedLayer`, in place. Returns how many layers were wrapped."""
    from k25mini.model.decoder import K2Model

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    n = 0
    for m in model.modules():
        if isinstance(m, K2Model):
            for i, layer in enumerate(m.layers):
                if not isinstance(layer, CheckpointedLayer):
                    m.layers[i] = CheckpointedLayer(layer)
                    n += 1
    if n == 0:
        raise ValueError("model holds no K2Model decoder layers to checkpoint")
    return n
