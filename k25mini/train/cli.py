"""The argument parser of ``python -m k25mini.train`` (shared by the entry point and :func:`k25mini.train.job.launch`,
which parses a job's arguments exactly as torchrun's processes will)."""

from __future__ import annotations

import argparse

__all__ = ["build_parser"]

DESCRIPTION = "the one training entry point (one process, or under torchrun)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m k25mini.train", description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset (k25mini.config.preset): nano or small")
    p.add_argument("--model", default="k25", choices=("k25", "text"),
                   help="k25: vision tower + language model (the tower is sharded, the toy data is text); text: LM")
    p.add_argument("--dp", type=int, default=None, help="data-parallel shards (default: world size / ep)")
    p.add_argument("--ep", type=int, default=None, help="expert-parallel size (default: the world size)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences), split over all processes")
    p.add_argument("--seq", type=int, default=64, help="sequence length")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps (then cosine to 0.1 x lr)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip (<= 0: off)")
    p.add_argument("--qk-clip-tau", type=float, default=100.0, help="QK-Clip threshold (<= 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each decoder layer in backward")
    p.add_argument("--out", default=None, help="output dir: metrics.jsonl and checkpoints/ (default: nothing saved)")
    p.add_argument("--ckpt-every", type=int, default=0, help="DCP checkpoint every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--safetensors", action="store_true", help="also convert the final checkpoint to one .safetensors")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--job", default=None,
                   help="run an experiment's training job: a builder 'package.module:function' (k25mini.train.job)")
    p.add_argument("--job-args", default="{}", help="the job builder's keyword arguments, as a JSON object")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0: leave as is; torchrun sets OMP_NUM_THREADS=1)")
    return p


