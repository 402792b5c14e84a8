"""The memory planner (k25mini.plan) against the model it plans for.

* ``param_specs`` lists exactly the parameters the model builds (names, shapes, Muon/AdamW routing).
* Parameters, gradients and optimizer state agree within 5 % with FSDP2 + expert parallelism under
  FakeTensorMode and a fake process group (nano at several meshes, one with FSDP2's dim-0 padding; the full
  ``k25`` config at 64 ranks).
* Activations agree within 20 % with the bytes autograd saves, measured on CPU, with and without per-layer
  activation checkpointing.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch

from k25mini.config import count_params, k2, k25, nano, small
from k25mini.model import K2ForCausalLM
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.optim.build import param_groups_for
from k25mini.plan import Mesh, activation_bytes, kv_cache_bytes, param_specs, plan_memory
from k25mini.plan.fake import fake_fsdp_memory
from k25mini.plan.measure import checkpoint_layers, saved_tensor_bytes

torch.set_num_threads(1)


@pytest.mark.parametrize("cfg", [nano(), small(), k2(), k25()], ids=lambda c: c.name)
def test_param_specs_sum_to_count_params(cfg):
    assert sum(s.numel * s.count for s in param_specs(cfg)) == count_params(cfg).total


def test_param_specs_match_the_built_model():
    model = K25ForConditionalGeneration(nano())
    route = {id(p): ("muon" if k.startswith("muon") else "adamw") for k, v in param_groups_for(model).items()
             for _, p in v}
    specs = param_specs(nano())
    dense = nano().text.first_k_dense_replace
    matched = {(s.name, s.part): 0 for s in specs}
    for name, p in model.named_parameters():
        parts = name.split(".")
        part = None
        if parts[:3] == ["language_model", "model", "layers"]:
            part = "dense_layer" if int(parts[3]) < dense else "moe_layer"
        hits = [s for s in specs if fnmatch.fnmatchcase(name, s.name) and part in (None, s.part)]
        assert len(hits) == 1, name
        s = hits[0]
        assert tuple(p.shape) == s.shape and route[id(p)] == s.optim, name
        matched[(s.name, s.part)] += 1
    assert matched == {(s.name, s.part): s.count for s in specs}


def _close(plan, fake, tol=0.05):
    for key, got in (("params", plan.params), ("grads", plan.grads), ("optimizer", plan.optimizer)):
        assert abs(got - fake[key]) <= tol * fake[key], (key, got, fake[key])


@pytest.mark.parametrize("dp,ep,opt", [(2, 1, "muon"), (4, 2, "muon"), (6, 2, "adamw"), (8, 8, "muon")])
def test_planner_matches_fake_fsdp_nano(dp, ep, opt):
    fake = fake_fsdp_memory(nano(), dp, ep, opt)
    _close(plan_memory(nano(), Mesh(dp=dp, ep=ep), precision="fp32", optimizer=opt), fake)


def test_planner_matches_fake_fsdp_full_k25():
    """The published K2.5 shape (1.03T parameters) on 64 fake ranks, 8-way expert parallel: no memory used."""
    fake = fake_fsdp_memory(k25(), 64, 8, "muon")
    plan = plan_memory(k25(), Mesh(dp=64, ep=8), precision="fp32", optimizer="muon")
    _close(plan, fake)
    assert fake["params"] > 50 * 2**30  # ~60 GiB of fp32 parameters per rank: the count is real


@pytest.mark.parametrize("cfg,B,S", [(nano(), 2, 64), (small(), 1, 128)], ids=["nano", "small"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_activation_formula_matches_saved_tensors(cfg, B, S, ckpt, dtype):
    t = cfg.text
    torch.manual_seed(0)
    model = K2ForCausalLM(t).to(dtype)
    if ckpt:
        checkpoint_layers(model)
    ids = torch.randint(0, t.vocab_size, (B, S))
    measured, loss = saved_tensor_bytes(lambda: model.loss(ids, ids), exclude=model)
    loss.backward()  # the checkpointed graph runs
    want = activation_bytes(t, B, S, checkpointing=ckpt, attention="math",
                            precision="fp32" if dtype == torch.float32 else "bf16")["stored"]
    assert abs(want - measured) <= 0.20 * measured, (want, measured)


def test_checkpointing_and_pipeline_change_the_plan():
    mesh = Mesh(dp=16, ep=16, pp=16, sharding="zero1")
    a = plan_memory(k25(), mesh, checkpointing=False)
    b = plan_memory(k25(), mesh, checkpointing=True)
    assert b.activations < a.activations / 10 and b.recompute_peak > 0
    assert len(a.by_stage) == 16 and a.total == max(a.by_stage)


def test_kv_cache_bytes_mla():
    # K2: 61 layers x (512 + 64) numbers per token, bf16
    assert kv_cache_bytes(k25(), 1, 1) == 61 * 576 * 2
    assert kv_cache_bytes(k25(), 2, 1000) == 2 * 1000 * 61 * 576 * 2


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="Mesh.ep"):
        Mesh(dp=4, ep=3)
    with pytest.raises(ValueError, match="Mesh.sharding"):
        Mesh(dp=4, sharding="zero2")
    with pytest.raises(ValueError, match="optimizer"):
        plan_memory(k25(), Mesh(dp=8), optimizer="sgd")
    with pytest.raises(ValueError, match="precision"):
        plan_memory(k25(), Mesh(dp=8), precision="fp8")
    with pytest.raises(ValueError, match="n_routed_experts"):
        plan_memory(k25(), Mesh(dp=10, ep=5))
    with pytest.raises(ValueError, match="Mesh.pp"):
        plan_memory(nano(), Mesh(dp=1, pp=8))
    with pytest.raises(ValueError, match="micro_batch"):
        activation_bytes(k25(), 0, 4096)
    with pytest.raises(ValueError, match="attention"):
        activation_bytes(k25(), 1, 4096, attention="sparse")
    with pytest.raises(ValueError, match="ep"):
        fake_fsdp_memory(nano(), 4, 3)


def test_best_plan_prefers_no_offload_and_reports_no_fit():
    from k25mini.plan import best_plan

    p, ck = best_plan(k25(), 256, 80, sharding="zero1")
    assert (p.mesh.pp, p.mesh.dp) == (16, 16) and not p.offload and p.fits(80)
    assert best_plan(k25(), 64, 80, sharding="fsdp") is None  # 1T parameters need more than 64 x 80 GiB
    with pytest.raises(ValueError, match="gpu_mem_gib"):
        best_plan(k25(), 64, 0)


def test_cli_prints_the_table(capsys):
    from k25mini.plan.__main__ import main

    assert main(["--config", "k25", "--gpus", "256", "--gpu-mem", "80", "--sharding", "zero1"]) == 0
    out = capsys.readouterr().out
    assert "dp=16 ep=16 pp=16" in out and "fits in 80" in out and "MLA KV cache" in out
    assert main(["--gpus", "256", "--dp", "16"]) == 2
    assert "--dp" in capsys.readouterr().err
