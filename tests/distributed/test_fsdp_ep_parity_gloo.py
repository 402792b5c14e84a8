"""FSDP2 x expert parallel on gloo (CPU) against one process, with MuonClip, QK-Clip and the router-bias update.

pytest runs this file's ``main()`` under ``torchrun --nproc_per_node 2`` for two meshes, dp=1 x ep=2 and dp=2 x ep=1
(the former with activation checkpointing), 10 steps each, and compares the world-averaged loss of every step with
an in-process single-process run: fp32, |delta loss| <= 1e-6. The only differences are the order of floating-point
sums (gradients averaged over half-batches, norms summed over shards); Newton-Schulz sees the same whole matrices.
The runs save a DCP checkpoint at step 5; the test loads it in one process, continues to step 10 and lands on the
same losses; the same 2-process mesh resumes from it bit for bit; router biases are identical on every rank and equal
to the single process's; a DCP -> safetensors -> DCP round trip continues bit-identically; each 2-process layout
continues from the other's checkpoint. Per-rank parameter bytes (experts FSDP-sharded over dp when dp > 1) equal
k25mini.plan's per-GPU parameter bytes within 5 %. With 4 CPU cores (or ``K25_DIST_4=1``) the 2-process checkpoint
is also loaded by 4 processes (dp=2 x ep=2), continued and saved again at step 7; one process continues from that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from k25mini.config import nano

STEPS, SAVE_AT, SAVE4_AT = 10, 5, 7
BATCH, SEQ, VOCAB = 4, 16, 300
TOL = 1e-6
MESHES = ((1, 2, True), (2, 1, False))  # (dp, ep, activation checkpointing)


def _cfg():
    c = nano()
    t = dataclasses.replace(c.text, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
                            qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                            num_experts_per_tok=2, aux_loss_alpha=0.01, bias_update_rate=0.01)
    return c.replace(text=t, vision=None, media_placeholder_token_id=None)


def _lr(step: int) -> float:
    from k25mini.train.lr_schedule import lr_factor

    return lr_factor(step, STEPS, 2, 0.1, "cosine")


def _setup(mesh, seed: int = 0, ac: bool = False):
    from k25mini.train.parallel import build_parallel_model, build_parallel_optimizer

    model = build_parallel_model(_cfg(), mesh, seed=seed, activation_checkpointing=ac)
    # tau below the logits this toy reaches, so QK-Clip really clips heads in the first steps
    return model, build_parallel_optimizer(model, lr=1e-2, qk_clip_tau=1.0)


def _run(model, opt, mesh, start: int, stop: int, save=None, save_at: int = SAVE_AT,
         norms: list[float] | None = None) -> list[float]:
    from k25mini.train.dcp import save_dcp
    from k25mini.train.parallel import parallel_train_step, toy_lm_batch

    losses = []
    for step in range(start, stop):
        if save is not None and step == save_at:
            save_dcp(save, model, opt, mesh, step=step)
        out = parallel_train_step(model, opt, mesh, toy_lm_batch(step, BATCH, SEQ, VOCAB), _lr(step))
        losses.append(out["loss"])
        if norms is not None:  # losses barely see a wrong gradient scale (Muon is scale-invariant); norms do
            norms.append(out["grad_norm"])
    return losses


def _biases(model) -> list[list[float]]:
    """The router biases (aux-loss-free balancing) of every MoE layer, as lists."""
    from k25mini.model.moe import MoELayer

    return [m.router.e_score_correction_bias.tolist() for m in model.modules() if isinstance(m, MoELayer)]


def _local_bytes(model) -> dict[str, int]:
    """Bytes this rank stores: all parameters, and the routed experts alone (DTensors: the local shard)."""
    from k25mini.train.parallel import expert_params

    def nbytes(p) -> int:
        t = p.to_local() if hasattr(p, "to_local") else p
        return t.numel() * t.element_size()

    return {"params": sum(nbytes(p) for p in model.parameters()),
            "experts": sum(nbytes(p) for _, p in expert_params(model))}


def main() -> None:
    """Worker body (torchrun). argv: out_dir, then "parity" (2 ranks) or "load4" (4 ranks)."""
    from k25mini.train.dcp import load_dcp
    from k25mini.train.parallel import build_mesh

    torch.set_num_threads(1)
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict[str, object] = {}
    if mode == "parity":
        import k25mini

        result["module"] = k25mini.__file__
        for dp, ep, ac in MESHES:
            mesh = build_mesh(dp, ep)
            model, opt = _setup(mesh, ac=ac)
            held: list = [None] * dist.get_world_size()
            dist.all_gather_object(held, _local_bytes(model))
            t0 = time.perf_counter()
            norms: list[float] = []
            losses = _run(model, opt, mesh, 0, STEPS, save=out / f"dcp_{dp}x{ep}", norms=norms)
            clipped = sum(h["clipped_heads"] for h in opt.qk_clip.history)
            everyone: list = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, _biases(model))
            # the same mesh resumes from its own step-5 checkpoint: same arithmetic, so the same bits
            model2, opt2 = _setup(mesh, seed=123, ac=ac)
            step = load_dcp(out / f"dcp_{dp}x{ep}", model2, opt2, mesh)["step"]
            resumed = _run(model2, opt2, mesh, step, STEPS)
            result[f"{dp}x{ep}"] = {"losses": losses, "clipped": clipped, "s": time.perf_counter() - t0,
                                    "gathered_bytes": opt.gathered_bytes, "biases": everyone, "resumed": resumed,
                                    "held": held, "norms": norms}
        # across layouts at the same world size: experts dp-sharded (2x1) <-> expert-parallel (1x2)
        for (dp, ep, _), (sdp, sep, _) in zip(MESHES, MESHES[::-1]):
            mesh = build_mesh(dp, ep)
            model, opt = _setup(mesh, seed=123)
            step = load_dcp(out / f"dcp_{sdp}x{sep}", model, opt, mesh)["step"]
            result[f"{dp}x{ep}"]["cross"] = _run(model, opt, mesh, step, STEPS)
    else:  # load the 2-rank checkpoint at 4 ranks (dp=2 x ep=2) and continue
        mesh = build_mesh(2, 2)
        model, opt = _setup(mesh, seed=123)
        meta = load_dcp(out / "dcp_1x2", model, opt, mesh)
        # ... and save at dp 2 x ep 2 (experts split over ep, each block FSDP-sharded over dp) for a load at 1
        norms = []
        losses = _run(model, opt, mesh, meta["step"], STEPS, save=out / "dcp_2x2", save_at=SAVE4_AT, norms=norms)
        result["load4"] = {"step": meta["step"], "losses": losses, "held": _local_bytes(model), "norms": norms}
    if rank == 0:
        (out / f"{mode}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _torchrun(n: int, out: Path, mode: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__,
           str(out), mode]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return time.perf_counter() - t0


def _single(fn):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("fsdp_ep")
    wall = _torchrun(2, out, "parity")

    def reference():
        model, opt = _setup(None)
        norms: list[float] = []
        losses = _run(model, opt, None, 0, STEPS, norms=norms)
        return losses, sum(h["clipped_heads"] for h in opt.qk_clip.history), _biases(model), norms

    ref, clipped, biases, norms = _single(reference)
    return {"out": out, "dist": json.loads((out / "parity.json").read_text()), "ref": ref, "clipped": clipped,
            "biases": biases, "wall": wall, "norms": norms}


def _rel(a, b) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def _worst(a, b) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.distributed
def test_fsdp_x_ep_loss_matches_one_process(runs):
    d, ref = runs["dist"], runs["ref"]
    assert Path(d["module"]).resolve().parent == Path(__file__).resolve().parents[2] / "k25mini"
    assert runs["clipped"] > 0  # QK-Clip is exercised, not idle
    assert len(ref) == STEPS and ref[-1] < ref[0]
    for dp, ep, ac in MESHES:
        r = d[f"{dp}x{ep}"]
        worst = _worst(r["losses"], ref)
        print(f"dp={dp} x ep={ep} (AC {ac}): max |dloss| over {STEPS} steps = {worst:.2e}; "
              f"{r['clipped']} heads clipped; {r['s']:.1f} s; torchrun wall {runs['wall']:.1f} s")
        assert r["clipped"] == runs["clipped"]
        assert worst <= TOL, (dp, ep, r["losses"], ref)
        # the gradient itself, experts included (a factor of 2 on them would move the norm by far more than this)
        rel = _rel(r["norms"], runs["norms"])
        print(f"dp={dp} x ep={ep}: max relative |dgrad_norm| = {rel:.2e}")
        assert rel <= 1e-6, (dp, ep, r["norms"], runs["norms"])
        # router biases: identical on every rank, and equal to the single process's (sign updates of equal loads)
        assert all(b == r["biases"][0] for b in r["biases"])
        assert r["biases"][0] == runs["biases"] and any(x != 0 for layer in runs["biases"] for x in layer)
        # resuming on the same mesh from the step-5 checkpoint repeats the run bit for bit
        assert r["resumed"] == r["losses"][SAVE_AT:]
        # and the other 2-process layout's checkpoint continues on this mesh
        cross = _worst(r["cross"], ref[SAVE_AT:])
        print(f"dp={dp} x ep={ep} from the other layout's step-5 checkpoint: max |dloss| {cross:.2e}")
        assert cross <= TOL
    assert d["2x1"]["gathered_bytes"] > 0  # Muon gathered the FSDP-sharded matrices


@pytest.mark.distributed
def test_experts_are_sharded_over_dp_and_match_the_planner(runs):
    """dp 2 x ep 1: each rank stores half of every expert stack; per-rank parameter bytes agree with
    k25mini.plan's per-GPU parameter bytes (FSDP over dp x ep, experts over dp) within 5 %, at both meshes."""
    from k25mini.plan import Mesh, param_specs, plan_memory

    full_experts = 4 * sum(s.numel * s.count for s in param_specs(_cfg()) if s.expert)
    for dp, ep, _ in MESHES:
        held = runs["dist"][f"{dp}x{ep}"]["held"]
        plan = plan_memory(_cfg(), Mesh(dp=dp * ep, ep=ep), precision="fp32")
        for rank, h in enumerate(held):
            print(f"dp={dp} x ep={ep} rank {rank}: {h['params']} parameter bytes (planner {plan.params:.0f}, "
                  f"{h['params'] / plan.params - 1:+.2%}); experts {h['experts']} of {full_experts}")
            assert abs(h["params"] - plan.params) <= 0.05 * plan.params, (dp, ep, rank, h, plan.params)
            # dp 1 x ep 2: each rank its 2 of 4 experts; dp 2 x ep 1: each rank half of every stack (FSDP)
            assert h["experts"] == full_experts // 2, (dp, ep, rank, h)
        assert sum(h["params"] for h in held) == 4 * sum(s.numel * s.count for s in param_specs(_cfg()))


