"""Data parallel (2 gloo processes, CPU): the Trainer's optimiser hook sums expert loads over the world, so every
replica moves its router bias alike even though each rank routes its own half of the batch."""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))  # the helpers' module, run alone too
        from test_moe_bias_hook import _batch_at, _biases, _cfg, _lm, _loss

        from k25mini.train import Trainer

        m = _lm()  # replicated weights; no FSDP, so only the bias is kept in sync by the hook
        tr = Trainer(m, _loss, _batch_at, _cfg(steps=2, grad_accum=2))
        assert tr.optimizer.moe_bias_update.group is dist.group.WORLD
        tr.fit()
        torch.save(_biases(m), os.path.join(out_dir, f"bias{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_data_parallel_trainer_keeps_router_biases_identical():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "pg_init"), d), nprocs=WORLD, join=True)
        b0, b1 = (torch.load(os.path.join(d, f"bias{r}.pt")) for r in range(WORLD))
    assert all(torch.count_nonzero(b) > 0 for b in b0)
    assert all(torch.equal(x, y) for x, y in zip(b0, b1))
