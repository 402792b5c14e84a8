"""Draw the block diagrams of chapters 02-04 into notebooks/figures/ (PNG, committed).

    python tools/figures_ch02_04.py

Each figure is boxes and arrows drawn with matplotlib; the chapters embed them in markdown.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "figures"
BLUE, ORANGE, GREEN, GREY, RED, PURPLE = "#cfe2f3", "#fce5cd", "#d9ead3", "#eeeeee", "#f4cccc", "#d9d2e9"


def box(ax, x, y, w, h, text, color=BLUE, fontsize=9, bold=False):
    """A rounded box with its lower-left corner at (x, y); returns its centre."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
            fontweight="bold" if bold else "normal")
    return x + w / 2, y + h / 2


def arrow(ax, start, end, text=None, color="black", fontsize=8, offset=(0, 0.12)):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color, lw=1.0))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
                ha="center", va="bottom", fontsize=fontsize, color="dimgray")


def canvas(w, h, xlim, ylim):
    fig, ax = plt.subplots(figsize=(w, h))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def save(fig, name):
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print("wrote", OUT / name)


# ---------------------------------------------------------------- chapter 02
def ch02_pipeline():
    """A 6-frame video -> chunks of 4 and 2 -> encoder per chunk -> mean over t -> 2x2 merge -> projector."""
    fig, ax = canvas(12, 4.2, (0, 24), (0, 8.4))
    colours = ["#e06666", "#f6b26b", "#ffd966", "#93c47d", "#6fa8dc", "#8e7cc3"]
    ax.text(1.6, 7.9, "video, T = 6 frames", ha="center", fontsize=9, fontweight="bold")
    for t in range(6):  # the frames, stacked
        y = 6.8 - t * 1.05
        ax.add_patch(Rectangle((0.6, y), 2.0, 0.8, fc=colours[t], ec="black", lw=0.6))
        ax.text(1.6, y + 0.4, f"frame {t}", ha="center", va="center", fontsize=8)
    c1 = box(ax, 4.0, 4.6, 3.6, 2.6, "chunk 0\n4 frames\n(t=4, h, w)", ORANGE)
    c2 = box(ax, 4.0, 0.9, 3.6, 2.0, "chunk 1\n2 frames\n(t=2, h, w)", ORANGE)
    arrow(ax, (2.7, 5.5), (4.0, c1[1]))
    arrow(ax, (2.7, 1.6), (4.0, c2[1]))
    e1 = box(ax, 9.0, 4.6, 3.6, 2.6, "ViT encoder\njoint attention over\nt*h*w tokens", BLUE)
    e2 = box(ax, 9.0, 0.9, 3.6, 2.0, "ViT encoder\n(same weights)", BLUE)
    arrow(ax, (7.6, c1[1]), (9.0, e1[1]), "t*h*w")
    arrow(ax, (7.6, c2[1]), (9.0, e2[1]), "t*h*w")
    p1 = box(ax, 14.0, 4.6, 3.0, 2.6, "mean over t\n(temporal pool)\n-> h*w", GREEN)
    p2 = box(ax, 14.0, 0.9, 3.0, 2.0, "mean over t\n-> h*w", GREEN)
    arrow(ax, (12.6, e1[1]), (14.0, p1[1]))
    arrow(ax, (12.6, e2[1]), (14.0, p2[1]))
    m1 = box(ax, 18.4, 4.6, 2.4, 2.6, "2x2 merge\n-> h*w/4\ngroups of 4", PURPLE)
    m2 = box(ax, 18.4, 0.9, 2.4, 2.0, "2x2 merge\n-> h*w/4", PURPLE)
    arrow(ax, (17.0, p1[1]), (18.4, m1[1]))
    arrow(ax, (17.0, p2[1]), (18.4, m2[1]))
    j1 = box(ax, 21.8, 4.6, 2.0, 2.6, "MLP\nprojector\n-> LLM\nwidth", RED)
    j2 = box(ax, 21.8, 0.9, 2.0, 2.0, "MLP\nprojector", RED)
    arrow(ax, (20.8, m1[1]), (21.8, j1[1]))
    arrow(ax, (20.8, m2[1]), (21.8, j2[1]))
    ax.text(12, 8.1, "each chunk becomes h*w/4 LLM tokens, whatever its number of frames", ha="center",
            fontsize=10, style="italic")
    save(fig, "ch02_chunk_pool_merge.png")


