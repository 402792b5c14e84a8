"""``python -m k25mini.plan --config k25 --gpus 256 --gpu-mem 80``: the per-GPU memory plan as a table.

Without ``--dp/--ep/--pp`` it searches the meshes (:func:`k25mini.plan.best_plan`) for each sharding and prints
the one it would pick, or the smallest if none fits; with them it prints that mesh. It also prints the MLA KV
cache and the sequences that fit per GPU for serving at ``--context`` tokens.
"""

from __future__ import annotations

import argparse
import sys

from k25mini.config import PRESETS, preset
from k25mini.plan.memory import (
    GIB,
    PRECISIONS,
    SHARDINGS,
    MemoryPlan,
    Mesh,
    best_plan,
    plan_memory,
    serving_plan,
    smallest_plan,
)


def _table(plan: MemoryPlan, ckpt: bool, gpu_mem: float, title: str) -> str:
    m = plan.mesh
    head = (f"{title}: dp={m.dp} ep={m.ep} pp={m.pp} sharding={m.sharding} precision={plan.precision} "
            f"checkpointing={'on' if ckpt else 'off'} offload={'on' if plan.offload else 'off'} "
            f"(stage {plan.stage} of {m.pp})")
    lines = [head, f"  {'component':<32}{'GiB / GPU':>10}"]
    for name, v in plan.rows():
        lines.append(f"  {name:<32}{v / GIB:>10.1f}")
    if plan.offload:
        lines.append(f"  {'host memory per GPU':<32}{plan.host / GIB:>10.1f}")
    fits = "fits" if plan.fits(gpu_mem) else "does NOT fit"
    lines.append(f"  -> {fits} in {gpu_mem:g} GiB (10 % kept free)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m k25mini.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="k25", choices=sorted(PRESETS))
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    ap.add_argument("--precision", default="bf16", choices=sorted(PRECISIONS))
    ap.add_argument("--optimizer", default="muon", choices=("muon", "adamw"))
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--sharding", default=None, choices=SHARDINGS, help="default: both")
    ap.add_argument("--dp", type=int, default=None)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--context", type=int, default=262144, help="serving context length for the KV-cache line")
    a = ap.parse_args(argv)
    try:
        cfg = preset(a.config)
        kw = dict(precision=a.precision, micro_batch=a.micro_batch, seq_len=a.seq_len, optimizer=a.optimizer)
        if a.dp is not None:
            if a.dp * a.pp != a.gpus:
                raise ValueError(f"--dp ({a.dp}) x --pp ({a.pp}) must equal --gpus ({a.gpus})")
            mesh = Mesh(dp=a.dp, ep=a.ep, pp=a.pp, sharding=a.sharding or "fsdp")
            plan = plan_memory(cfg, mesh, checkpointing=a.checkpointing, offload=a.offload, **kw)
            print(_table(plan, a.checkpointing, a.gpu_mem, f"{cfg.name} on {a.gpus} GPUs"))
        else:
            for sh in (a.sharding,) if a.sharding else SHARDINGS:
                found = best_plan(cfg, a.gpus, a.gpu_mem, sharding=sh, **kw)
                if found is None:
                    plan, ck = smallest_plan(cfg, a.gpus, sharding=sh, offload=True, **kw)
                    title = f"{cfg.name} on {a.gpus} GPUs, {sh}: nothing fits; smallest"
                else:
                    plan, ck = found
                    title = f"{cfg.name} on {a.gpus} GPUs, {sh}: chosen"
                print(_table(plan, ck, a.gpu_mem, title))
                print()
        ep_serve = max(d for d in range(1, a.gpus + 1) if a.gpus % d == 0 and
                       (cfg.text.n_routed_experts % d == 0))
        s = serving_plan(cfg, ep_serve, a.gpu_mem, a.context)
        print(f"serving ({ep_serve} GPUs, experts split over all, bf16): weights {s['weights'] / GIB:.1f} GiB/GPU, "
              f"MLA KV cache {s['kv_per_sequence'] / GIB:.2f} GiB per {a.context}-token sequence, "
              f"{s['sequences']:.1f} such sequences fit per GPU")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
