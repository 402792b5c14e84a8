"""One-command GPU check (``make test-gpu``): run, on one CUDA GPU, the paths that CPU tests never reach.

Checks (each is timed and recorded; a failing check does not stop the others):

* ``triton_moe_{fp32,bf16}``: compiled Triton MoE kernels (real tiles >= 16, native ``tl.dot``) forward and backward
  against ``kernels.moe_reference`` (fp32: rel. error <= 1e-4; bf16: <= 3e-2, both relative to max |reference|).
* ``vision_attention_<backend>``: every varlen attention backend available on CUDA against the CPU float64
  ``sdpa_loop`` result (fp32 <= 1e-4, bf16/fp16 <= 2e-2 relative).
* ``text_varlen_sdpa``: the MLA varlen path with SDPA on CUDA against the dense masked path (<= 1e-4 relative).
* ``autocast_bf16_train``: 5 bf16-autocast training steps of the ``small`` preset; the loss must be finite and drop.
* ``nccl_single_process``: a 1-rank NCCL process group, all_reduce and all_to_all_single.
* ``bench_moe`` / ``bench_varlen``: the MoE and packing benchmarks (``--quick``), output tail recorded.

Prints one table and writes ``results/gpu_check.json`` (``--out``). Without CUDA it prints why it skipped and exits 0
without writing anything. Exit code 1 when a check failed. Budget: ~10 minutes on one GPU.

Never executed on a GPU in this repository so far (see README, "What has run on a GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def check_triton_moe(dtype_name: str) -> dict:
    import torch

    from kernels import HAS_TRITON, moe_reference

    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    from kernels import TileConfig, moe_triton

    dtype = getattr(torch, dtype_name)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    g = torch.Generator(device="cuda").manual_seed(0)
    T, D, F_, E, K = 512, 256, 128, 16, 4
    x = torch.randn(T, D, device="cuda", generator=g)
    w_gu = torch.randn(E, D, 2 * F_, device="cuda", generator=g) / D**0.5
    w_dn = torch.randn(E, F_, D, device="cuda", generator=g) / F_**0.5
    ids = torch.rand(T, E, device="cuda", generator=g).topk(K, dim=-1).indices
    tw = torch.rand(T, K, device="cuda", generator=g)
    grad = torch.randn(T, D, device="cuda", generator=g)
    out = {}
    for tiles in (TileConfig(16, 16, 16), TileConfig()):  # smallest legal tiles and the default 64/64/32
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, w_gu, w_dn)]
        w = tw.to(dtype).requires_grad_(True)
        y = moe_triton(*leaves, ids, w, tiles=tiles)
        y.backward(grad.to(dtype))
        got = [y.detach()] + [t.grad for t in leaves] + [w.grad]
        ref_leaves = [t.detach().double().requires_grad_(True) for t in (x, w_gu, w_dn)]
        rw = tw.double().requires_grad_(True)
        ry = moe_reference(*ref_leaves, ids, rw)
        ry.backward(grad.double())
        ref = [ry.detach()] + [t.grad for t in ref_leaves] + [rw.grad]
        errs = {n: _rel(a, b) for n, a, b in zip(("y", "dx", "dw_gate_up", "dw_down", "dweights"), got, ref)}
        worst = max(errs.values())
        out[f"tiles_{tiles.block_m}x{tiles.block_n}x{tiles.block_k}"] = errs
        if not worst <= tol:
            raise AssertionError(f"relative error {worst:.3g} > {tol} with {tiles}: {errs}")
    return {"tolerance": tol, "errors": out}


def check_vision_attention() -> dict:
    import torch

    from k25mini.vision.attention import available_backends, varlen_attention

    res = {}
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 37, 100, 164, 300], dtype=torch.int32)
    q, k, v = (torch.randn(300, 4, 64, generator=g) for _ in range(3))
    ref = varlen_attention(q.double(), k.double(), v.double(), cu, backend="sdpa_loop")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)):
        for be in available_backends("cuda", dtype):
            o = varlen_attention(*(t.to("cuda", dtype) for t in (q, k, v)), cu.to("cuda"), backend=be)
            err = _rel(o.cpu(), ref)
            res[f"{be}/{str(dtype).split('.')[-1]}"] = err
            if not err <= tol:
                raise AssertionError(f"{be} {dtype}: relative error {err:.3g} > {tol}")
    return {"errors": res}


def check_text_varlen() -> dict:
    import torch

    from k25mini.config import small
    from k25mini.model.decoder import K2ForCausalLM

    torch.manual_seed(0)
    m = K2ForCausalLM(small().text).cuda().eval()
    ids = torch.randint(0, 512, (2, 256), device="cuda")
    doc = torch.cat([torch.zeros(2, 100), torch.ones(2, 90), 2 * torch.ones(2, 66)], 1).long().cuda()
    with torch.no_grad():
        a = m(ids, doc_ids=doc)  # varlen, SDPA off CPU
        m.model.varlen_attention = False
        b = m(ids, doc_ids=doc)  # dense masked
    err = _rel(a, b)
    if not err <= 1e-4:
        raise AssertionError(f"varlen vs dense relative error {err:.3g} > 1e-4")
    return {"error": err}


def check_autocast_training() -> dict:
    import torch

    from k25mini.config import small
    from k25mini.model.decoder import K2ForCausalLM

    torch.manual_seed(0)
    m = K2ForCausalLM(small().text).cuda().train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    ids = torch.randint(0, 512, (4, 256), device="cuda")
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m.loss(ids, ids) + m.moe_aux_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.update_moe_bias()
        losses.append(float(loss))
    if not all(map(lambda v: v == v and abs(v) < 1e4, losses)) or not losses[-1] < losses[0]:
        raise AssertionError(f"losses not finite or not decreasing: {losses}")
    return {"losses": losses}


def check_nccl() -> dict:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29577")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        t = torch.arange(8, dtype=torch.float32, device="cuda")
        dist.all_reduce(t)
        o = torch.empty_like(t)
        dist.all_to_all_single(o, t)
        torch.cuda.synchronize()
        if not torch.equal(o, torch.arange(8, dtype=torch.float32, device="cuda")):
            raise AssertionError(f"all_to_all_single returned {o.tolist()}")
    finally:
        dist.destroy_process_group()
    return {"world_size": 1, "note": "1 rank: exercises NCCL init and the collectives' plumbing, not transfers"}


def run_bench(script: str, *args: str, timeout: int = 150) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"{script} exited {p.returncode}: {p.stderr[-800:]}")
    return {"output_tail": p.stdout.strip().splitlines()[-15:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu_check.json"))
    ap.add_argument("--skip-bench", action="store_true", help="leave out the two benchmarks")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False); nothing run, nothing written")
        return 0
    checks = [
        ("triton_moe_fp32", lambda: check_triton_moe("float32")),
        ("triton_moe_bf16", lambda: check_triton_moe("bfloat16")),
        ("vision_attention", check_vision_attention),
        ("text_varlen_sdpa", check_text_varlen),
        ("autocast_bf16_train", check_autocast_training),
        ("nccl_single_process", check_nccl),
    ]
    if not args.skip_bench:
        checks += [("bench_moe", lambda: run_bench("bench_moe.py", "--quick", "--dtype", "bfloat16")),
                   ("bench_varlen", lambda: run_bench("bench_varlen_attention.py", "--quick"))]
    rows = []
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            detail, status = fn(), "pass"
        except Exception as e:  # recorded per check; the exit code reports it
            detail, status = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}, "FAIL"
        rows.append({"check": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), **detail})
    print(f"{'check':<24}{'status':<8}{'s':>8}  detail")
    for r in rows:
        extra = r.get("error") or json.dumps({k: v for k, v in r.items() if k not in ("check", "status", "seconds")})
        print(f"{r['check']:<24}{r['status']:<8}{r['seconds']:>8.2f}  {extra[:140]}")
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checks": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0 if all(r["status"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
