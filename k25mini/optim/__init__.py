"""Optimisers: MuonClip (Muon + AdamW + QK-Clip) as used to train K2, and AdamW for comparison.

``from k25mini.optim import build_optimizer``; ``build_optimizer(model, kind="muonclip"|"muon"|"adamw")``.
The optimiser it returns also runs the MoE router-bias update after every step when the model has MoE layers
(``attach_moe_bias_update``, re-exported here from :mod:`k25mini.model.moe`).
"""

from k25mini.model.moe import MoEBiasUpdate, attach_moe_bias_update
from k25mini.optim.build import KINDS, build_optimizer, param_groups_for
from k25mini.optim.muon import NS_COEFFICIENTS, MuonClip, zeropower_via_newtonschulz
from k25mini.optim.qk_clip import QKClip, clip_mla_heads_, qk_clip_gamma

__all__ = [
    "KINDS",
    "NS_COEFFICIENTS",
    "MoEBiasUpdate",
    "MuonClip",
    "QKClip",
    "attach_moe_bias_update",
    "build_optimizer",
    "clip_mla_heads_",
    "param_groups_for",
    "qk_clip_gamma",
    "zeropower_via_newtonschulz",
]
