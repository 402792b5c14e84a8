"""Standalone MoE expert kernels (torch + triton only; nothing here imports k25mini).

The whole project uses one expert weight layout: ``w_gate_up [E, D, 2F]`` (columns [:F] gate,
[F:] up) and ``w_down [E, F, D]``; expert e maps x [D] to (silu(x @ Wg) * (x @ Wu)) @ Wd.
Three interchangeable paths share one signature ``f(x, w_gate_up, w_down, topk_ids, topk_weights)``:

* ``moe_reference``      loop over experts (obviously correct; the tests' yardstick)
* ``moe_grouped_torch``  sort by expert + ``F.grouped_mm`` (the fastest pure-PyTorch path on CPU; the one
                         implementation behind the MoE layer's ``torch`` backend)
* ``moe_triton``         Triton forward and backward (CUDA, or CPU under TRITON_INTERPRET=1)

The Triton pieces (``moe_align``, ``gate_up_swiglu``, ``down_proj``, ``combine`` and the backward
kernels) are exported too, each beside its PyTorch reference, so notebook 03 can build them up.
"""

from ._validate import MoEShapes, check_moe_inputs
from .grouped_torch import HAS_GROUPED_MM, grouped_mm_supported, grouped_mm_usable, moe_grouped_torch, sort_by_expert
from .reference import moe_reference, swiglu_expert

__all__ = [
    "HAS_GROUPED_MM",
    "HAS_TRITON",
    "MoEShapes",
    "check_moe_inputs",
    "grouped_mm_supported",
    "grouped_mm_usable",
    "moe_grouped_torch",
    "moe_reference",
    "sort_by_expert",
    "swiglu_expert",
]

# triton is a Linux-only dependency; without it the pure-PyTorch paths above stay importable (the MoE layer's
# ``torch`` backend uses moe_grouped_torch) and only the Triton names below are missing
try:
    from .moe_triton import (
        INTERPRET,
        MoETritonFunction,
        TileConfig,
        combine,
        combine_reference,
        default_tiles,
        down_backward_dh,
        down_backward_dw,
        down_proj,
        down_proj_reference,
        gate_up_backward_dw,
        gate_up_backward_dx,
        gate_up_swiglu,
        gate_up_swiglu_reference,
        moe_triton,
    )
    from .routing import RoutingMeta, max_blocks, moe_align, moe_align_reference
except ModuleNotFoundError as err:
    if err.name != "triton" and not (err.name or "").startswith("triton."):
        raise
    HAS_TRITON = False
else:
    HAS_TRITON = True
    __all__ += [
        "INTERPRET",
        "MoETritonFunction",
        "RoutingMeta",
        "TileConfig",
        "combine",
        "combine_reference",
        "default_tiles",
        "down_backward_dh",
        "down_backward_dw",
        "down_proj",
        "down_proj_reference",
        "gate_up_backward_dw",
        "gate_up_backward_dx",
        "gate_up_swiglu",
        "gate_up_swiglu_reference",
        "max_blocks",
        "moe_align",
        "moe_align_reference",
        "moe_triton",
    ]
