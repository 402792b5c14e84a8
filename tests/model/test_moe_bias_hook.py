"""The MoE router-bias update as an optimiser step post-hook: attached by build_optimizer, idempotent, used by
the Trainer (same trajectory as the old explicit call after ``optimizer.step()``), frozen layers untouched."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from k25mini.config import TextConfig, nano
from k25mini.model import K2ForCausalLM
from k25mini.model.moe import MoEBiasUpdate, MoELayer, attach_moe_bias_update, has_moe_layers, update_moe_biases
from k25mini.optim import build_optimizer
from k25mini.train import TrainConfig, Trainer
from k25mini.train.lr_schedule import apply_lr, lr_factor, remember_base_lr
from k25mini.train.rng import seed_everything
from k25mini.train.toy import TinyCharMLP


def _text(**kw) -> TextConfig:
    base = dict(num_hidden_layers=3, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                q_lora_rank=16, kv_lora_rank=16, max_position_embeddings=64, bias_update_rate=0.01)
    base.update(kw)
    return dataclasses.replace(nano().text, **base)


def _lm(seed: int = 0, **kw) -> K2ForCausalLM:
    torch.manual_seed(seed)
    return K2ForCausalLM(_text(**kw))


def _biases(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.router.e_score_correction_bias.clone() for m in model.modules() if isinstance(m, MoELayer)]


def _batch_at(index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + index)
    return torch.randint(0, 64, (2, 12), generator=g)


def _loss(model: torch.nn.Module, ids: torch.Tensor):
    lm = model.loss(ids, ids)
    return lm + model.moe_aux_loss(), {"lm": lm.detach()}


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=4, lr=3e-3, grad_accum=2, grad_clip=0.5, warmup_steps=1, decay="cosine", log_every=1,
                progress=False, bf16=False, optimizer="adamw", weight_decay=0.1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _old_loop(model: torch.nn.Module, cfg: TrainConfig, bias_update: bool = True) -> list[float]:
    """The Trainer's step as it was before the hook: optimizer.step(), then model.update_moe_bias()."""
    seed_everything(cfg.seed)
    opt = build_optimizer(model, kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          adamw_lr=cfg.adamw_lr, betas=cfg.betas, eps=cfg.eps, qk_clip_tau=cfg.qk_clip_tau)
    opt.moe_bias_update.remove()  # back to the explicit call
    assert opt.moe_bias_update is None
    remember_base_lr(opt)
    losses = []
    for step in range(cfg.steps):
        model.train()
        apply_lr(opt, lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay))
        total = torch.zeros((), dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            loss, _ = _loss(model, _batch_at(step * cfg.grad_accum + micro))
            (loss / cfg.grad_accum).backward()
            total = total + loss.detach().to(torch.float64)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip is not None else math.inf)
        opt.step()
        if bias_update:
            model.update_moe_bias()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total / cfg.grad_accum))
    return losses


# ----------------------------------------------------------------------------- attach / build_optimizer
def test_build_optimizer_attaches_the_hook_once_per_step():
    m = _lm()
    opt = build_optimizer(m, kind="adamw", lr=1e-3)
    hook = opt.moe_bias_update
    assert isinstance(hook, MoEBiasUpdate) and hook.model is m and hook.group is None
    assert attach_moe_bias_update(opt, m) is hook  # idempotent
    assert len(opt._optimizer_step_post_hooks) == 1

    ref = _lm()
    ids = _batch_at(0)
    for model in (m, ref):
        model.train()
        model.loss(ids, ids).backward()
    opt.step()  # m: bias updated by the hook, exactly once
    update_moe_biases(ref)  # ref: one explicit update from the same loads
    assert hook.calls == 1
    got, want = _biases(m), _biases(ref)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert torch.count_nonzero(a) > 0
        assert torch.equal(a, b)
    assert all(int(layer.load_accum.sum()) == 0 for layer in m.modules() if isinstance(layer, MoELayer))


@pytest.mark.parametrize("kind", ["adamw", "muon", "muonclip"])
def test_every_kind_gets_the_hook_after_qk_clip(kind):
    m = _lm()
    opt = build_optimizer(m, kind=kind, lr=1e-3)
    hooks = list(opt._optimizer_step_post_hooks.values())
    assert hooks[-1] == opt.moe_bias_update._hook
    assert len(hooks) == (2 if kind == "muonclip" else 1)