def ch02_merge_grid():
    """The 2x2 merge on a 4x6 patch grid: four neighbours (same colour) become one group of 4."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1.2, 1.0, 1.1]})
    cmap = plt.get_cmap("tab20")
    h, w = 4, 6
    ax = axes[0]
    for t in range(3, -1, -1):  # four frames drawn as a stack
        for r in range(h):
            for c in range(w):
                g = (r // 2) * (w // 2) + c // 2
                ax.add_patch(Rectangle((c + 0.35 * t, h - 1 - r + 0.35 * t), 0.95, 0.95, fc=cmap(g % 20),
                                       ec="white", alpha=1.0 if t == 0 else 0.45))
    ax.set_xlim(-0.3, w + 1.5)
    ax.set_ylim(-0.3, h + 1.5)
    ax.set_title("encoder output of one chunk\n[t=4, h=4, w=6, D]", fontsize=9)
    ax.axis("off")
    ax = axes[1]
    for r in range(h):
        for c in range(w):
            g = (r // 2) * (w // 2) + c // 2
            ax.add_patch(Rectangle((c, h - 1 - r), 0.95, 0.95, fc=cmap(g % 20), ec="white"))
            ax.text(c + 0.47, h - 1 - r + 0.47, f"{r},{c}", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.3, w + 0.3)
    ax.set_ylim(-0.3, h + 0.3)
    ax.set_title("mean over t: [h=4, w=6, D]\n'(t h w) d -> h w d'", fontsize=9)
    ax.axis("off")
    ax = axes[2]
    for g in range((h // 2) * (w // 2)):
        for k in range(4):
            ax.add_patch(Rectangle((k, (h // 2) * (w // 2) - 1 - g), 0.95, 0.95, fc=cmap(g % 20), ec="white"))
        ax.text(-0.2, (h // 2) * (w // 2) - 1 - g + 0.47, f"group {g}", ha="right", va="center", fontsize=7)
    ax.set_xlim(-2.2, 4.3)
    ax.set_ylim(-0.3, 6.3)
    ax.set_title("2x2 merge: [(h/2)(w/2)=6, 4, D]\n'(h a) (w b) d -> (h w) (a b) d'", fontsize=9)
    ax.axis("off")
    save(fig, "ch02_merge_grid.png")


# ---------------------------------------------------------------- chapter 03
def ch03_pipeline():
    """Router -> sort/align -> grouped GEMM (gate/up + SwiGLU, down) -> combine."""
    fig, ax = canvas(12.5, 3.4, (0, 25), (0, 6.6))
    x = box(ax, 0.2, 2.4, 2.6, 1.8, "tokens x\n[T, D]", GREY)
    r = box(ax, 3.8, 2.4, 3.4, 1.8, "router\nsigmoid(W_r x) + bias\n-> top-K ids, weights", ORANGE, 8)
    s = box(ax, 8.2, 2.4, 3.6, 1.8, "sort + align\nT*K rows grouped by\nexpert, padded to tiles", GREEN, 8)
    g1 = box(ax, 12.8, 2.4, 3.8, 1.8, "grouped GEMM 1\ngather x rows, x W_gu[e]\nSwiGLU -> h", BLUE, 8)
    g2 = box(ax, 17.6, 2.4, 3.4, 1.8, "grouped GEMM 2\nh W_d[e] * weight\n-> Y [T*K, D]", BLUE, 8)
    c = box(ax, 22.0, 2.4, 2.8, 1.8, "combine\nout_t = sum_k Y_tk\n[T, D]", RED, 8)
    arrow(ax, (2.8, x[1]), (3.8, r[1]))
    arrow(ax, (7.2, r[1]), (8.2, s[1]), "[T, K]")
    arrow(ax, (11.8, s[1]), (12.8, g1[1]), "tiles")
    arrow(ax, (16.6, g1[1]), (17.6, g2[1]), "[R, F]")
    arrow(ax, (21.0, g2[1]), (22.0, c[1]))
    ax.annotate("", xy=(14.7, 4.3), xytext=(1.5, 4.3),
                arrowprops=dict(arrowstyle="-|>", color="tab:blue", connectionstyle="arc3,rad=-0.18", lw=1.0))
    ax.text(8.0, 5.9, "x is read directly by the GEMM (no permuted copy)", ha="center", fontsize=8, color="tab:blue")
    ax.text(5.5, 1.6, "section 1", ha="center", fontsize=8, color="dimgray")
    ax.text(10.0, 1.6, "section 2", ha="center", fontsize=8, color="dimgray")
    ax.text(16.9, 1.6, "section 3 (Triton) and 4 (backward)", ha="center", fontsize=8, color="dimgray")
    ax.text(23.4, 1.6, "fixed order:\ndeterministic", ha="center", va="top", fontsize=8, color="dimgray")
    save(fig, "ch03_moe_pipeline.png")


def ch03_tiles():
    """The grid of Triton programs: one row of tiles per (BLOCK_M rows, BLOCK_N cols); each tile has one expert."""
    fig, ax = canvas(11, 4.4, (0, 22), (0, 9))
    colours = {0: "#e06666", 2: "#6fa8dc", 3: "#93c47d", -1: "#eeeeee"}
    owners = [0, 2, 2, 3, -1, -1]
    for i, e in enumerate(owners):
        y = 7.4 - i * 1.25
        for j in range(3):
            ax.add_patch(Rectangle((1.0 + j * 2.1, y), 2.0, 1.1, fc=colours[e], ec="black", lw=0.6))
            ax.text(2.0 + j * 2.1, y + 0.55, f"pid=({i},{j})", ha="center", va="center", fontsize=7)
        ax.text(7.6, y + 0.55, f"tile {i}: expert {e}" + ("  -> exits at once" if e < 0 else ""),
                va="center", fontsize=8)
    ax.text(4.1, 8.75, "program grid: (tiles) x (F / BLOCK_N)", ha="center", fontsize=9, fontweight="bold")
    box(ax, 13.2, 5.6, 8.4, 2.6, "one program (tile i, column block j):\n"
        "1. e = block_expert[i]\n2. rows -> token ids = sorted_ids // K (gather)\n"
        "3. acc_g, acc_u += x[tok, k0:k1] @ W_gu[e][k0:k1, cols]\n4. h = silu(acc_g) * acc_u  ->  store",
        ORANGE, 8)
    box(ax, 13.2, 1.2, 8.4, 3.2, "padding rows hold the sentinel N = T*K:\n"
        "their loads are masked to 0 and their output is\nnever read. The grid is sized for the worst case\n"
        "ceil(N / BLOCK_M) + E tiles, so the host never\nwaits for the routing to size the launch.", GREEN, 8)
    save(fig, "ch03_grouped_gemm_tiles.png")


# ---------------------------------------------------------------- chapter 04
def ch04_mla():
    """The MLA data flow: which tensors are computed, which are cached."""
    fig, ax = canvas(12.5, 5.4, (0, 25), (0, 11))
    x = box(ax, 0.3, 4.8, 2.2, 1.4, "x  [D]", GREY)
    qa = box(ax, 3.6, 8.0, 3.8, 1.4, "W_qa, RMSNorm\nc_q [q_lora]", ORANGE, 8)
    qb = box(ax, 8.6, 8.0, 3.8, 1.4, "W_qb  ->  per head\nq^C [nope], q^R [rope]", ORANGE, 8)
    kva = box(ax, 3.6, 3.0, 3.8, 1.8, "W_kva  ->  c_kv [kv_lora]\n(RMSNorm)  +  k^R [rope]", GREEN, 8)
    kvb = box(ax, 8.6, 1.2, 3.8, 1.6, "W_kvb  ->  per head\nk^C [nope], v [d_v]", BLUE, 8)
    rope = box(ax, 8.6, 4.0, 3.8, 1.5, "RoPE on q^R and k^R only\n(k^R shared by all heads)", PURPLE, 8)
    att_text = "per head h:\nlogit = (q^C.k^C + q^R.k^R)/sqrt(d)\ncausal softmax\n-> sum_j p_j v_j"
    att = box(ax, 13.8, 4.3, 5.4, 2.6, att_text, RED, 8)
    o = box(ax, 20.6, 4.8, 3.2, 1.6, "W_o  ->  [D]", GREY)
    arrow(ax, (2.5, x[1] + 0.3), (3.6, qa[1]))
    arrow(ax, (2.5, x[1] - 0.3), (3.6, kva[1]))
    arrow(ax, (7.4, qa[1]), (8.6, qb[1]))
    arrow(ax, (12.4, qb[1]), (14.6, 6.9), "q^C")
    arrow(ax, (10.5, 8.0), (10.5, 5.5), "q^R", offset=(0.4, 0))
    arrow(ax, (7.4, kva[1] + 0.4), (8.6, rope[1]), "k^R", offset=(0, 0.1))
    arrow(ax, (7.4, kva[1] - 0.4), (8.6, kvb[1]), "c_kv", offset=(-0.2, -0.5))
    arrow(ax, (12.4, rope[1]), (14.0, rope[1] + 0.3))
    arrow(ax, (12.4, kvb[1]), (14.6, 4.3), "k^C, v", offset=(0.3, -0.5))
    arrow(ax, (19.2, att[1]), (20.6, o[1]))
    ax.add_patch(Rectangle((3.3, 0.6), 4.4, 4.6, fill=False, ec="tab:green", lw=2.0, ls="--"))
    ax.text(5.5, 0.15, "the KV-cache stores only c_kv and k^R", ha="center", fontsize=9, color="tab:green",
            fontweight="bold")
    ax.text(12.5, 10.5, "Multi-head Latent Attention (one layer, one token)", ha="center", fontsize=10,
            fontweight="bold")
    save(fig, "ch04_mla_dataflow.png")


def ch04_cache():
    """Numbers cached per token and layer at K2's shape: MHA vs GQA-8 vs MLA, drawn to scale."""
    heads, qk, v = 64, 128 + 64, 128
    rows = [("MHA (64 heads)", heads * (qk + v), RED), ("GQA-8 (8 KV heads)", 8 * (qk + v), ORANGE),
            ("MLA: c_kv 512 + k^R 64", 512 + 64, GREEN)]
    fig, ax = plt.subplots(figsize=(11, 2.6))
    for i, (_, n, col) in enumerate(rows):
        ax.barh(2 - i, n, color=col, ec="black")
        ax.text(n + 200, 2 - i, f"{n:,} numbers", va="center", fontsize=9)
    ax.set_yticks([2, 1, 0], [r[0] for r in rows])
    ax.set_xlim(0, 25000)
    ax.set_xlabel("numbers cached per token and layer (K2 head shape)")
    ax.set_title("What the KV-cache holds: MHA keeps every head's K and V; MLA keeps one latent and one shared key",
                 fontsize=9)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    save(fig, "ch04_latent_cache.png")


