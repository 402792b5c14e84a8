"""The training loop: config validation, LR schedule, grad accumulation/clipping, hooks, eval isolation, logs."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from k25mini.train import Callback, LivePlot, TrainConfig, Trainer, lr_factor, shard_batch
from k25mini.train.toy import TinyCharMLP, toy_batch_at, toy_loss


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=6, lr=1e-2, log_every=1, progress=False, grad_clip=None, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field,value",
    [("steps", 0), ("steps", 2.5), ("lr", 0.0), ("lr", float("nan")), ("min_lr_ratio", 1.5), ("warmup_steps", -1),
     ("grad_accum", 0), ("grad_clip", 0.0), ("optimizer", "sgd"), ("decay", "step"), ("betas", (0.9, 1.0)),
     ("keep_last", 0), ("log_every", -2), ("device", "tpu"), ("bf16", "yes"), ("weight_decay", -0.1),
     ("qk_clip_tau", 0), ("adamw_lr", -1.0), ("eps", 0.0), ("nonfinite", "ignore"), ("halt_on_nonfinite", 1)],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}"):
        TrainConfig(**{field: value})


def test_config_warmup_longer_than_run_and_dict_roundtrip(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=5, warmup_steps=6)
    c = TrainConfig(steps=7, betas=[0.8, 0.9], out_dir=tmp_path)  # Path and list accepted, normalised
    assert c.betas == (0.8, 0.9) and c.out_dir == str(tmp_path)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown fields"):
        TrainConfig.from_dict({"stepz": 3})


# ----------------------------------------------------------------------------- schedule
def test_lr_factor_warmup_then_cosine_to_min():
    steps, warm, lo = 22, 5, 0.1  # 16 decay intervals: the middle one is exact
    f = [lr_factor(s, steps, warm, lo, "cosine") for s in range(steps)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert f[warm] == 1.0 and f[-1] == pytest.approx(lo, abs=1e-15)
    mid = warm + 8  # half way through the decay: cos(pi/2) = 0
    assert f[mid] == pytest.approx((1 + lo) / 2)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1 :]))
    lin = [lr_factor(s, steps, warm, lo, "linear") for s in range(warm, steps)]
    assert lin == pytest.approx([1 - (1 - lo) * i / (steps - warm - 1) for i in range(steps - warm)])
    assert {lr_factor(s, steps, warm, lo, "constant") for s in range(warm, steps)} == {1.0}
    assert lr_factor(0, 1, 0, 0.3) == 1.0  # a lone post-warmup step stays at the peak (no 0/0)
    assert lr_factor(3, 4, 3, 0.3) == 1.0
    with pytest.raises(ValueError, match="decay"):
        lr_factor(7, steps, warm, lo, "poly")


def test_schedule_scales_every_group_keeping_ratios():
    torch.manual_seed(0)
    model = TinyCharMLP(dropout=0.0)
    opt = torch.optim.AdamW([{"params": model.embed.parameters(), "lr": 4e-3},
                             {"params": model.blocks.parameters(), "lr": 1e-3}])
    seen: list[tuple[float, float]] = []
    cfg = _cfg(steps=9, warmup_steps=3, min_lr_ratio=0.2)
    tr = Trainer(model, toy_loss, toy_batch_at, cfg, optimizer=opt,
                 post_step=[lambda t: seen.append(tuple(g["lr"] for g in t.optimizer.param_groups))])
    tr.fit()
    for s, (a, b) in enumerate(seen):
        f = lr_factor(s, 9, 3, 0.2)
        assert a == pytest.approx(4e-3 * f, rel=1e-12) and b == pytest.approx(1e-3 * f, rel=1e-12)
    assert [r["lr"] for r in tr.history] == [x[0] for x in seen]


# ----------------------------------------------------------------------------- the step itself
@pytest.mark.parametrize("optimizer,lr", [("adamw", 1e-2), ("muon", 3e-2)])
def test_training_learns_the_toy_task(optimizer, lr):
    torch.manual_seed(0)
    tr = Trainer(TinyCharMLP(), toy_loss, toy_batch_at, _cfg(steps=80, log_every=20, optimizer=optimizer, lr=lr,
                                                               warmup_steps=5, grad_clip=1.0))
    tr.fit()
    first, last = tr.history[0], tr.history[-1]
    assert last["loss"] < 0.7 * first["loss"] and last["acc"] > first["acc"] + 0.2, (first, last)


def test_grad_accum_equals_one_big_batch():
    """2 micro-batches of 4 with loss/2 == one batch of 8 (float64, no dropout): same weights to 1e-12."""
    def big(i):
        return toy_batch_at(i, batch=8)

    def half(i):
        b = big(i // 2)
        return {k: v[(i % 2) * 4 : (i % 2 + 1) * 4] for k, v in b.items()}

    out = []
    for data, accum in ((big, 1), (half, 2)):
        torch.manual_seed(0)
        m = TinyCharMLP(dropout=0.0).double()
        Trainer(m, toy_loss, data, _cfg(grad_accum=accum, grad_clip=0.5, weight_decay=0.1)).fit()
        out.append(m)
    for a, b in zip(out[0].parameters(), out[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grad_clip_applied_and_prenorm_logged():
    torch.manual_seed(0)
    model = TinyCharMLP(dropout=0.0)
    post_norms = []

    def norm_after_clip(t):
        post_norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in t.model.parameters())))

    tr = Trainer(model, toy_loss, toy_batch_at, _cfg(grad_clip=1e-3), post_step=[norm_after_clip])
    tr.fit()
    pre = [r["grad_norm"] for r in tr.history]
    assert all(n > 1e-3 for n in pre)  # the toy's gradients are far larger than the clip
    assert post_norms == pytest.approx([1e-3] * len(pre), rel=1e-4)


def test_post_step_hooks_run_after_the_optimizer_step_hooks():
    # the MoE bias update is one of those step hooks: see tests/model/test_moe_bias_hook.py
    calls: list[str] = []
    torch.manual_seed(0)
    model = TinyCharMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda *a: calls.append("opt"))
    tr = Trainer(model, toy_loss, toy_batch_at, _cfg(steps=3), optimizer=opt,
                 post_step=[lambda t: calls.append(f"post@{t.step}")])
    tr.fit()
    assert calls == ["opt", "post@0", "opt", "post@1", "opt", "post@2"]


def test_eval_does_not_change_the_trajectory(tmp_path):
    def eval_fn(model):
        torch.rand(5)  # an eval that draws random numbers (e.g. sampling) ...
        assert not model.training and not torch.is_grad_enabled()
        return {"val": float(model.embed.weight.sum()), "note": "text is dropped"}

    ms = []
    for ev in (None, eval_fn):
        torch.manual_seed(0)
        m = TinyCharMLP(dropout=0.3)
        tr = Trainer(m, toy_loss, toy_batch_at, _cfg(eval_every=2, out_dir=str(tmp_path / str(ev is None))),
                     eval_fn=ev)
        tr.fit()
        assert m.training
        ms.append((m, tr))
    for a, b in zip(ms[0][0].parameters(), ms[1][0].parameters()):
        assert torch.equal(a, b)  # ... must not shift the training RNG stream
    evals = [r for r in ms[1][1].history if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6] and set(evals[0]) == {"step", "split", "val"}


def test_jsonl_one_line_per_log_step_averaged(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(steps=7, log_every=3, out_dir=str(tmp_path))
    per_step = []
    tr = Trainer(TinyCharMLP(), toy_loss, toy_batch_at, cfg)
    while tr.step < cfg.steps:
        per_step.append(tr.train_step()["loss"])
    torch.manual_seed(0)
    tr2 = Trainer(TinyCharMLP(), toy_loss, toy_batch_at, cfg)
    tr2.fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["step"] for r in recs] == [3, 6, 7]  # every 3 steps and the last
    want = [sum(per_step[0:3]) / 3, sum(per_step[3:6]) / 3, per_step[6]]
    assert [r["loss"] for r in recs] == pytest.approx(want, rel=1e-12)
    assert {"loss", "acc", "grad_norm", "lr", "time_s", "steps_per_s", "skipped"} <= set(recs[0])
    assert recs == tr2.history


def test_nonfinite_loss_halts_without_touching_weights():
    def bad_loss(model, batch):
        loss, m = toy_loss(model, batch)
        return loss * float("nan"), m

    torch.manual_seed(0)
    model = TinyCharMLP()
    before = [p.detach().clone() for p in model.parameters()]
    tr = Trainer(model, bad_loss, toy_batch_at, _cfg())
    with pytest.raises(FloatingPointError, match="step 0"):
        tr.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        Trainer(model, bad_loss, toy_batch_at, _cfg()).fit()
    tr2 = Trainer(model, bad_loss, toy_batch_at, _cfg(halt_on_nonfinite=False, steps=2))
    with pytest.warns(RuntimeWarning, match="step skipped"):
        tr2.fit()
    assert [r["skipped"] for r in tr2.history] == [1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_nonfinite_gradient_names_its_parameter(value):
    """Injection: one parameter's gradient gets an inf / NaN at step 2 only. Halting names that parameter and its
    module; skipping leaves the weights of that step untouched and training goes on."""
    torch.manual_seed(0)
    model = TinyCharMLP()
    names = [n for n, _ in model.named_parameters()]
    target_name = names[-1]
    target = dict(model.named_parameters())[target_name]
    state = {"trainer": None}

    def poison(grad):
        return grad.clone().fill_(value) if state["trainer"].step == 2 else grad

    target.register_hook(poison)
    tr = Trainer(model, toy_loss, toy_batch_at, _cfg(steps=4))
    state["trainer"] = tr
    module = target_name.rsplit(".", 1)[0]
    with pytest.raises(FloatingPointError, match=rf"parameter '{target_name}' \(module '{module}'\) at step 2"):
        tr.fit()
    assert tr.step == 2  # steps 0 and 1 ran

    torch.manual_seed(0)
    model = TinyCharMLP()
    target = dict(model.named_parameters())[target_name]
    target.register_hook(poison)
    tr = Trainer(model, toy_loss, toy_batch_at, _cfg(steps=4, halt_on_nonfinite=False))
    state["trainer"] = tr
    flags = [tr.train_step()["skipped"] for _ in range(2)]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match=f"step 2: non-finite gradient in parameter '{target_name}'"):
        flags.append(tr.train_step()["skipped"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the poisoned step changed nothing
    flags.append(tr.train_step()["skipped"])
    assert flags == [0.0, 0.0, 1.0, 0.0]
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and training went on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_option_and_its_old_spelling():
    assert TrainConfig().nonfinite == "raise"
    assert TrainConfig(halt_on_nonfinite=False).nonfinite == "skip"
    c = TrainConfig(halt_on_nonfinite=True)
    assert c.nonfinite == "raise" and c.halt_on_nonfinite is None
    assert c.replace(nonfinite="skip").nonfinite == "skip"
    with pytest.raises(ValueError, match="halt_on_nonfinite"):
        TrainConfig(halt_on_nonfinite=True, nonfinite="skip")
    old = TrainConfig().to_dict()
    old.pop("nonfinite")
    old["halt_on_nonfinite"] = False  # a config saved in a checkpoint before the option existed
    assert TrainConfig.from_dict(old).nonfinite == "skip"


def _nan_loss_at(step_to_break: int, trainer_ref: list):
    def loss_fn(model, batch):
        loss, m = toy_loss(model, batch)
        if trainer_ref[0].step == step_to_break:
            loss = loss * float("nan")
        return loss, m

    return loss_fn


def _inf_grad_hook_at(step_to_break: int, trainer_ref: list):
    def hook(grad):
        if trainer_ref[0].step != step_to_break:
            return grad
        grad = grad.clone()
        grad.view(-1)[3] = float("inf")
        return grad

    return hook


@pytest.mark.parametrize("inject", ["loss", "grad"])
def test_nonfinite_raise_names_step_and_module_and_writes_no_checkpoint(tmp_path, inject):
    torch.manual_seed(0)
    model = TinyCharMLP()
    ref: list = [None]
    loss_fn = _nan_loss_at(3, ref) if inject == "loss" else toy_loss
    if inject == "grad":
        model.blocks[1].weight.register_hook(_inf_grad_hook_at(3, ref))
    tr = Trainer(model, loss_fn, toy_batch_at, _cfg(out_dir=str(tmp_path), ckpt_every=1, grad_clip=1.0))
    ref[0] = tr
    snapshots = {}
    tr.callbacks.append(type("Snap", (), {"on_checkpoint": lambda self, t, p: snapshots.update(
        {t.step: [q.detach().clone() for q in t.model.parameters()]})})())
    needle = r"non-finite loss at step 3" if inject == "loss" else (
        r"non-finite gradient in parameter 'blocks\.1\.weight' \(module 'blocks\.1'\) at step 3")
    with pytest.raises(FloatingPointError, match=needle):
        tr.fit()
    assert tr.step == 3
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts[-1] == "step_00000003"  # the last good step; nothing written for the failed one
    assert all(torch.equal(a, b) for a, b in zip(snapshots[3], model.parameters()))  # weights untouched
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("inject", ["loss", "grad"])
def test_nonfinite_skip_keeps_weights_that_step_and_continues(inject):
    torch.manual_seed(0)
    model = TinyCharMLP()
    ref: list = [None]
    loss_fn = _nan_loss_at(2, ref) if inject == "loss" else toy_loss
    if inject == "grad":
        model.embed.weight.register_hook(_inf_grad_hook_at(2, ref))
    tr = Trainer(model, loss_fn, toy_batch_at, _cfg(nonfinite="skip", steps=5, grad_clip=1.0))
    ref[0] = tr
    before = {}
    tr.post_step.append(lambda t: before.update({t.step: [p.detach().clone() for p in t.model.parameters()]}))
    tr.fit(until=2)
    after_2 = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="step 2: non-finite .*step skipped"):
        tr.fit(until=3)  # the poisoned step: skipped
    assert all(torch.equal(a, b) for a, b in zip(after_2, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    tr.fit()  # and training goes on
    assert tr.step == 5 and any(not torch.equal(a, b) for a, b in zip(after_2, model.parameters()))
    assert [r["skipped"] for r in tr.history] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["skipped_total"] for r in tr.history] == [0, 0, 1, 1, 1]
    assert tr.skipped_steps == 1 and sorted(before) == [0, 1, 3, 4]  # post_step hooks ran only on real steps


def test_bad_inputs_raise_value_errors():
    m = TinyCharMLP()
    with pytest.raises(ValueError, match="train_data"):
        Trainer(m, toy_loss, [1, 2, 3], _cfg())
    with pytest.raises(ValueError, match="config"):
        Trainer(m, toy_loss, toy_batch_at, {"steps": 3})
    with pytest.raises(ValueError, match="loss_fn"):
        Trainer(m, None, toy_batch_at, _cfg())
    with pytest.raises(ValueError, match="loss_fn"):
        Trainer(m, lambda mod, b: torch.tensor(1.0), toy_batch_at, _cfg()).fit()
    with pytest.raises(ValueError, match="metric 'v'"):
        Trainer(m, lambda mod, b: (toy_loss(mod, b)[0], {"v": torch.ones(3)}), toy_batch_at, _cfg()).fit()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Trainer(m, toy_loss, toy_batch_at, _cfg(device="cuda:0"))
    with pytest.raises(ValueError, match="eval_fn"):
        Trainer(m, toy_loss, toy_batch_at, _cfg()).evaluate()


def test_muonclip_on_model_without_mla_says_so():
    import k25mini.optim  # noqa: F401  (our own module: a broken import must fail here, not skip)

    with pytest.raises(ValueError, match="MLAttention"):
        Trainer(TinyCharMLP(), toy_loss, toy_batch_at, _cfg(optimizer="muonclip"))


def test_optim_import_failure_raises_no_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "k25mini.optim", None)  # import now raises ImportError
    for kind in ("adamw", "muon"):
        with pytest.raises(ImportError):
            Trainer(TinyCharMLP(), toy_loss, toy_batch_at, _cfg(optimizer=kind))


def test_shard_batch_slices_dim0():
    b = {"x": torch.arange(12).view(6, 2), "meta": "keep", "n": torch.tensor(3), "l": [torch.arange(6)]}
    s1 = shard_batch(b, 1, 3)
    assert torch.equal(s1["x"], torch.tensor([[4, 5], [6, 7]])) and s1["meta"] == "keep"
    assert torch.equal(s1["n"], torch.tensor(3)) and torch.equal(s1["l"][0], torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="divisible by world_size=4"):
        shard_batch(b, 0, 4)


# ----------------------------------------------------------------------------- callbacks / live plot
def test_callbacks_and_liveplot_headless(capsys):
    events = []

    class Rec(Callback):
        def on_train_begin(self, t):
            events.append("begin")

        def on_log(self, t, r):
            events.append(f"log{r['step']}")

        def on_eval(self, t, r):
            events.append(f"eval{r['step']}")

        def on_train_end(self, t):
            events.append("end")

    plot = LivePlot(eval_keys=["val"])
    assert plot.display is False  # not in a kernel
    torch.manual_seed(0)
    Trainer(TinyCharMLP(), toy_loss, toy_batch_at, _cfg(steps=4, log_every=2, eval_every=4),
            eval_fn=lambda m: {"val": 1.0, "other": 2.0}, callbacks=[Rec(), plot]).fit()
    assert events == ["begin", "log2", "log4", "eval4", "end"]
    assert [s for s, _ in plot.train["loss"]] == [2, 4] and plot.eval == {"val": [(4, 1.0)]}
    assert capsys.readouterr().out == ""  # nothing printed or displayed headless
    fig = plot.figure()
    assert len(fig.axes) == 2 and tuple(fig.get_size_inches()) == (9.0, 3.2)
    assert plot.png()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="every"):
        LivePlot(every=0)


def test_liveplot_updates_one_display_handle(monkeypatch):
    """In a notebook: one display(..., display_id=True), then in-place updates (no clear_output)."""
    import IPython.display as ipd  # installed with ipykernel (a runtime dependency): no skip

    shown, updates = [], []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    def fake_display(obj, display_id=False):
        shown.append((obj, display_id))
        return Handle()

    monkeypatch.setattr(ipd, "display", fake_display)
    plot = LivePlot(display=True)
    for s in (1, 2, 3):
        plot.on_log(None, {"step": s, "split": "train", "loss": 1.0 / s})
    assert len(shown) == 1 and shown[0][1] is True and len(updates) == 2
    assert isinstance(updates[-1], ipd.Image)


def test_no_autocast_on_cpu_even_with_bf16():
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        loss, m = toy_loss(model, batch)
        assert loss.dtype == torch.float32
        return loss, m

    Trainer(TinyCharMLP(), loss_fn, toy_batch_at, _cfg(steps=2, bf16=True)).fit()
    assert seen == [False, False]


def test_checkpoint_records_where_it_ran(tmp_path):
    torch.manual_seed(0)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        tr = Trainer(TinyCharMLP(), toy_loss, toy_batch_at, _cfg(steps=2, out_dir=str(tmp_path)))
        tr.fit()
    finally:
        torch.set_num_threads(old)
    state = json.loads((tmp_path / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["env"] == {"torch": torch.__version__, "threads": 1, "device": "cpu", "world_size": 1}
