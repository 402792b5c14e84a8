"""Chapter 09 memory plan and DEP balance: tables into docs/scaling.md, figures into docs/figures/.

    python tools/ch09_plan_report.py            # everything (the full-k25 fake-mode check takes ~1.5 min)
    python tools/ch09_plan_report.py --no-fake  # skip the fake-mode runs

The generated block of docs/scaling.md (between the ``generated`` markers) is rewritten; the prose around it is
not touched.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from k25mini.config import count_params, k25, nano, small
from k25mini.plan import GIB, Mesh, activation_bytes, best_plan, plan_memory, serving_plan, smallest_plan
from k25mini.train.dep import dep_balance

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scaling.md"
FIG = ROOT / "docs" / "figures"
GPUS = (64, 128, 256, 512)
MEMS = (80, 141)


def _g(b: float) -> str:
    return f"{b / GIB:.1f}"


def fit_table() -> tuple[str, list[tuple]]:
    cfg = k25()
    rows, fig = [], []
    for gpus in GPUS:
        for mem in MEMS:
            for sh in ("zero1", "fsdp"):
                found = best_plan(cfg, gpus, mem, sharding=sh)
                if found is None:
                    p, ck = smallest_plan(cfg, gpus, sharding=sh, offload=True)
                    verdict = "no"
                else:
                    p, ck = found
                    verdict = "yes" + (" (offload)" if p.offload else "")
                m = p.mesh
                rows.append(f"| {gpus} | {mem} | {sh} | dp {m.dp} × ep {m.ep} × pp {m.pp} | {'on' if ck else 'off'} | "
                            f"{'host' if p.offload else 'GPU'} | {_g(p.states - p.host)} | "
                            f"{_g(p.activations + p.recompute_peak + p.gather_buffers)} | {_g(p.total)} | "
                            f"{_g(p.host)} | {verdict} |")
                fig.append((gpus, mem, sh, p, ck))
    head = ("| GPUs | GiB/GPU | sharding | mesh (worst stage) | checkpointing | optimizer state | states GiB | "
            "activations + buffers GiB | GPU total GiB | host GiB/GPU | fits |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows), fig


def k2_table() -> str:
    cfg = k25()
    p = plan_memory(cfg, Mesh(dp=16, ep=16, pp=16, sharding="zero1"), precision="bf16", checkpointing=True)
    mean = sum(p.by_stage) / len(p.by_stage)
    total = count_params(cfg).total
    pg = total * 6 / 256  # bf16 params + fp32 grads over a 256-GPU model-parallel group, evenly
    return "\n".join([
        "| quantity | K2 report (K2 arXiv 2507.20534 §2.4.2) | planner, K2.5 shape, same mesh |",
        "|---|---|---|",
        "| mesh | 16-way PP (virtual stages), 16-way EP, ZeRO-1 DP | pp 16 × ep 16, zero1, dp 16 on 256 GPUs |",
        f"| bf16 params + fp32 grads, whole model | ≈ 6 TB | {total * 6 / 1e12:.2f} TB |",
        f"| the same per GPU of the 256-GPU model-parallel group | ≈ 6 TB / 256 ≈ 23 GB | "
        f"{pg / 1e9:.1f} GB evenly; {(p.params + p.grads) / 1e9:.1f} GB on the heaviest stage "
        f"(stage {p.stage}) |",
        f"| all states per GPU (params, grads, master, optimizer) | ≈ 30 GB (optimizer state spread thin over many "
        f"nodes, or offloaded on 32 nodes) | "
        f"{p.states / 1e9:.1f} GB at dp 16 on the heaviest stage; mean over stages {mean / 1e9:.1f} GB GPU total |",
    ])


def validation_tables(fake: bool) -> str:
    out = []
    if fake:
        from k25mini.plan.fake import fake_fsdp_memory

        rows = ["| config | ranks (dp × ep) | optimizer | params planner / fake GiB | grads | optimizer state | "
                "max rel. diff | time s |", "|---|---|---|---|---|---|---|---|"]
        for cfg, dp, ep, opt in ((nano(), 4, 2, "muon"), (nano(), 6, 2, "adamw"), (k25(), 64, 8, "muon")):
            t0 = time.time()
            f = fake_fsdp_memory(cfg, dp, ep, opt)
            dt = time.time() - t0
            p = plan_memory(cfg, Mesh(dp=dp, ep=ep), precision="fp32", optimizer=opt)
            diffs = [abs(a - f[k]) / f[k] for a, k in ((p.params, "params"), (p.grads, "grads"),
                                                       (p.optimizer, "optimizer"))]

            def two(a, b):
                return f"{a / GIB:.4g} / {b / GIB:.4g}"

            rows.append(f"| {cfg.name} | {dp} × {ep} | {opt} | {two(p.params, f['params'])} | "
                        f"{two(p.grads, f['grads'])} | {two(p.optimizer, f['optimizer'])} | {max(diffs):.2%} | "
                        f"{dt:.0f} |")
        out.append("\n".join(rows))
    from k25mini.model import K2ForCausalLM
    from k25mini.plan.measure import checkpoint_layers, saved_tensor_bytes

    rows = ["| config | [B, S] | dtype | checkpointing | measured MiB | planner MiB | planner / measured |",
            "|---|---|---|---|---|---|---|"]
    for cfg, B, S in ((nano(), 2, 64), (nano(), 1, 256), (small(), 1, 128), (small(), 1, 256)):
        for dtype in (torch.float32, torch.bfloat16):
            for ck in (False, True):
                torch.manual_seed(0)
                m = K2ForCausalLM(cfg.text).to(dtype)
                if ck:
                    checkpoint_layers(m)
                ids = torch.randint(0, cfg.text.vocab_size, (B, S))
                n, _ = saved_tensor_bytes(lambda: m.loss(ids, ids), exclude=m)  # noqa: B023
                want = activation_bytes(cfg.text, B, S, checkpointing=ck, attention="math",
                                        precision="fp32" if dtype == torch.float32 else "bf16")["stored"]
                rows.append(f"| {cfg.name} | [{B}, {S}] | {str(dtype).split('.')[-1]} | {'on' if ck else 'off'} | "
                            f"{n / 2**20:.2f} | {want / 2**20:.2f} | {want / n:.3f} |")
    out.append("\n".join(rows))
    return "\n\n".join(out)


def dep_table() -> tuple[str, list[tuple[float, dict]]]:
    cfg = k25()
    res = []
    rows = ["| micro-batches with images | vision share of FLOPs | stage-0 max / mean work (coupled) | "
            "coupled: efficiency | DEP: efficiency | DEP speed-up |", "|---|---|---|---|---|---|"]
    for prob in (0.1, 0.25, 0.5, 0.75, 1.0):
        runs = [dep_balance(cfg, stages=16, micro_batches=64, image_prob=prob, seed=s) for s in range(3)]

        def mean(k):
            return sum(r[k] for r in runs) / len(runs)  # noqa: B023

        res.append((prob, {k: mean(k) for k in runs[0]}))
        spread = [r["speedup_dep"] for r in runs]
        rows.append(f"| {prob:.0%} | {mean('vision_flop_share'):.1%} | {mean('stage0_max_over_mean'):.2f} | "
                    f"{mean('efficiency_coupled'):.1%} | {mean('efficiency_dep'):.1%} | "
                    f"{mean('speedup_dep'):.2f}× ({min(spread):.2f}–{max(spread):.2f}) |")
    return "\n".join(rows), res


def figures(fit: list[tuple], dep: list[tuple[float, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIG.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, sh in zip(axes, ("zero1", "fsdp")):
        xs, labels = [], []
        for i, gpus in enumerate(GPUS):
            p, ck = next((p, ck) for g, mem, s, p, ck in fit if g == gpus and s == sh and mem == 80)
            parts = [("params", p.params), ("grads", p.grads),
                     ("master + optimizer on GPU", 0 if p.offload else p.master + p.optimizer),
                     ("activations + buffers", p.activations + p.recompute_peak + p.gather_buffers)]
            bottom = 0.0
            for j, (name, v) in enumerate(parts):
                ax.bar(i, v / GIB, bottom=bottom, color=f"C{j}", label=name if i == 0 else None)
                bottom += v / GIB
            xs.append(i)
            labels.append(f"{gpus}\n{p.mesh.dp}×{p.mesh.ep}×{p.mesh.pp}" + ("\noffload" if p.offload else ""))
        for mem, ls in ((80, "--"), (141, ":")):
            ax.axhline(mem * 0.9, color="k", ls=ls, lw=1, label=f"{mem} GiB GPU (90 %)")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("GPUs (dp × ep × pp chosen for 80 GiB)")
        ax.set_title(f"K2.5 (1.03T), bf16, Muon, 4K tokens/micro-batch: {sh}")
    axes[0].set_ylabel("GiB per GPU (heaviest pipeline stage)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIG / "ch09_memory_plan.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    probs = [p for p, _ in dep]
    ax.plot(probs, [r["efficiency_coupled"] for _, r in dep], "o-", label="coupled (vision on stage 0)")
    ax.plot(probs, [r["efficiency_dep"] for _, r in dep], "s-", label="DEP (vision decoupled)")
    ax.axhline(0.9, color="gray", ls=":", lw=1, label="K2.5 report: DEP ≈ 90 %")
    ax.set_xlabel("fraction of micro-batches carrying images")
    ax.set_ylabel("efficiency vs text-only (useful FLOP/s)")
    ax.set_ylim(0, 1.05)
    ax.set_title("16-stage 1F1B pipeline, 64 micro-batches (simulated)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIG / "ch09_dep_balance.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-fake", action="store_true", help="skip the fake-mode checks")
    a = ap.parse_args()
    torch.set_num_threads(1)
    fit, fit_rows = fit_table()
    dep, dep_rows = dep_table()
    s = serving_plan(k25(), 128, 80, 262144)
    serve = (f"Serving on 128 GPUs (one routed expert block of 3 per GPU, other weights replicated, bf16): weights "
             f"{_g(s['weights'])} GiB per GPU; the MLA cache of one 262,144-token sequence is "
             f"{_g(s['kv_per_sequence'])} GiB (61 layers × 576 numbers × 2 bytes per token), so an 80 GiB GPU holds "
             f"{s['sequences']:.1f} such sequences (or {s['sequences'] * 64:.0f} of 4K tokens).")
    block = "\n\n".join([
        "### Where K2.5 fits (bf16, Muon, micro-batch 1 × 4096, fused attention)", fit,
        "### Beside the K2 report", k2_table(),
        "### Serving", serve,
        "### Validation", validation_tables(not a.no_fake),
        "### DEP: pipeline balance on mixed image/text batches (simulated, K2.5 costs in FLOPs, 3 seeds)", dep,
    ])
    figures(fit_rows, dep_rows)
    text = DOC.read_text()
    new = re.sub(r"<!-- generated:begin -->.*<!-- generated:end -->",
                 lambda _: f"<!-- generated:begin -->\n{block}\n<!-- generated:end -->", text, flags=re.S)
    DOC.write_text(new)
    print(block)


if __name__ == "__main__":
    main()
