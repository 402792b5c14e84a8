"""Draw chapter 09's schematic diagrams into notebooks/figures/ (PNG, committed).

    python tools/ch09_figures.py

Drawings, not results: boxes and arrows made with matplotlib patches. The chapter embeds them in markdown
(``![...](figures/09_....png)``); its data figures (memory plan, DEP balance, send counts) are drawn in the
notebook itself from the package's numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "figures"
BLUE, ORANGE, GREEN, GREY, PURPLE, RED = "#cfe2f3", "#fce5cd", "#d9ead3", "#eeeeee", "#e6dcf2", "#f4cccc"


def box(ax, x, y, w, h, text, color=GREY, fontsize=9.5, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444444", lw=1.1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def arrow(ax, xy0, xy1, text="", fontsize=8.5, offset=(0, 0.1), color="#333333", style="-|>"):
    ax.add_patch(FancyArrowPatch(xy0, xy1, arrowstyle=style, mutation_scale=13, lw=1.3, color=color))
    if text:
        ax.text((xy0[0] + xy1[0]) / 2 + offset[0], (xy0[1] + xy1[1]) / 2 + offset[1], text,
                ha="center", va="bottom", fontsize=fontsize, color="#333333")


def canvas(w, h, figsize):
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.axis("off")
    return fig, ax


def save(fig, name):
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / name, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    print("wrote", OUT / name)


def chapter_map():
    """The five sections, and the parallelism each one adds."""
    fig, ax = canvas(15, 4.2, (13, 3.7))
    items = [("1  FSDP by hand", "shard on dim 0,\nall-gather, reduce-scatter\n2 gloo processes", BLUE),
             ("2  Expert parallel", "route, count, all-to-all,\nlocal experts,\nall-to-all back", ORANGE),
             ("3  Memory plan", "1.03T parameters on\n64-512 GPUs:\nwhat fits where", GREEN),
             ("4  DEP", "vision tower out of\nthe pipeline:\nthree phases", PURPLE),
             ("5  On real GPUs", "torchrun, NCCL, bf16:\nthe commands, and\nwhat CPU cannot test", GREY)]
    for i, (title, body, color) in enumerate(items):
        x = 0.2 + i * 3.0
        box(ax, x, 2.6, 2.5, 0.9, title, color, fontsize=10.5, weight="bold")
        box(ax, x, 0.6, 2.5, 1.7, body, "white", fontsize=9)
        if i < len(items) - 1:
            arrow(ax, (x + 2.55, 3.05), (x + 2.95, 3.05))
    ax.text(7.5, 3.85, "Chapter 09: one model, many GPUs", ha="center", fontsize=12, weight="bold")
    save(fig, "09_map.png")


def fsdp():
    """One FSDP step on two ranks: all-gather before the forward, reduce-scatter after the backward."""
    fig, ax = canvas(16, 6.4, (13.5, 5.4))
    for r, y in ((0, 3.6), (1, 0.4)):
        ax.text(0.1, y + 1.15, f"rank {r}", fontsize=11, weight="bold")
        # the stored shard: half of W's rows
        ax.add_patch(Rectangle((0.2, y), 1.2, 1.0, fc="white", ec="#444444"))
        ax.add_patch(Rectangle((0.2, y + (0.5 if r == 0 else 0.0)), 1.2, 0.5, fc=BLUE, ec="#444444"))
        ax.text(0.8, y - 0.28, f"stores W[{'rows 0-2' if r == 0 else 'rows 3-5'}]", ha="center", fontsize=8.5)
        arrow(ax, (1.5, y + 0.5), (2.6, y + 0.5), "all-gather", offset=(0, 0.08))
        ax.add_patch(Rectangle((2.7, y), 1.2, 1.0, fc=BLUE, ec="#444444"))
        ax.text(3.3, y - 0.28, "full W (temporary)", ha="center", fontsize=8.5)
        box(ax, 4.4, y, 2.6, 1.0, f"forward + backward\non batch half {r}", ORANGE)
        arrow(ax, (3.95, y + 0.5), (4.35, y + 0.5))
        ax.add_patch(Rectangle((7.6, y), 1.2, 1.0, fc=RED, ec="#444444"))
        ax.text(8.2, y + 0.5, f"g{r}", ha="center", va="center", fontsize=10)
        ax.text(8.2, y - 0.28, "full gradient", ha="center", fontsize=8.5)
        arrow(ax, (7.05, y + 0.5), (7.55, y + 0.5))
        ax.add_patch(Rectangle((11.2, y), 1.2, 1.0, fc="white", ec="#444444"))
        ax.add_patch(Rectangle((11.2, y + (0.5 if r == 0 else 0.0)), 1.2, 0.5, fc=RED, ec="#444444"))
        ax.text(11.8, y - 0.28, "(g0 + g1) / 2, own rows", ha="center", fontsize=8.5)
        box(ax, 13.0, y, 2.8, 1.0, "optimizer step\non own rows only", GREEN)
        arrow(ax, (12.45, y + 0.5), (12.95, y + 0.5))
    # reduce-scatter: each rank's half of g goes to its owner
    for y0, y1 in ((4.1, 1.15), (4.35, 4.35), (0.65, 0.65), (0.9, 3.85)):
        arrow(ax, (8.85, y0), (11.15, y1), color="#a33", style="-|>")
    ax.text(10.0, 5.2, "reduce-scatter\n(average, keep own rows)", ha="center", fontsize=9.5, color="#a33")
    save(fig, "09_fsdp.png")


def ep_dispatch():
    """Expert-parallel dispatch of (token, slot) pairs with two all-to-alls."""
    fig, ax = canvas(17, 6.6, (14, 5.4))
    cols = ["#6fa8dc", "#f6b26b", "#93c47d", "#c27ba0"]  # experts 0-3
    for r, y in ((0, 3.7), (1, 0.6)):
        ax.text(0.1, y + 2.15, f"rank {r}", fontsize=11, weight="bold")
        for t in range(4):
            ax.add_patch(Rectangle((0.2, y + 1.5 - t * 0.5), 0.9, 0.4, fc="white", ec="#444"))
            ax.text(0.65, y + 1.7 - t * 0.5, f"t{t + 4 * r}", ha="center", va="center", fontsize=8)
        box(ax, 1.5, y + 0.4, 1.5, 1.0, "router\ntop-2", GREY)
        arrow(ax, (1.15, y + 0.9), (1.45, y + 0.9))
        # (token, slot) pairs sorted by expert, coloured by expert
        pairs = [0, 0, 1, 1, 1, 2, 3, 3] if r == 0 else [0, 1, 2, 2, 2, 3, 3, 3]
        for k, e in enumerate(pairs):
            ax.add_patch(Rectangle((3.5 + k * 0.32, y + 0.7), 0.3, 0.4, fc=cols[e], ec="#444", lw=0.6))
        ax.text(4.8, y + 1.25, "pairs sorted by expert", ha="center", fontsize=8.5)
        n0 = sum(e < 2 for e in pairs)
        ax.text(4.8, y + 0.3, f"send counts: {n0} to rank 0, {8 - n0} to rank 1", ha="center", fontsize=8.5)
        arrow(ax, (3.05, y + 0.9), (3.45, y + 0.9))
        box(ax, 9.0, y + 0.2, 2.6, 1.4, f"local experts\nE{2 * r}, E{2 * r + 1}\n(grouped GEMM)", ORANGE)
        box(ax, 13.3, y + 0.2, 2.6, 1.4, "combine:\nweights x outputs,\nsum over top-k", GREEN)
    for y0, y1 in ((4.6, 4.4), (4.6, 1.3), (1.5, 4.5), (1.5, 1.4)):
        arrow(ax, (6.2, y0), (8.95, y1), color="#2a6099")
    ax.text(7.55, 5.5, "all-to-all\n(rows per destination)", ha="center", fontsize=9.5, color="#2a6099")
    for y0, y1 in ((4.4, 4.6), (4.4, 1.5), (1.3, 4.5), (1.3, 1.3)):
        arrow(ax, (11.65, y0), (13.25, y1), color="#a33")
    ax.text(12.45, 5.5, "all-to-all back", ha="center", fontsize=9.5, color="#a33")
    save(fig, "09_ep_dispatch.png")


def dep():
    """Coupled vs decoupled (DEP) steps of a 4-stage pipeline: a timeline sketch."""
    fig, axes = plt.subplots(2, 1, figsize=(13, 5.2), sharex=True)
    P, M, f = 4, 4, 1.0
    vis = [1.6, 0.0, 2.2, 0.8]  # vision forward cost of each micro-batch, on stage 0 when coupled

    def lane(ax, s, start, w, color, text=""):
        ax.add_patch(Rectangle((start, P - 1 - s), w, 0.8, fc=color, ec="#444", lw=0.6))
        if text:
            ax.text(start + w / 2, P - 1 - s + 0.4, text, ha="center", va="center", fontsize=7)

    # coupled: stage 0's forward/backward of micro-batch m grows with its images (a simple GPipe-like sketch)
    ax = axes[0]
    t = [0.0] * P
    fin = {}
    for m in range(M):
        for s in range(P):
            w = f + (vis[m] if s == 0 else 0.0)
            start = max(t[s], fin.get((s - 1, m), 0.0))
            lane(ax, s, start, w, PURPLE if s == 0 and vis[m] else BLUE, f"F{m}")
            t[s] = fin[(s, m)] = start + w
    for m in range(M):
        for s in reversed(range(P)):
            w = 2 * f + (2 * vis[m] if s == 0 else 0.0)
            start = max(t[s], fin.get((s + 1, m, "b"), 0.0))
            lane(ax, s, start, w, PURPLE if s == 0 and vis[m] else ORANGE, f"B{m}")
            t[s] = fin[(s, m, "b")] = start + w
    ax.set_title(f"coupled: the vision tower on stage 0 (purple: micro-batches with images); step = {max(t):.1f}",
                 fontsize=10)
    # DEP: phase 1 balanced, pipeline text-only, phase 3 balanced
    ax = axes[1]
    share = sum(vis) / P
    t = [share] * P
    for s in range(P):
        lane(ax, s, 0, share, PURPLE, "1")
    fin = {}
    for m in range(M):
        for s in range(P):
            start = max(t[s], fin.get((s - 1, m), 0.0))
            lane(ax, s, start, f, BLUE, f"F{m}")
            t[s] = fin[(s, m)] = start + f
    for m in range(M):
        for s in reversed(range(P)):
            start = max(t[s], fin.get((s + 1, m, "b"), 0.0))
            lane(ax, s, start, 2 * f, ORANGE, f"B{m}")
            t[s] = fin[(s, m, "b")] = start + 2 * f
    end = max(t)
    for s in range(P):
        lane(ax, s, end, 3 * share, PURPLE, "3")
    ax.set_title(f"DEP: phase 1 (vision forward, no grad) and phase 3 (recompute + backward) spread over all "
                 f"GPUs; step = {end + 3 * share:.1f}", fontsize=10)
    for ax in axes:
        ax.set_ylim(-0.2, P)
        ax.set_yticks([P - 1 - s + 0.4 for s in range(P)], [f"stage {s}" for s in range(P)])
        ax.spines[["top", "right"]].set_visible(False)
    axes[1].set_xlim(0, 36)
    axes[1].set_xlabel("time (units of one stage's text forward)")
    fig.tight_layout()
    save(fig, "09_dep.png")


if __name__ == "__main__":
    chapter_map()
    fsdp()
    ep_dispatch()
    dep()
