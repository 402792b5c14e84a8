"""``python -m k25mini.train``: the one training entry point, on one process or under torchrun.

    torchrun --standalone --nproc-per-node 2 -m k25mini.train --preset small --dp 1 --ep 2 --steps 20 --out runs/x

Builds a 2-D mesh (dp x ep, :func:`k25mini.train.parallel.build_mesh`), the model on the meta device, experts
parallel over ep, FSDP2 over the rest, MuonClip + QK-Clip, trains on the toy sequence task
(:func:`k25mini.train.parallel.toy_lm_batch`), logs ``metrics.jsonl`` and writes DCP checkpoints to
``out/checkpoints/step_XXXXXXXX`` (``--resume`` continues from the newest, at any world size). gloo on CPU, NCCL on
CUDA. Without torchrun it trains in one process (dp = ep = 1).

The experiments' training stages run through it too, as jobs (:mod:`k25mini.train.job`)::

    torchrun --standalone --nproc-per-node 2 -m k25mini.train --job k25mini.experiments.ch05_fusion.stages:stage_job \
        --job-args '{"cfg": {...}, "stage": "A", "out": "runs/..."}'

``--job`` names a builder (``package.module:function``) that returns the model, loss, data and TrainConfig;
``--job-args`` is its JSON keyword arguments. A job is data parallel over all processes (FSDP2, ep = 1); the toy
options below (preset, steps, batch, ...) do not apply to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from k25mini.train.cli import build_parser as _parser


def _check(p: argparse.ArgumentParser, a: argparse.Namespace, world: int) -> tuple[int, int]:
    if a.preset not in ("nano", "small"):  # k2 / k25 build on meta but would not fit in memory here
        p.error(f"--preset must be 'nano' or 'small', got {a.preset!r}")
    for name in ("steps", "batch", "seq", "log_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("warmup", "ckpt_every", "threads"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if not a.lr > 0:
        p.error(f"--lr must be > 0, got {a.lr}")
    ep = a.ep if a.ep is not None else (world if a.dp is None else world // max(a.dp, 1))
    dp = a.dp if a.dp is not None else world // max(ep, 1)
    if dp < 1 or ep < 1 or dp * ep != world:
        p.error(f"--dp x --ep must equal the number of processes ({world}), got dp={dp} x ep={ep}")
    if a.batch % world:
        p.error(f"--batch ({a.batch}) must be divisible by the number of processes ({world})")
    if (a.resume or a.safetensors) and a.out is None:
        p.error("--resume and --safetensors need --out")
    return dp, ep


def _latest(root: Path) -> Path | None:
    found = sorted(d for d in root.glob("step_*") if (d / ".metadata").is_file())
    return found[-1] if found else None


def _main_job(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    """``--job``: build the named job and train it (data parallel over the launched processes)."""
    from k25mini.train.job import resolve_builder, run_job

    try:
        args = json.loads(a.job_args)
    except json.JSONDecodeError as e:
        p.error(f"--job-args must be a JSON object, got {a.job_args[:80]!r} ({e})")
    if not isinstance(args, dict):
        p.error(f"--job-args must be a JSON object, got {type(args).__name__}")
    if (a.ep or 1) > 1:
        p.error("--ep > 1 applies to the toy run only; a job is data parallel (ep = 1)")
    if a.threads < 0:
        p.error(f"--threads must be >= 0, got {a.threads}")
    try:
        resolve_builder(a.job)
    except ValueError as e:
        p.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    run = run_job(a.job, args)
    if run.world_size == 1 or dist.get_rank() == 0:
        print(json.dumps({"job": a.job, "world_size": run.world_size, "step": run.step, "resumed": run.resumed,
                          "out_dir": None if run.out_dir is None else str(run.out_dir)}), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from k25mini.config import preset
    from k25mini.train.dcp import dcp_to_safetensors, load_dcp, save_dcp
    from k25mini.train.distributed import init_distributed
    from k25mini.train.lr_schedule import lr_factor
    from k25mini.train.parallel import (
        build_mesh,
        build_parallel_model,
        build_parallel_optimizer,
        parallel_train_step,
        toy_lm_batch,
    )

    p = _parser()
    a = p.parse_args(argv)
    if a.job is not None:
        return _main_job(p, a)
    info = init_distributed()
    dp, ep = _check(p, a, info.world_size)
    if a.threads:
        torch.set_num_threads(a.threads)
    mesh = build_mesh(dp, ep, info.device.type) if info.world_size > 1 else None
    cfg = preset(a.preset)
    if a.model == "text":
        cfg = cfg.replace(vision=None, media_placeholder_token_id=None)
    model = build_parallel_model(cfg, mesh, kind=a.model, seed=a.seed,
                                 activation_checkpointing=a.activation_checkpointing, device=info.device)
    opt = build_parallel_optimizer(model, lr=a.lr, qk_clip_tau=a.qk_clip_tau if a.qk_clip_tau > 0 else None)
    out = Path(a.out) if a.out else None
    ckpts = out / "checkpoints" if out else None
    lead = info.rank == 0
    step = 0
    if a.resume:
        last = _latest(ckpts) if ckpts.is_dir() else None
        if last is not None:
            step = load_dcp(last, model, opt, mesh)["step"]
            if lead:
                print(f"resumed from {last} (step {step})", flush=True)
    if lead:
        from k25mini.config import count_params

        held = sum((p_.to_local() if hasattr(p_, "to_local") else p_).numel() for p_ in model.parameters())
        print(f"k25mini.train: preset={a.preset} model={a.model} world={info.world_size} mesh dp={dp} x ep={ep} "
              f"device={info.device} params={count_params(cfg).total:,} (rank 0 holds {held:,})", flush=True)
        if out:
            out.mkdir(parents=True, exist_ok=True)
    vocab = cfg.text.vocab_size
    t0 = time.perf_counter()
    while step < a.steps:
        lr_mult = lr_factor(step, a.steps, a.warmup, 0.1, "cosine")
        batch = toy_lm_batch(step, a.batch, a.seq, vocab)
        vals = parallel_train_step(model, opt, mesh, batch, lr_mult, a.grad_clip if a.grad_clip > 0 else None)
        step += 1
        rec = {"step": step, **vals, "lr": opt.param_groups[0]["lr"], "time_s": time.perf_counter() - t0,
               "muon_gathered_bytes": opt.gathered_bytes}
        if lead and (step % a.log_every == 0 or step == a.steps):
            print(json.dumps(rec), flush=True)
            if out:
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
        if ckpts is not None and ((a.ckpt_every and step % a.ckpt_every == 0) or step == a.steps):
            save_dcp(ckpts / f"step_{step:08d}", model, opt, mesh, step=step,
                     meta={"preset": a.preset, "model": a.model})
    if a.safetensors and lead:
        final = _latest(ckpts)
        dst = dcp_to_safetensors(final, final.with_suffix(".safetensors"))
        print(f"wrote {dst}", flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip interpreter finalisation: gloo's worker threads can abort it (see tests/distributed)
