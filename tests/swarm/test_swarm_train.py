"""The swarm's SFT and RL steps train through the shared optimiser builder, so the MoE router bias updates."""

from __future__ import annotations

import random

import pytest
import torch

from k25mini.model.moe import MoELayer, update_moe_biases
from k25mini.swarm.train import RLConfig, _pad_batch, build_lm, rl_step, sft, swarm_optimizer


def _router_bias(model: torch.nn.Module) -> torch.Tensor:
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    assert len(layers) == 1
    return layers[0].router.e_score_correction_bias.clone()


def _pairs(n: int = 6) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(1, 200, (5,), generator=g).tolist(), torch.randint(1, 200, (4,), generator=g).tolist())
            for _ in range(n)]


def test_sft_step_updates_the_router_bias():
    m = build_lm(0, hidden=32)
    before = _router_bias(m)
    assert torch.count_nonzero(before) == 0
    rng_before = torch.get_rng_state()
    logged: list[tuple[int, float]] = []
    losses = sft(m, _pairs(), steps=1, batch_size=4, seed=0, log=lambda s, v: logged.append((s, v)))
    assert len(losses) == 1 and logged == [(0, losses[0])]
    assert not torch.equal(before, _router_bias(m))
    assert torch.equal(torch.get_rng_state(), rng_before)  # sft leaves the global RNG as it found it
    assert sft(m, _pairs(), steps=0) == []
    with pytest.raises(ValueError, match="pairs"):
        sft(m, [], steps=1)
    with pytest.raises(ValueError, match="steps"):
        sft(m, _pairs(), steps=-1)


def test_sft_keeps_the_old_arithmetic_plus_the_bias_update():
    """sft (Trainer + build_optimizer) == the old hand-written AdamW loop with the bias update added (and the grad
    norm summed in the optimiser's parameter order, as the Trainer does: the only other arithmetic change)."""
    pairs, steps, bs, lr, seed = _pairs(), 3, 4, 3e-3, 1
    new = build_lm(0, hidden=32)
    losses = sft(new, pairs, steps=steps, batch_size=bs, lr=lr, seed=seed)

    old = build_lm(0, hidden=32)
    rng = random.Random(seed)
    opt = swarm_optimizer(old, lr)
    opt.moe_bias_update.remove()  # the explicit call below instead
    params = [p for g in opt.param_groups for p in g["params"]]
    old.train()
    ref = []
    for _ in range(steps):
        ids, comp = _pad_batch([pairs[rng.randrange(len(pairs))] for _ in range(bs)])
        loss = old.loss(ids, ids.masked_fill(~comp, -100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_moe_biases(old)
        ref.append(float(loss.detach()))
    assert losses == ref
    assert new.state_dict().keys() == old.state_dict().keys()
    for (k, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_rl_step_updates_the_router_bias():
    m = build_lm(0, hidden=32)
    opt = swarm_optimizer(m, lr=1e-2)
    assert opt.moe_bias_update is not None
    g = torch.Generator().manual_seed(5)
    seqs = []
    for i, (p, c) in enumerate(_pairs(4)):
        seqs.append((p, c, (-5.0 - torch.rand(len(c), generator=g)).tolist(), 1.0 if i % 2 else -1.0))
    before = _router_bias(m)
    stats = rl_step(m, opt, seqs, RLConfig(updates_per_iter=1))
    assert set(stats) >= {"loss", "masked_frac"}
    assert opt.moe_bias_update.calls == 1
    assert not torch.equal(before, _router_bias(m))
