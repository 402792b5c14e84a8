"""Block-diagonal (varlen) vs dense masked MLA attention in a nano joint training step, side by side (issue #15).

Table 1, the headline: one whole training step of the fusion ablation's joint stage (``config_for("cpu")``:
preset("nano"), 4 packed rows x 256 tokens, early-fusion batches from ``packed_steps`` with images, the loss
``lm_loss``, then gradient clipping and the MuonClip optimiser step from ``k25mini.optim.build_optimizer``
with QK-Clip, so max-logit recording is on, as in training). Two copies of the same initial model, one per path:

  dense    K2Model.varlen_attention = False: one [B, 1, S, S] mask, a dense fp32 S x S softmax per row
  varlen   the default: documents gathered into padded length buckets, causal attention per document

The variants take turns (order alternating every repeat) on the same batches, so machine load hits both alike;
min and median of the step times and the dense/varlen ratio are printed.

MFU: FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one whole step
(forward + backward + optimiser step; matmul-type ops only: mm, bmm, baddbmm, addmm, SDPA, ...). The
"model FLOPs" numerator is the varlen step's count (the work a packed step needs, plus bucket padding and the
masked upper triangles); each variant's own executed count is printed too. The denominator is this machine's
fp32 matmul peak, measured as the best of a few 1024^3 ``torch.mm`` on the same thread count.

Table 2: one MLA layer alone (forward + backward, recording on) on the packed rows of the same batches, dense
against varlen for several bucketing overheads (``doc_packing(bucket_overhead=...)``; 0 = one bucket per
distinct length, inf = one bucket padded to the longest document). It checks ``BUCKET_OVERHEAD``; a row
"floor" times the layer with attention replaced by a cheap stand-in (projections, RoPE, norms only).

    python benchmarks/bench_varlen_attention.py            # 1 thread (torch.set_num_threads(1))
    python benchmarks/bench_varlen_attention.py --quick    # smoke: few repeats
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import config_for
from k25mini.experiments.ch05_fusion.stages import batch_from, lm_loss, new_model, packed_steps
from k25mini.model.decoder import set_varlen_attention
from k25mini.model.masks import BUCKET_OVERHEAD, attention_mask, doc_packing, positions_from_doc_ids
from k25mini.model.mla import MLAttention
from k25mini.model.rope import RotaryEmbedding
from k25mini.optim import build_optimizer
from k25mini.pretrain.fusion_schedule import SCHEDULES
from k25mini.world import World


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def make_batches(n: int, seed: int = 0):
    cfg = config_for("cpu")
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    probe = new_model(cfg, seed)
    steps = packed_steps(cfg, SCHEDULES["early"], n, seed, "bench-varlen", world, tok, probe.media_token_counts)
    return cfg, [batch_from(s) for s in steps]


def train_step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    loss, _ = lm_loss(model, batch)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()  # QK-Clip (uses the recorded max logits) and the MoE bias update run as post-hooks
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def count_step_flops(model, opt, batch) -> int:
    with FlopCounterMode(display=False) as fc:
        train_step(model, opt, batch)
    return fc.get_total_flops()


def doc_stats(batches) -> str:
    lens = []
    for b in batches:
        lens += list(doc_packing(b["doc_ids"]).lengths)
    B, S = batches[0]["doc_ids"].shape
    frac = sum(n * n for n in lens) / (len(batches) * B * S * S)
    return (f"{len(lens) / len(batches) / B:.1f} docs/row, lengths {min(lens)}..{max(lens)} "
            f"(median {statistics.median(lens):.0f}); sum(len^2) = {100 * frac:.1f} % of B*S^2")


def bench_step(cfg, batches, repeats: int, warmup: int) -> None:
    base = new_model(cfg, 0)
    models = {"dense": base, "varlen": copy.deepcopy(base)}
    set_varlen_attention(models["dense"], False)
    set_varlen_attention(models["varlen"], True)
    opts = {k: build_optimizer(m, cfg.optimizer, lr=cfg.joint_lr) for k, m in models.items()}
    for m in models.values():
        m.train()
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(warmup + repeats):
        order = names if i % 2 == 0 else names[::-1]
        for k in order:
            t = train_step(models[k], opts[k], batches[i % len(batches)])
            if i >= warmup:
                times[k].append(t)
    flops = {k: count_step_flops(models[k], opts[k], batches[0]) for k in names}
    peak = matmul_peak_gflops()
    model_flops = flops["varlen"]
    print(f"\n### one nano joint training step (fwd + bwd + clip + MuonClip step), {repeats} interleaved repeats\n")
    print(f"fp32 matmul peak (torch.mm 1024^3, {torch.get_num_threads()} thread): {peak:.1f} GFLOP/s")
    print(f"model FLOPs per step (FlopCounterMode, varlen step): {model_flops / 1e9:.3f} GFLOP\n")
    print("| path | min ms | median ms | executed GFLOP/step | MFU (model FLOPs, median) |")
    print("|---|---|---|---|---|")
    for k in names:
        med = statistics.median(times[k])
        print(f"| {k} | {1e3 * min(times[k]):.1f} | {1e3 * med:.1f} | {flops[k] / 1e9:.3f} | "
              f"{100 * model_flops / med / (peak * 1e9):.1f} % |")
    r_med = statistics.median(times["dense"]) / statistics.median(times["varlen"])
    r_min = min(times["dense"]) / min(times["varlen"])
    pair = statistics.median(d / v for d, v in zip(times["dense"], times["varlen"]))
    print(f"\ndense / varlen step time: {r_med:.2f}x (medians), {r_min:.2f}x (minima), {pair:.2f}x (median of "
          "per-repeat ratios)")


def _stand_in(attn: MLAttention, q_nope, q_pe, c_kv, k_pe):
    """Everything of the layer but the attention itself: the kv up-projection, and outputs that depend on all
    inputs (so the backward runs through every projection)."""
    B, S, H, _ = q_nope.shape
    kv = attn.kv_b_proj(c_kv).view(B, S, H, -1)
    return kv[..., attn.qk_nope_head_dim :] + q_nope.sum(-1, keepdim=True) + q_pe.sum(-1, keepdim=True) \
        + k_pe.sum(-1)[..., None, None]


def bench_layer(cfg, batches, repeats: int) -> None:
    tcfg = new_model(cfg, 0).config.text
    torch.manual_seed(0)
    attn = MLAttention(tcfg).train()
    attn.record_max_logits = True  # record max logits, as MuonClip training does
    rope = RotaryEmbedding(tcfg.qk_rope_head_dim, tcfg.rope_theta, tcfg.rope_scaling, tcfg.max_position_embeddings)
    data = []
    for b in batches:  # the dense mask is built outside the timing (the model builds it once for all layers)
        d = b["doc_ids"]
        cos, sin = rope(positions_from_doc_ids(d))
        x = torch.randn(*d.shape, tcfg.hidden_size)
        data.append((x, cos, sin, d, attention_mask(d.shape[1], d.shape[1], doc_ids=d)))
    overheads = sorted({0, 1024, BUCKET_OVERHEAD, 16384}) + [math.inf]
    variants = {"dense": None, **{f"varlen ovh={o:g}": o for o in overheads}, "floor": "floor"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    buckets: dict[str, list[int]] = {k: [] for k in variants}
    for i in range(repeats + 1):
        x, cos, sin, d, mask = data[i % len(data)]
        names = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for k in names:
            xx = x.clone().requires_grad_()
            t0 = time.perf_counter()
            o = variants[k]
            attn.reset_max_logits()
            if o is None:
                y = attn(xx, cos, sin, attn_mask=mask)
            elif o == "floor":
                attn._attend_varlen = lambda qn, qp, ckv, kpe, pk: _stand_in(attn, qn, qp, ckv, kpe)
                y = attn(xx, cos, sin, packing=doc_packing(d))
                del attn._attend_varlen
            else:
                pk = doc_packing(d, bucket_overhead=o)
                y = attn(xx, cos, sin, packing=pk)
                buckets[k].append(len(pk.buckets))
            y.square().mean().backward()
            attn.zero_grad(set_to_none=True)
            if i:
                times[k].append(time.perf_counter() - t0)
    dense = statistics.median(times["dense"])
    print(f"\n### one MLA layer, fwd + bwd with max-logit recording, {repeats} interleaved repeats "
          f"(default BUCKET_OVERHEAD = {BUCKET_OVERHEAD})\n")
    print("| variant | buckets | min ms | median ms | dense / variant |")
    print("|---|---|---|---|---|")
    for k, ts in times.items():
        nb = f"{statistics.mean(buckets[k]):.1f}" if buckets[k] and k != "floor" else "-"
        med = statistics.median(ts)
        print(f"| {k} | {nb} | {1e3 * min(ts):.2f} | {1e3 * med:.2f} | {dense / med:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 30)
    cfg, batches = make_batches(8)
    print(f"torch {torch.__version__}, torch.set_num_threads({torch.get_num_threads()}); batches: "
          f"{cfg.rows} rows x {cfg.seq_len} tokens, preset {cfg.preset!r}; {doc_stats(batches)}")
    bench_step(cfg, batches, repeats, warmup=1 if args.quick else 3)
    bench_layer(cfg, batches, repeats)


if __name__ == "__main__":
    main()
