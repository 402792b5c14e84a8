"""Expert parallelism: 2 gloo processes on CPU, all-to-all dispatch, compared with the single-process layer.

Each rank owns E/2 experts and half of the sequences. The single-process reference runs the full batch in every
rank (cheap at these sizes). Checked: outputs, d x, expert-weight grads (the owner's slice of the reference
grads: the reverse all-to-all brings every rank's contribution home), replicated grads (router, shared expert)
after an all-reduce, the aux loss, and the aux-loss-free bias update from all-reduced loads.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from k25mini.config import nano
from k25mini.model.moe import MoELayer, apply_expert_parallel, update_moe_biases

WORLD = 2
ATOL = 1e-5  # fp32; EP reorders nothing inside a GEMM row, only which process computes it


def _cfg():
    return dataclasses.replace(nano().text, hidden_size=16, moe_intermediate_size=8, n_routed_experts=6,
                               num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=2.0,
                               aux_loss_alpha=0.01, bias_update_rate=0.01)


def _check(rank: int, backend: str, skew: bool) -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    layer = MoELayer(cfg, backend=backend)
    if skew:  # every token picks experts 0 and 1, both on rank 0: rank 1 receives and sends nothing back
        with torch.no_grad():
            layer.router.e_score_correction_bias[:2] = 10.0
    B, S, D = WORLD * 2, 3, cfg.hidden_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, S, D, generator=g)
    up = torch.randn(B, S, D, generator=g)

    ref = copy.deepcopy(layer)
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    ((yr * up).sum() + ref.last_aux_loss).backward()

    ep = apply_expert_parallel(copy.deepcopy(layer))
    lo, hi = ep.expert_range
    assert (lo, hi) == (rank * 3, rank * 3 + 3) and ep.experts.w_gate_up.shape[0] == 3
    mine = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    xl = x[mine].clone().requires_grad_()
    yl = ep(xl)
    # local aux loss is the mean over this rank's sequences: / WORLD makes the sum over ranks the global mean
    ((yl * up[mine]).sum() + ep.last_aux_loss / WORLD).backward()

    torch.testing.assert_close(yl, yr[mine].detach(), rtol=0, atol=ATOL)
    torch.testing.assert_close(xl.grad, xr.grad[mine], rtol=0, atol=ATOL)
    aux = ep.last_aux_loss.detach().clone() / WORLD
    dist.all_reduce(aux)
    torch.testing.assert_close(aux, ref.last_aux_loss.detach(), rtol=0, atol=1e-7)
    for name in ("w_gate_up", "w_down"):
        got = getattr(ep.experts, name).grad
        want = getattr(ref.experts, name).grad[lo:hi]
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m, n=name: f"rank {rank} {n}: {m}")
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for n, p in ep.named_parameters():
        if n.startswith("experts."):
            continue
        gsum = p.grad.clone()
        dist.all_reduce(gsum)
        torch.testing.assert_close(gsum, ref_grads[n], rtol=0, atol=ATOL, msg=lambda m, n=n: f"rank {rank} {n}: {m}")

    update_moe_biases(ep)  # all-reduces the loads over the expert-parallel group
    ref.update_bias()
    torch.testing.assert_close(ep.router.e_score_correction_bias, ref.router.e_score_correction_bias, rtol=0, atol=0)


def _worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for backend in ("torch", "eager"):
            for skew in (False, True):
                _check(rank, backend, skew)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_expert_parallel_matches_single_process():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "pg_init"),), nprocs=WORLD, join=True)
