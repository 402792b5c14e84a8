"""MoE expert compute, forward + backward: every path against the eager per-expert loop, side by side.

Variants (same inputs, same upstream gradient, timed interleaved in one run so machine noise hits all):
  eager      kernels.moe_reference: loop over experts, torch.where(topk_ids == e) mask per expert
  sorted     kernels.moe_grouped_torch(use_grouped_mm=False): sort once, one matmul per expert slice
  grouped    kernels.moe_grouped_torch: sort once + F.grouped_mm (the default CPU path)
  dense      a plain [T*K, D] @ [D, 2F] -> SwiGLU -> @ [F, D] with one shared weight: equal FLOPs, no routing;
             the floor any grouped implementation can approach
  triton     kernels.moe_triton (only when CUDA is present)

Shapes come from the k25mini presets (nano, small) plus the small preset widened to 64 experts (the
acceptance case). Prints a markdown table of median ms and eager/variant speed-ups.

A second table times the whole ``k25mini.model.moe.MoELayer`` (router + routed experts + shared expert)
with each backend of the layer (``eager``: Mixtral-style loop with a mask per expert; ``torch``: the CPU
default; ``triton`` on CUDA) on the same weights and inputs, against a dense SwiGLU of equal FLOPs
(width (top-k + shared) * F).

    python benchmarks/bench_moe.py                 # CPU, 1 thread
    python benchmarks/bench_moe.py --quick         # smoke: few repeats, fewer tokens
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import moe_grouped_torch, moe_reference, moe_triton

# (name, D hidden, F expert FFN, E experts, K top-k); nano/small mirror k25mini.config presets
SHAPES = [
    ("nano", 64, 48, 8, 2),
    ("small", 256, 128, 16, 4),
    ("small-64e", 256, 128, 64, 4),
    ("small-64e-top8", 256, 128, 64, 8),
]


def dense_equal_flops(x, w_gate_up, w_down, topk_ids, topk_weights):
    """Same GEMM sizes as the routed computation, but every row uses expert 0: no sort, no gather."""
    f = w_down.shape[1]
    xr = x.repeat_interleave(topk_ids.shape[1], 0)
    gu = xr @ w_gate_up[0]
    y = (F.silu(gu[:, :f]) * gu[:, f:]) @ w_down[0]
    return (y * topk_weights.reshape(-1, 1)).view(x.shape[0], -1, x.shape[1]).sum(1)


def make_inputs(T, D, F_, E, K, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g)
    w_gu = torch.randn(E, D, 2 * F_, generator=g) / D**0.5
    w_down = torch.randn(E, F_, D, generator=g) / F_**0.5
    logits = torch.randn(T, E, generator=g)
    tw, ids = torch.sigmoid(logits).topk(K, dim=-1)
    grad = torch.randn(T, D, generator=g)
    to = lambda t: t.to(device, dtype).requires_grad_(True)
    return to(x), to(w_gu), to(w_down), ids.to(device), to(tw / tw.sum(-1, keepdim=True)), grad.to(device, dtype)


def time_fwd_bwd(fn: Callable, args, grad, device) -> float:
    leaves = [args[0], args[1], args[2], args[4]]
    for t in leaves:
        t.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    out.backward(grad)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def bench(tokens: int, repeats: int, device: str, dtype: torch.dtype) -> list[dict]:
    variants: dict[str, Callable] = {
        "eager": moe_reference,
        "sorted": lambda *a: moe_grouped_torch(*a, use_grouped_mm=False),
        "grouped": moe_grouped_torch,
        "dense": dense_equal_flops,
    }
    if device == "cuda":
        variants["triton"] = moe_triton
    rows = []
    for name, D, F_, E, K in SHAPES:
        args_grad = make_inputs(tokens, D, F_, E, K, device, dtype)
        args, grad = args_grad[:5], args_grad[5]
        times: dict[str, list[float]] = {v: [] for v in variants}
        for fn in variants.values():  # warm-up (Triton compiles here)
            time_fwd_bwd(fn, args, grad, device)
        for _ in range(repeats):
            for v, fn in variants.items():
                times[v].append(time_fwd_bwd(fn, args, grad, device))
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rows.append({"shape": name, "T": tokens, "D": D, "F": F_, "E": E, "K": K, **med})
    return rows


LAYER_SHAPES = [("nano", {}), ("small", {}), ("small-64e", {"n_routed_experts": 64})]


def bench_layer(tokens: int, repeats: int, device: str, dtype: torch.dtype) -> list[dict]:
    """MoELayer fwd+bwd per backend vs an equal-FLOP dense SwiGLU, interleaved in one run."""
    import dataclasses

    from k25mini.config import preset
    from k25mini.model.moe import MoELayer
    from k25mini.model.swiglu import SwiGLU

    rows = []
    for name, over in LAYER_SHAPES:
        cfg = dataclasses.replace(preset(name.split("-")[0]).text, **over)
        torch.manual_seed(0)
        layer = MoELayer(cfg).to(device, dtype).train()
        width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
        dense = SwiGLU(cfg.hidden_size, width).to(device, dtype)
        x = torch.randn(1, tokens, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)
        backends = ["eager", "torch"] + (["triton"] if device == "cuda" else [])

        def run(mod, backend=None, x=x, grad=grad):
            if backend is not None:
                mod.set_backend(backend)
            x.grad = None
            mod.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mod(x).backward(grad)
            if device == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

        times: dict[str, list[float]] = {b: [] for b in backends + ["dense"]}
        for b in backends:  # warm-up
            run(layer, b)
        run(dense)
        for _ in range(repeats):
            for b in backends:
                times[b].append(run(layer, b))
            times["dense"].append(run(dense))
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rows.append({"shape": name, "T": tokens, "D": cfg.hidden_size, "F": cfg.moe_intermediate_size,
                     "E": cfg.n_routed_experts, "K": cfg.num_experts_per_tok, **med})
    return rows


def to_markdown(rows: list[dict]) -> str:
    variants = [k for k in rows[0] if k not in ("shape", "T", "D", "F", "E", "K")]
    head = "| shape | T | D | F | E | K | " + " | ".join(f"{v} ms" for v in variants)
    head += " | " + " | ".join(f"eager/{v}" for v in variants if v != "eager") + " |"
    sep = "|" + "---|" * (6 + 2 * len(variants) - 1)
    lines = [head, sep]
    for r in rows:
        cells = [r["shape"], r["T"], r["D"], r["F"], r["E"], r["K"]] + [f"{r[v]:.2f}" for v in variants]
        cells += [f"{r['eager'] / r[v]:.1f}x" for v in variants if v != "eager"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = stable on a shared box)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="256 tokens, 2 repeats")
    a = p.parse_args()
    if a.quick:
        a.tokens, a.repeats = 256, 2
    torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, a.dtype)
    print(f"# MoE expert fwd+bwd, torch {torch.__version__}, device {device}, dtype {a.dtype}, "
          f"threads {torch.get_num_threads()}, median of {a.repeats}")
    print(to_markdown(bench(a.tokens, a.repeats, device, dtype)))
    print(f"\n# MoELayer (router + routed + shared expert) fwd+bwd per backend, T={2 * a.tokens}")
    rows = bench_layer(2 * a.tokens, a.repeats, device, dtype)
    print(to_markdown(rows))
    for r in rows:
        print(f"{r['shape']}: torch backend {r['eager'] / r['torch']:.1f}x faster than eager; "
              f"{r['torch'] / r['dense']:.2f}x the time of the equal-FLOP dense SwiGLU")


if __name__ == "__main__":
    main()