def test_no_moe_layers_no_hook():
    m = TinyCharMLP()
    assert not has_moe_layers(m)
    opt = build_optimizer(m, kind="adamw", lr=1e-3)
    assert opt.moe_bias_update is None and len(opt._optimizer_step_post_hooks) == 0
    assert attach_moe_bias_update(torch.optim.SGD(m.parameters(), lr=0.1), m) is None
    dense = _lm(first_k_dense_replace=3)  # every layer dense
    assert build_optimizer(dense, kind="adamw", lr=1e-3).moe_bias_update is None


def test_attach_rejects_bad_arguments_and_conflicts():
    m, other = _lm(), _lm(1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer must be"):
        attach_moe_bias_update(object(), m)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model must be"):
        attach_moe_bias_update(opt, "model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group must be"):
        attach_moe_bias_update(opt, m, group="world")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="moe_group must be"):
        build_optimizer(m, kind="adamw", moe_group="world")  # type: ignore[arg-type]
    hook = attach_moe_bias_update(opt, m)
    assert hook is not None
    with pytest.raises(ValueError, match="another model"):
        attach_moe_bias_update(opt, other)
    hook.remove()
    assert opt.moe_bias_update is None and len(opt._optimizer_step_post_hooks) == 0
    assert attach_moe_bias_update(opt, other) is not None  # after remove() the optimiser is free again


# ----------------------------------------------------------------------------- Trainer
@pytest.mark.parametrize("kind", ["adamw", "muonclip"])
def test_trainer_trajectory_identical_to_the_old_explicit_call(kind):
    cfg = _cfg(optimizer=kind)
    old = _lm()
    old_losses = _old_loop(old, cfg)

    new = _lm()
    tr = Trainer(new, _loss, _batch_at, cfg)
    assert tr.optimizer.moe_bias_update is not None
    assert len(tr.optimizer._optimizer_step_post_hooks) == (2 if kind == "muonclip" else 1)  # not attached twice
    tr.fit()
    assert [r["loss"] for r in tr.history] == old_losses
    assert tr.optimizer.moe_bias_update.calls == cfg.steps
    assert new.state_dict().keys() == old.state_dict().keys()
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    new_b, old_b = _biases(new), _biases(old)
    assert len(new_b) == 2 and all(torch.count_nonzero(b) > 0 for b in new_b)
    assert all(torch.equal(a, b) for a, b in zip(new_b, old_b))

    none = _lm()  # the check can fail: without the update the biases (and the trajectory) differ
    assert _old_loop(none, cfg, bias_update=False) != old_losses
    assert all(torch.count_nonzero(b) == 0 for b in _biases(none))


def test_trainer_attaches_to_a_user_optimizer_and_runs_it_before_post_step():
    calls: list[str] = []

    class Logged(MoELayer):
        def update_bias(self, group=None):
            calls.append("bias")
            super().update_bias(group)

    m = _lm(num_hidden_layers=2)
    layer = m.model.layers[1].mlp
    layer.__class__ = Logged
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda *a: calls.append("opt"))
    tr = Trainer(m, _loss, _batch_at, _cfg(steps=3, grad_accum=1), optimizer=opt,
                 post_step=[lambda t: calls.append(f"post@{t.step}")])
    assert opt.moe_bias_update is not None and opt.moe_bias_update.model is m
    tr.fit()
    assert calls == ["opt", "bias", "post@0", "opt", "bias", "post@1", "opt", "bias", "post@2"]
    assert torch.count_nonzero(layer.router.e_score_correction_bias) > 0


def test_trainer_keeps_the_bias_of_a_frozen_moe_layer():
    m = _lm()
    frozen, trained = [x for x in m.modules() if isinstance(x, MoELayer)]
    frozen.requires_grad_(False)  # a frozen MoE layer keeps its selection bias
    tr = Trainer(m, _loss, _batch_at, _cfg(steps=2))
    tr.fit()
    assert torch.count_nonzero(frozen.router.e_score_correction_bias) == 0 and int(frozen.load_accum.sum()) == 0
    assert torch.count_nonzero(trained.router.e_score_correction_bias) > 0
