"""Seam: notebook 09's from-scratch FSDP collectives, expert-parallel dispatch, state bytes and DEP step agree with
PyTorch (one process, and FSDP2 under a fake process group) and with k25mini.plan / k25mini.model / k25mini.train.dep.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from k25mini.config import k25, nano, small
from k25mini.model.moe import MoELayer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.plan import Mesh, param_specs, plan_memory
from k25mini.train.dep import balance_media, coupled_step, decoupled_step
from seam import load_notebook_defs

NB = "notebooks/09_scaling_out.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.mark.parametrize("rows,world", [(5, 2), (8, 2), (7, 3), (1, 4), (12, 4)])
def test_shard_gather_reduce_scatter(nb, rows, world):
    t = torch.randn(rows, 3, generator=torch.Generator().manual_seed(rows))
    shards = nb.shard_dim0(t, world)
    assert len(shards) == world and all(s.shape[0] == -(-rows // world) for s in shards)
    # the real rows are torch.chunk's (DTensor Shard(0)) pieces; the rest is zero padding
    for s, c in zip(shards, list(t.chunk(world)) + [t[:0]] * world):
        torch.testing.assert_close(s[:c.shape[0]], c, rtol=0, atol=0)
        assert not s[c.shape[0]:].any()
    torch.testing.assert_close(nb.all_gather_dim0(shards, rows), t, rtol=0, atol=0)
    grads = [torch.randn(rows, 3, generator=torch.Generator().manual_seed(100 + r)) for r in range(world)]
    mean = torch.stack(grads).mean(0)
    torch.testing.assert_close(nb.all_gather_dim0(nb.reduce_scatter_mean(grads), rows), mean)


def test_fsdp_step_matches_one_process(nb):
    model = nb.make_mlp()
    x = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    new, grads, losses = nb.fsdp_step_by_hand(model, [(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)], 0.05)
    ref = nb.make_mlp()
    loss = F.mse_loss(ref(x), y)
    loss.backward()
    torch.testing.assert_close(sum(losses) / 3, loss.detach())
    for n, p in ref.named_parameters():
        torch.testing.assert_close(nb.all_gather_dim0(grads[n], p.shape[0]), p.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(nb.all_gather_dim0(new[n], p.shape[0]), p.detach() - 0.05 * p.grad,
                                   rtol=1e-12, atol=1e-14)


def test_shards_match_fully_shard_under_a_fake_process_group(nb):
    """FSDP2 on a fake 2-rank group (no processes): rank 0's local shapes are the notebook's shards' real rows."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        model = nb.make_mlp()
        want = {n: nb.shard_dim0(p.detach(), 2)[0] for n, p in model.named_parameters()}
        fully_shard(model)
        for n, p in model.named_parameters():
            local = p.to_local()
            torch.testing.assert_close(local, want[n][:local.shape[0]], rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,skew", [(2, False), (2, True), (4, False), (1, False)])
def test_dispatch_matches_package_experts(nb, world, skew):
    cfg = dataclasses.replace(nano().text, hidden_size=8, moe_intermediate_size=4, n_routed_experts=4,
                              num_experts_per_tok=2, n_shared_experts=0)
    torch.manual_seed(0)
    moe = MoELayer(cfg, backend="torch")
    if skew:  # every token to experts 0 and 1: the other ranks receive nothing
        with torch.no_grad():
            moe.router.e_score_correction_bias[:2] = 10.0
    xs = list(torch.randn(world, 6, 8, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        routes = [moe.router(x) for x in xs]
        ours = nb.dispatch_by_hand(xs, [r.topk_ids for r in routes], [r.topk_weights for r in routes],
                                   moe.experts.w_gate_up, moe.experts.w_down)
        for x, r, o in zip(xs, routes, ours):
            torch.testing.assert_close(o, moe.experts(x, r.topk_ids, r.topk_weights), rtol=1e-5, atol=1e-6)
    counts = torch.stack([nb.send_counts(r.topk_ids, 4, world) for r in routes])
    assert int(counts.sum()) == world * 6 * 2
    inbox = nb.all_to_all([[(src, dst) for dst in range(world)] for src in range(world)])
    assert all(inbox[dst][src] == (src, dst) for src in range(world) for dst in range(world))


@pytest.mark.parametrize("cfg,dp,ep,opt", [(k25(), 256, 64, "muon"), (k25(), 320, 64, "muon"),
                                           (k25(), 64, 8, "adamw"), (small(), 6, 2, "muon"), (nano(), 4, 1, "adamw")])
def test_fsdp_state_bytes_match_planner(nb, cfg, dp, ep, opt):
    plan = plan_memory(cfg, Mesh(dp=dp, ep=ep, pp=1, sharding="fsdp"), optimizer=opt)
    mine = nb.fsdp_states_by_hand(param_specs(cfg), dp, ep, opt)
    for got, want in zip(mine.values(), (plan.params, plan.grads, plan.master, plan.optimizer)):
        assert got == pytest.approx(want, rel=1e-12)


def test_dep_step_by_hand_matches_coupled_and_package(nb):
    torch.manual_seed(0)
    model = K25ForConditionalGeneration(nano()).train()
    ids, labels, media = nb.dep_batch(model, seed=1)
    a, b, c = (copy.deepcopy(model) for _ in range(3))
    la = coupled_step(a, ids, labels, media)
    lb = nb.dep_step_by_hand(b, ids, labels, media)
    decoupled_step(c, ids, labels, media, vision_ranks=1)
    torch.testing.assert_close(lb, la)
    ga, gb, gc = nb.grads_of(a), nb.grads_of(b), nb.grads_of(c)
    assert ga.keys() == gb.keys() == gc.keys()
    assert any(n.startswith("vision_tower") for n in ga)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gb[n], gc[n], rtol=0, atol=0)  # the same three phases as the package


def test_balance_and_plan_helpers(nb):
    shares = balance_media([5.0, 3.0, 3.0, 2.0, 2.0, 1.0], 3)
    assert sorted(i for s in shares for i in s) == list(range(6))
    p = nb.PLANS[(512, 80, "fsdp")][0]
    assert sum(nb.breakdown(p)) * 2**30 == pytest.approx(p.total + p.host, rel=1e-12)
    assert nb.plan_for(64, 80, "fsdp")[1] is False and nb.plan_for(512, 80, "fsdp")[1] is True


@pytest.mark.distributed
def test_gloo_script_runs_and_matches(nb, tmp_path):
    """The notebook's two-process script (FSDP2 + AllToAllDispatcher on gloo) against its by-hand simulation."""
    out = nb.run_on_two_ranks(nb.GLOO_SCRIPT, tmp_path)
    new, grads, _ = nb.fsdp_step_by_hand(nb.make_mlp(), [(nb.X[:4], nb.Y[:4]), (nb.X[4:], nb.Y[4:])], nb.LR)
    for r in range(2):
        for n, t in out[r]["param"].items():
            torch.testing.assert_close(new[n][r][:t.shape[0]], t, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(grads[n][r][:t.shape[0]], out[r]["grad"][n], rtol=1e-12, atol=1e-14)
        assert out[r]["ep"].shape == (5, 8)
