"""Draw the schematic diagrams of chapters 00, 00b and 01 into notebooks/figures/ (PNG, committed).

    python tools/intro_figures.py

The diagrams are drawings, not results: boxes and arrows made with matplotlib patches, so they can be
regenerated and edited like code. The chapters embed them in markdown (``![...](figures/....png)``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "figures"
BLUE, ORANGE, GREEN, GREY, PURPLE, RED = "#cfe2f3", "#fce5cd", "#d9ead3", "#eeeeee", "#e6dcf2", "#f4cccc"


def box(ax, x, y, w, h, text, color=GREY, fontsize=10, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444444", lw=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)


def arrow(ax, xy0, xy1, text="", color="#333333", fontsize=8.5, offset=(0, 0.12)):
    ax.add_patch(FancyArrowPatch(xy0, xy1, arrowstyle="-|>", mutation_scale=14, lw=1.4, color=color))
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


def k25_map():
    """00: the model. Pixels -> MoonViT-3D -> merge + projector -> K2 decoder <- text tokens."""
    fig, ax = canvas(14, 6.2, (12, 5.2))
    box(ax, 0.1, 4.2, 2.0, 1.2, "image / video\n(any H x W,\nT frames)", ORANGE)
    box(ax, 2.9, 4.2, 2.6, 1.2, "MoonViT-3D\npatch n' pack, 2D RoPE\n(ch 01, 02)", BLUE)
    box(ax, 6.3, 4.2, 2.5, 1.2, "2x2 merge +\ntemporal pool +\nMLP projector (ch 02)", BLUE)
    box(ax, 0.1, 1.2, 2.0, 1.2, "text\n(bytes + media\ntokens)", ORANGE)
    box(ax, 2.9, 1.2, 2.6, 1.2, "token embedding", GREY)
    box(ax, 9.6, 1.0, 4.2, 4.6, "", GREEN)
    ax.text(11.7, 5.25, "K2 decoder  x 61 layers (ch 04)", ha="center", fontsize=10.5, weight="bold")
    box(ax, 10.0, 3.6, 3.4, 1.2, "MLA attention\nlow-rank KV latent (ch 04)", "white")
    box(ax, 10.0, 1.9, 3.4, 1.2, "MoE: 384 experts, top-8\n+ 1 shared (ch 03)", "white")
    arrow(ax, (11.7, 3.6), (11.7, 3.1))
    ax.text(11.7, 1.35, "next-token logits", ha="center", fontsize=9)
    arrow(ax, (2.1, 4.8), (2.9, 4.8), "pixels")
    arrow(ax, (5.5, 4.8), (6.3, 4.8), "patches")
    arrow(ax, (8.8, 4.8), (9.6, 4.0), "vision\ntokens", offset=(-0.2, 0.15))
    arrow(ax, (2.1, 1.8), (2.9, 1.8), "ids")
    arrow(ax, (5.5, 1.8), (9.6, 2.6), "text tokens", offset=(0, 0.05))
    ax.text(7.3, 0.2, "one sequence: text tokens and vision tokens interleaved where the "
            "<|media_pad|> placeholders were", ha="center", fontsize=9, style="italic")
    ax.set_title("The K2.5 model: a vision tower feeding the K2 mixture-of-experts language model", fontsize=11)
    save(fig, "00_k25_map.png")


def k25_recipe():
    """00: the training recipe, stage by stage, with the chapter that rebuilds each."""
    fig, ax = canvas(15, 3.6, (12.5, 3.2))
    stages = [
        ("ViT training\n(caption loss)", "ch 01-02", BLUE),
        ("joint pre-training\nearly fusion, V:T 10:90", "ch 05", GREEN),
        ("zero-vision SFT\ntext-only tool use", "ch 06", ORANGE),
        ("joint RL\nvision tasks help text", "ch 07", PURPLE),
        ("Agent Swarm\nPARL orchestrator", "ch 08", RED),
    ]
    for i, (name, ch, color) in enumerate(stages):
        x = 0.1 + 3.0 * i
        box(ax, x, 1.2, 2.5, 1.5, name, color, fontsize=9.5)
        ax.text(x + 1.25, 0.75, ch, ha="center", fontsize=9, weight="bold")
        if i:
            arrow(ax, (x - 0.5, 1.95), (x, 1.95))
    ax.text(7.5, 3.2, "K2.5's training recipe, left to right (arXiv 2602.02276)", ha="center", fontsize=11)
    ax.text(7.5, 0.15, "chapter 00 sizes the model, 00b builds the toy world every stage trains on, "
            "03-04 build the language backbone", ha="center", fontsize=9, style="italic")
    save(fig, "00_k25_recipe.png")


def toy_world():
    """00b: one seeded list of entities, rendered as text, images and tasks."""
    fig, ax = canvas(14, 6.4, (12, 5.4))
    box(ax, 0.2, 2.4, 3.0, 1.8, "World(seed)\nentities: name, colour,\nshape, region, kg,\nkm/h, friend", GREEN,
        fontsize=9.5, weight="bold")
    rows = [
        (5.0, "pages (text)\nencyclopedia entries", ORANGE),
        (3.1, "images\nicons, scenes, OCR,\ncharts, videos", BLUE),
        (1.2, "the web\nsearch + browse", GREY),
    ]
    for y, text, color in rows:
        box(ax, 4.8, y - 0.55, 3.0, 1.3, text, color, fontsize=9.5)
        arrow(ax, (3.2, 3.3), (4.8, y + 0.1))
    uses = [
        (5.0, "training skills\n(captions, facts, code)"),
        (3.1, "six eval suites\nVisKnow ... Code (held out)"),
        (1.2, "wide / deep search tasks\n(agent swarm, ch 08)"),
    ]
    for y, text in uses:
        box(ax, 9.6, y - 0.55, 4.0, 1.3, text, "white", fontsize=9.5)
        arrow(ax, (7.8, y + 0.1), (9.6, y + 0.1))
    ax.text(7.0, 0.05, "a fact lives in text only; a look lives in pixels only: a VisKnow question needs both",
            ha="center", fontsize=9, style="italic")
    ax.set_title("The toy world: one seeded generator, three renderings, three uses", fontsize=11)
    save(fig, "00b_world.png")


def wide_search():
    """00b: a wide table filled by one agent (serial browses) vs a swarm (rows split)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    n = 12
    for ax, k, title in ((axes[0], 1, "one agent: 12 browses in a row"),
                         (axes[1], 4, "4 subagents: 3 browses each, in parallel")):
        for i in range(n):
            agent, step = i % k, i // k
            ax.add_patch(Rectangle((step, agent), 0.9, 0.8, fc=plt.get_cmap("tab10")(agent), ec="k"))
            ax.text(step + 0.45, agent + 0.4, f"row {i + 1}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xlim(-0.2, n + 0.2)
        ax.set_ylim(-0.3, 4.2)
        ax.set_xlabel("step (one browse each)")
        ax.set_ylabel("agent")
        ax.set_yticks([0.4 + a for a in range(k)], [str(a) for a in range(k)])
        ax.set_title(title, fontsize=10)
        ax.axvline(-(-n // k), color="r", ls="--", lw=1)
        ax.text(-(-n // k) + 0.1, 3.9, "critical steps", color="r", fontsize=8)
    fig.suptitle("A wide-search table: one browse per row; the longest agent sets the wall-clock time", fontsize=11)
    plt.tight_layout()
    save(fig, "00b_wide_search.png")


def patchify():
    """01: a picture -> resized to a patch grid -> p x p patches -> rows of one matrix."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    rng = np.random.default_rng(3)
    img = np.ones((30, 44, 3)) * np.array([0.85, 0.9, 1.0])
    img[6:20, 8:26] = [0.95, 0.6, 0.2]
    img[14:28, 24:40] = [0.3, 0.6, 0.3]
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("picture 30 x 44 px (any size)", fontsize=10)
    h, w, p = 4, 6, 8
    small = img[np.linspace(0, 29, h * p).astype(int)][:, np.linspace(0, 43, w * p).astype(int)]
    axes[1].imshow(small, interpolation="nearest")
    for i in range(1, h):
        axes[1].axhline(i * p - 0.5, color="k", lw=1)
    for j in range(1, w):
        axes[1].axvline(j * p - 0.5, color="k", lw=1)
    axes[1].set_title(f"resized to a {h} x {w} grid of {p} x {p} patches", fontsize=10)
    flat = small.reshape(h, p, w, p, 3).transpose(0, 2, 4, 1, 3).reshape(h * w, 3 * p * p)
    axes[2].imshow(flat.mean(-1) if flat.ndim == 3 else flat, aspect="auto", interpolation="nearest", cmap="gray")
    axes[2].set_title("rearrange 'c (h py) (w px) -> (h w) (c py px)'", fontsize=10)
    axes[2].set_xlabel("3 * p * p values, channel first")
    axes[2].set_ylabel("patch index (row-major)")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    del rng
    fig.suptitle("Patchify: every picture becomes a [h*w, 3*p*p] matrix, one row per patch", fontsize=11)
    plt.tight_layout()
    save(fig, "01_patchify.png")


def pack_and_mask():
    """01: three items of lengths 4, 6, 2 -> one packed row with cu_seqlens, and the block-diagonal mask."""
    lens = [4, 6, 2]
    cu = np.concatenate([[0], np.cumsum(lens)])
    seg = np.repeat(np.arange(len(lens)), lens)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    for i, n in enumerate(lens):
        for j in range(n):
            ax.add_patch(Rectangle((j, 2.2 - i), 0.9, 0.6, fc=cmap(i), ec="k"))
        ax.text(-0.3, 2.5 - i, f"item {i}: {n} patches", ha="right", va="center", fontsize=9)
    for t in range(cu[-1]):
        ax.add_patch(Rectangle((t, -0.6), 0.9, 0.6, fc=cmap(seg[t]), ec="k"))
    for c in cu:
        ax.annotate(str(c), (c - 0.05, -0.65), (c - 0.05, -1.3), ha="center", fontsize=9,
                    arrowprops=dict(arrowstyle="-", color="r"))
    ax.text(-0.3, -0.3, "packed", ha="right", va="center", fontsize=9)
    ax.text(6, -1.8, f"cu_seqlens = {cu.tolist()}   (item i owns rows cu[i]:cu[i+1])", ha="center", fontsize=9.5,
            color="r")
    ax.set_xlim(-4.5, 12.5)
    ax.set_ylim(-2.2, 3.2)
    ax.axis("off")
    ax.set_title("concatenate the items; remember where each starts", fontsize=10)
    mask = seg[:, None] == seg[None, :]
    rgb = np.ones((*mask.shape, 3))
    for i in range(len(lens)):
        rgb[(seg[:, None] == i) & mask] = cmap(i)[:3]
    axes[1].imshow(rgb, interpolation="nearest")
    axes[1].set_xticks(range(cu[-1]))
    axes[1].set_yticks(range(cu[-1]))
    axes[1].set_xlabel("key position j")
    axes[1].set_ylabel("query position i")
    axes[1].set_title("attention allowed only inside an item\n(white = masked out)", fontsize=10)
    fig.suptitle("Patch n' pack: one sequence, a block-diagonal attention mask, no padding", fontsize=11)
    plt.tight_layout()
    save(fig, "01_pack_and_mask.png")


if __name__ == "__main__":
    for draw in (k25_map, k25_recipe, toy_world, wide_search, patchify, pack_and_mask):
        draw()
