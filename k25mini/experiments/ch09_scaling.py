"""Chapter 09's part of the speedrun: the memory plan of the full K2.5, and a short training run on two processes.

* ``plan``: per-GPU memory of the full K2.5 on 256 GPUs of 80 GB with K2's mesh (pp 16 × ep 16, ZeRO-1, bf16,
  checkpointing; K2 arXiv 2507.20534 §2.4.2) and with FSDP2 over all 256 (``k25mini.plan``). Nothing is allocated.
* ``dist``: ``torchrun --nproc-per-node 2 -m k25mini.train`` (2 ``gloo`` processes on CPU, NCCL on CUDA): the K2.5
  model at the nano preset on a dp 1 × ep 2 mesh - experts split over the two processes with all-to-all dispatch,
  everything else FSDP2-sharded, MuonClip on the shards - for ``steps`` steps, a DCP checkpoint at the end, then
  one process resumes it for a few more steps (the checkpoint reshards from 2 processes to 1).

The toy-text training of ``dist`` is independent of the earlier stages' model: this stage checks that the
multi-process machinery runs on this machine, not a finding of the paper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from k25mini.experiments.stage import Stage, StageContext, StageResult
from k25mini.scale import pick

__all__ = ["speedrun_stages", "stage_plan", "stage_dist", "card"]


def stage_plan(ctx: StageContext) -> StageResult:
    from k25mini.config import preset
    from k25mini.plan.memory import Mesh, best_plan, plan_memory

    cfg, gib = preset("k25"), 2**30
    k2 = plan_memory(cfg, Mesh(dp=16, ep=16, pp=16, sharding="zero1"), precision="bf16", checkpointing=True)
    got = best_plan(cfg, 256, 80, sharding="fsdp")
    lines = {"K2's mesh (pp 16, ep 16, ZeRO-1), 256 GPUs": f"{k2.total / gib:.1f} GiB per GPU "
                                                          f"(states {k2.states / gib:.1f}, activations "
                                                          f"{k2.activations / gib:.1f}); fits 80 GB: "
                                                          f"{k2.total <= 0.9 * 80 * gib}"}
    if got is None:
        lines["FSDP2 on 256 GPUs of 80 GB"] = "nothing fits"
    else:
        p, _ = got
        lines["FSDP2 on 256 GPUs of 80 GB"] = (f"dp {p.mesh.dp} × ep {p.mesh.ep}, {p.total / gib:.1f} GiB per GPU, "
                                               f"optimizer state offloaded: {p.offload}")
    return StageResult(lines=lines, metrics={"k2_mesh_gib": k2.total / gib})


def _torchrun(args: list[str], nproc: int, env: dict[str, str]) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "k25mini.train", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    recs = []
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def stage_dist(ctx: StageContext) -> StageResult:
    steps = pick(smoke=4, cpu=20, gpu=50, scale=ctx.scale)
    more = pick(smoke=2, cpu=5, gpu=10, scale=ctx.scale)
    if ctx.mode == "reuse":
        return StageResult(lines={"skipped": "reuse mode trains nothing; this stage has no committed result"})
    out = Path(ctx.runs_dir) / "ch09_dist"
    if out.exists():  # ~1 min of training: always from scratch, so every run prints its own losses
        import shutil

        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--preset", "nano", "--seq", "32", "--batch", "8", "--threads", "1", "--out", str(out)]
    t0 = time.perf_counter()
    two = _torchrun([*common, "--dp", "1", "--ep", "2", "--steps", str(steps), "--resume"], 2, env)
    t1 = time.perf_counter()
    one = _torchrun([*common, "--dp", "1", "--ep", "1", "--steps", str(steps + more), "--resume"], 1, env)
    t2 = time.perf_counter()
    loss2 = [r["loss"] for r in two if "loss" in r]
    loss1 = [r["loss"] for r in one if "loss" in r]
    if not loss2 or not loss1:
        raise RuntimeError("the training runs printed no loss records")
    return StageResult(lines={
        "2 processes, dp 1 × ep 2": f"{len(loss2)} steps, loss {loss2[0]:.3f} -> {loss2[-1]:.3f} ({t1 - t0:.0f} s)",
        "resumed on 1 process from the 2-process checkpoint": f"{len(loss1)} more steps, loss -> {loss1[-1]:.3f} "
                                                             f"({t2 - t1:.0f} s)",
    }, metrics={"loss_first": loss2[0], "loss_2proc": loss2[-1], "loss_resumed": loss1[-1]})


def speedrun_stages(scale: str) -> list[Stage]:
    return [Stage("plan", "09 memory plan of the full K2.5 (no memory allocated)", stage_plan),
            Stage("dist", "09 FSDP2 × expert parallel on 2 processes, resumed on 1", stage_dist)]


def card(metrics: dict[str, dict], results_dir, scale: str) -> list[dict[str, str]]:
    """No report-card row: chapter 09's stages check machinery, not a finding of the paper."""
    return []
