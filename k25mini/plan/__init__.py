"""Memory planning for scaling out (chapter 09): per-GPU bytes of the full K2.5 on a mesh, checked against
FSDP2 under FakeTensorMode and against measured activations (:mod:`k25mini.plan.measure`)."""

from k25mini.plan.memory import (
    GIB,
    PRECISIONS,
    MemoryPlan,
    Mesh,
    ParamSpec,
    Precision,
    activation_bytes,
    activation_elems_per_token,
    best_plan,
    candidate_plans,
    kv_cache_bytes,
    param_specs,
    plan_memory,
    serving_plan,
    smallest_plan,
)

__all__ = [
    "GIB",
    "PRECISIONS",
    "MemoryPlan",
    "Mesh",
    "ParamSpec",
    "Precision",
    "activation_bytes",
    "activation_elems_per_token",
    "best_plan",
    "candidate_plans",
    "kv_cache_bytes",
    "param_specs",
    "plan_memory",
    "serving_plan",
    "smallest_plan",
]