@pytest.mark.distributed
def test_dcp_saved_at_2_continues_at_1_and_through_safetensors(runs, tmp_path):
    from safetensors.torch import load_file

    from k25mini.interop import from_published, to_published
    from k25mini.train.dcp import dcp_model_state_dict, dcp_to_safetensors, load_dcp, safetensors_to_dcp

    ref = runs["ref"]
    for name in ("dcp_1x2", "dcp_2x1"):
        def resumed(path=runs["out"] / name):
            model, opt = _setup(None, seed=123)  # different init: everything must come from the checkpoint
            meta = load_dcp(path, model, opt)
            assert meta["step"] == SAVE_AT and meta["world_size"] == 2
            return _run(model, opt, None, SAVE_AT, STEPS), model

        losses, _ = _single(resumed)
        worst = _worst(losses, ref[SAVE_AT:])
        dist_losses = runs["dist"][name.removeprefix("dcp_")]["losses"][SAVE_AT:]
        print(f"{name} loaded at 1: max |dloss| vs 1-process run {worst:.2e}, vs the 2-process run "
              f"{_worst(losses, dist_losses):.2e}")
        assert worst <= TOL

    st = dcp_to_safetensors(runs["out"] / "dcp_1x2", tmp_path / "ckpt.safetensors")
    flat = load_file(str(st))
    single = _single(lambda: _setup(None)[0]).state_dict()
    assert {k.removeprefix("model/") for k in flat if k.startswith("model/")} == set(single)
    for k, v in single.items():  # global shapes, experts included
        assert flat[f"model/{k}"].shape == v.shape, k
    back = safetensors_to_dcp(st, tmp_path / "dcp_back")
    # the model weights in the published Kimi / DeepSeek-V3 names, and back (k25mini.interop)
    full = dcp_model_state_dict(runs["out"] / "dcp_1x2")
    pub = to_published(full, _cfg())
    assert any(".mlp.experts.3.down_proj.weight" in k for k in pub)  # every expert, whole, in its own tensor
    again = from_published(pub, _cfg())
    assert again.keys() == full.keys() and all(torch.equal(again[k], full[k]) for k in full)

    def via(path):
        model, opt = _setup(None, seed=7)
        load_dcp(path, model, opt)
        return _run(model, opt, None, SAVE_AT, STEPS), model.state_dict()

    a, wa = _single(lambda: via(runs["out"] / "dcp_1x2"))
    b, wb = _single(lambda: via(back))
    assert a == b
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.distributed
def test_dcp_saved_at_2_continues_at_4(runs):
    from k25mini.train.dcp import load_dcp

    if (os.cpu_count() or 1) < 4 and os.environ.get("K25_DIST_4") != "1":
        pytest.skip(f"4 gloo processes need 4 CPU cores (this machine has {os.cpu_count()}); "
                    "set K25_DIST_4=1 to run them anyway")
    wall = _torchrun(4, runs["out"], "load4")
    r = json.loads((runs["out"] / "load4.json").read_text())["load4"]
    assert r["step"] == SAVE_AT
    worst = _worst(r["losses"], runs["ref"][SAVE_AT:])
    rel = _rel(r["norms"], runs["norms"][SAVE_AT:])
    print(f"dcp_1x2 loaded at 4 (dp=2 x ep=2): max |dloss| vs 1-process run {worst:.2e}, relative |dgrad_norm| "
          f"{rel:.2e}; torchrun {wall:.1f} s")
    assert worst <= TOL and rel <= 1e-6
    # dp 2 x ep 2 holds 1 of the 4 experts per rank (2 per ep block, halved over dp)
    from k25mini.plan import Mesh, param_specs, plan_memory

    plan = plan_memory(_cfg(), Mesh(dp=4, ep=2), precision="fp32")
    experts = 4 * sum(s.numel * s.count for s in param_specs(_cfg()) if s.expert)
    print(f"dp=2 x ep=2 rank 0: {r['held']['params']} parameter bytes (planner {plan.params:.0f}); "
          f"experts {r['held']['experts']} of {experts}")
    assert r["held"]["experts"] == experts // 4
    assert abs(r["held"]["params"] - plan.params) <= 0.05 * plan.params

    # the checkpoint written by dp 2 x ep 2 (at step 7) continues in one process
    def resumed():
        model, opt = _setup(None, seed=123)
        meta = load_dcp(runs["out"] / "dcp_2x2", model, opt)
        assert meta["step"] == SAVE4_AT and meta["world_size"] == 4
        return _run(model, opt, None, SAVE4_AT, STEPS)

    worst = _worst(_single(resumed), runs["ref"][SAVE4_AT:])
    print(f"dcp_2x2 loaded at 1: max |dloss| vs 1-process run {worst:.2e}")
    assert worst <= TOL


def test_bad_inputs_name_the_argument(tmp_path):
    from k25mini.train.dcp import dcp_to_safetensors, load_dcp
    from k25mini.train.parallel import ParallelDims, build_mesh, build_parallel_model, toy_lm_batch

    with pytest.raises(ValueError, match="dp"):
        ParallelDims(0, 2)
    with pytest.raises(ValueError, match="ep"):
        ParallelDims(1, 1.5)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="process group"):
            build_mesh(1, 1)
    with pytest.raises(ValueError, match="kind"):
        build_parallel_model(_cfg(), None, kind="vit")
    with pytest.raises(ValueError, match="vocab"):
        toy_lm_batch(0, 2, 4, 1)
    with pytest.raises(FileNotFoundError, match="dcp_dir"):
        dcp_to_safetensors(tmp_path, tmp_path / "x.safetensors")
    model, opt = _setup(None)
    with pytest.raises(FileNotFoundError, match="not a DCP checkpoint"):
        load_dcp(tmp_path, model, opt)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter finalisation (gloo threads; see test_fsdp_gloo.py)