def ch04_decoder():
    """The K2 decoder layer: pre-norm MLA, then pre-norm MoE (router + routed experts + shared expert)."""
    fig, ax = canvas(12.5, 3.3, (0, 25), (0, 6.5))
    x = box(ax, 0.2, 2.4, 1.8, 1.4, "x", GREY)
    n1 = box(ax, 2.8, 2.4, 2.4, 1.4, "RMSNorm", GREY, 8)
    a = box(ax, 6.0, 2.4, 2.8, 1.4, "MLA\n(section 1)", RED, 8)
    p1 = box(ax, 9.6, 2.6, 1.0, 1.0, "+", GREY, 11)
    n2 = box(ax, 11.4, 2.4, 2.4, 1.4, "RMSNorm", GREY, 8)
    r = box(ax, 14.6, 4.2, 3.2, 1.6, "router (ch. 03)\nsigmoid + bias, top-K", ORANGE, 8)
    e = box(ax, 14.6, 2.2, 3.2, 1.6, "K routed experts\n(SwiGLU each)", BLUE, 8)
    s = box(ax, 14.6, 0.2, 3.2, 1.6, "shared expert\n(SwiGLU, every token)", BLUE, 8)
    sm = box(ax, 18.8, 2.4, 2.4, 1.4, "weighted sum\n+ shared", GREEN, 8)
    p2 = box(ax, 22.0, 2.6, 1.0, 1.0, "+", GREY, 11)
    arrow(ax, (2.0, x[1]), (2.8, n1[1]))
    arrow(ax, (5.2, n1[1]), (6.0, a[1]))
    arrow(ax, (8.8, a[1]), (9.6, p1[1]))
    arrow(ax, (10.6, p1[1]), (11.4, n2[1]))
    arrow(ax, (13.8, n2[1] + 0.3), (14.6, r[1]))
    arrow(ax, (13.8, n2[1]), (14.6, e[1]))
    arrow(ax, (13.8, n2[1] - 0.3), (14.6, s[1]))
    arrow(ax, (16.2, 4.2), (16.2, 3.8))
    arrow(ax, (17.8, e[1]), (18.8, sm[1]))
    arrow(ax, (17.8, s[1]), (18.8, sm[1] - 0.5))
    arrow(ax, (21.2, sm[1]), (22.0, p2[1]))
    ax.annotate("", xy=(10.1, 3.6), xytext=(1.1, 3.8),
                arrowprops=dict(arrowstyle="-|>", connectionstyle="arc3,rad=-0.35", color="dimgray"))
    ax.annotate("", xy=(22.5, 3.6), xytext=(10.6, 3.6),
                arrowprops=dict(arrowstyle="-|>", connectionstyle="arc3,rad=-0.3", color="dimgray"))
    ax.text(23.8, 3.1, "out", fontsize=9)
    ax.text(12.5, 6.3, "K2 decoder layer (layers >= first_k_dense_replace; layer 0 uses a dense SwiGLU)",
            ha="center", fontsize=9, fontweight="bold")
    save(fig, "ch04_decoder_layer.png")


if __name__ == "__main__":
    ch02_pipeline()
    ch02_merge_grid()
    ch03_pipeline()
    ch03_tiles()
    ch04_mla()
    ch04_cache()
    ch04_decoder()
