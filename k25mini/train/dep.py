"""Decoupled Encoder Process (DEP, K2.5 arXiv 2602.02276, training infrastructure): the vision tower leaves the
pipeline.

With pipeline-parallel LLM stages the vision tower sits on stage 0, and its cost follows the number and size of
the images in each micro-batch, so stage 0 becomes the slowest stage on image-heavy micro-batches and the whole
pipeline waits for it. DEP splits a training step into three phases:

1. **balanced vision forward**: every image of the step is encoded once, the images spread evenly over all GPUs
   (:func:`balance_media`), under ``torch.no_grad`` (the outputs are kept, the activations are not);
2. **backbone forward/backward**: the pipeline trains on the vision embeddings as leaf inputs and keeps their
   gradients;
3. **vision recompute + backward**: each GPU re-runs its share of the vision forward with autograd and
   back-propagates the saved embedding gradients.

:func:`decoupled_step` does the three phases for :class:`~k25mini.multimodal.K25ForConditionalGeneration` in one
process (``vision_ranks`` shares stand for the GPUs) and leaves in ``.grad`` what :func:`coupled_step` leaves
(tested to fp32 tolerance). :func:`simulate_pipeline` is a 1F1B pipeline simulator with per-stage, per-micro-batch
costs; :func:`dep_balance` uses it to compare the coupled and decoupled schedules on mixed image/text batches,
with costs in FLOPs from the config (:func:`flops_per_token`, :func:`vision_flops_per_patch`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import torch

from k25mini.config import ModelConfig, count_params

__all__ = [
    "coupled_step",
    "decoupled_step",
    "balance_media",
    "simulate_pipeline",
    "flops_per_token",
    "vision_flops_per_patch",
    "dep_balance",
]


def _check_batch(model: Any, input_ids: torch.Tensor, labels: torch.Tensor) -> None:
    from k25mini.multimodal import K25ForConditionalGeneration

    if not isinstance(model, K25ForConditionalGeneration):
        raise ValueError(f"model must be a K25ForConditionalGeneration, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError("input_ids must be an integer tensor [B, S]")
    if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
        raise ValueError(f"labels must be a tensor shaped like input_ids {tuple(input_ids.shape)}")


def coupled_step(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, media: Sequence[Any] = (),
                 *, aux: bool = False, **kw: Any) -> torch.Tensor:
    """The usual step: vision tower and backbone in one graph; ``loss.backward()``. Returns the detached loss.

    ``aux``: add the MoE sequence-balance loss. ``kw`` go to the backbone (``doc_ids``, ``shift``...)."""
    _check_batch(model, input_ids, labels)
    loss = model.loss(input_ids, labels, media=list(media), **kw)
    if aux:
        loss = loss + model.moe_aux_loss()
    loss.backward()
    return loss.detach()


def balance_media(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Spread items of the given ``costs`` over ``ranks`` so the largest per-rank sum is small: longest first, each
    to the least-loaded rank (LPT; within 4/3 of the optimum). Returns each rank's item indices, ascending."""
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks <= 0:
        raise ValueError(f"ranks must be an int > 0, got {ranks!r}")
    costs = list(costs)
    if any(not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or c < 0 for c in costs):
        raise ValueError("costs must be finite numbers >= 0")
    heap = [(0.0, r) for r in range(ranks)]
    out: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + costs[i], r))
    return [sorted(o) for o in out]


def decoupled_step(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, media: Sequence[Any] = (),
                   *, vision_ranks: int = 1, aux: bool = False, **kw: Any) -> torch.Tensor:
    """DEP's three phases (module docstring); accumulates into ``.grad`` what :func:`coupled_step` does.

    ``vision_ranks``: the media are split into that many shares balanced by patch count (:func:`balance_media`),
    each encoded on its own, as the GPUs of phase 1 and phase 3 would. Returns the detached loss.
    """
    from k25mini.multimodal import scatter_media

    _check_batch(model, input_ids, labels)
    if isinstance(vision_ranks, bool) or not isinstance(vision_ranks, int) or vision_ranks <= 0:
        raise ValueError(f"vision_ranks must be an int > 0, got {vision_ranks!r}")
    media = list(media)
    tower = model.vision_tower
    n_pads = int((input_ids == model.pad_id).sum())
    if not media and n_pads:
        raise ValueError(f"media: input_ids hold {n_pads} <|media_pad|> tokens but no media were given")

    # phase 1: balanced vision forward, outputs only
    counts = [sum(model.media_token_counts(m)) for m in media]
    shares = [s for s in balance_media(counts, vision_ranks) if s]
    embeds: list[torch.Tensor | None] = [None] * len(media)
    with torch.no_grad():
        for share in shares:
            for i, e in zip(share, tower.encode([media[i] for i in share])):
                embeds[i] = e
    leaves = [e.detach().requires_grad_(True) for e in embeds]  # type: ignore[union-attr]

    # phase 2: the backbone, with the vision embeddings as inputs
    tok = model.language_model.model.embed_tokens(input_ids)
    fused = scatter_media(tok, input_ids, torch.cat(leaves, 0), model.pad_id) if leaves else tok
    loss = model.language_model.loss(inputs_embeds=fused, labels=labels, shift=kw.pop("shift", False), **kw)
    if aux:
        loss = loss + model.moe_aux_loss()
    loss.backward()

    # phase 3: recompute each share with autograd, back-propagate the saved embedding gradients
    for share in shares:
        outs = tower.encode([media[i] for i in share])
        grads = [leaves[i].grad if leaves[i].grad is not None else torch.zeros_like(leaves[i]) for i in share]
        torch.autograd.backward(outs, grads)
    return loss.detach()


# --------------------------------------------------------------------------------------------
# Pipeline balance: costs and a 1F1B simulator
# --------------------------------------------------------------------------------------------
def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of the text backbone per token: 2 x activated parameters (embedding excluded) plus causal
    attention (2 x 2 x H x (qk + v) / 2 x seq_len per layer on average)."""
    t = cfg.text
    pc = count_params(ModelConfig(text=t))
    dense = pc.activated - pc.by_component["embedding"]
    attn = t.num_hidden_layers * 2 * t.num_attention_heads * (t.qk_head_dim + t.v_head_dim) * seq_len
    return 2.0 * dense + attn


def vision_flops_per_patch(cfg: ModelConfig, patches_per_image: int) -> float:
    """Forward FLOPs of MoonViT-3D per patch: 2 x its matrix parameters per patch, plus full attention within an
    image of ``patches_per_image`` patches (2 x 2 x hidden x n per layer), plus the projector per merged token."""
    v = cfg.vision
    if v is None:
        raise ValueError("cfg has no vision tower (cfg.vision is None)")
    D, I = v.hidden_size, v.intermediate_size
    per_layer = 2 * (3 * D * D + D * D + 2 * D * I) + 4 * D * patches_per_image
    M = v.mm_hidden_size
    proj = 2 * (M * M + M * cfg.text.hidden_size) / v.merge_area
    return v.num_hidden_layers * per_layer + 2 * 3 * v.patch_size ** 2 * D + proj


def simulate_pipeline(fwd: Sequence[Sequence[float]], bwd: Sequence[Sequence[float]]) -> float:
    """Makespan of a non-interleaved 1F1B schedule. ``fwd[s][m]`` / ``bwd[s][m]``: time of micro-batch ``m`` on
    stage ``s``. Stage ``s`` runs ``P - s - 1`` warm-up forwards, then alternates one forward and one backward,
    then drains its backwards; a forward waits for the previous stage's, a backward for the next stage's."""
    P = len(fwd)
    if P == 0 or len(bwd) != P:
        raise ValueError("fwd and bwd must be non-empty lists of per-stage costs of equal length")
    M = len(fwd[0])
    if M == 0 or any(len(r) != M for r in list(fwd) + list(bwd)):
        raise ValueError("every stage must list the same number (> 0) of micro-batch costs")
    orders = []
    for s in range(P):
        warm = min(P - s - 1, M)
        order = [("F", m) for m in range(warm)]
        f, b = warm, 0
        while b < M:
            if f < M:
                order.append(("F", f))
                f += 1
            order.append(("B", b))
            b += 1
        orders.append(order)
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * P
    pos = [0] * P
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(P):
            while pos[s] < len(orders[s]):
                kind, m = orders[s][pos[s]]
                dep = ("F", s - 1, m) if kind == "F" else ("B", s + 1, m)
                if kind == "F" and s == 0:
                    ready = 0.0
                elif kind == "B" and s == P - 1:
                    ready = done.get(("F", s, m), math.inf)
                else:
                    ready = done.get(dep, math.inf)
                    if kind == "B":
                        ready = max(ready, done.get(("F", s, m), math.inf))
                if ready == math.inf:
                    break
                start = max(free[s], ready)
                free[s] = start + (fwd[s][m] if kind == "F" else bwd[s][m])
                done[(kind, s, m)] = free[s]
                pos[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - the schedule above is always feasible
            raise RuntimeError("pipeline schedule deadlocked")
    return max(free)


def dep_balance(cfg: ModelConfig, *, stages: int = 16, micro_batches: int = 64, seq_len: int = 4096,
                image_prob: float = 0.4, max_images: int = 4, patch_range: tuple[int, int] = (256, 4096),
                seed: int = 0) -> dict[str, float]:
    """Compare coupled (vision on stage 0) and decoupled (DEP) steps of a ``stages``-stage 1F1B pipeline.

    Each micro-batch holds ``seq_len`` tokens; with probability ``image_prob`` it carries 1..``max_images`` images
    of ``patch_range`` patches each (uniform; merged 4:1 into tokens that replace text tokens). Costs are FLOPs
    (backward = 2 x forward): the backbone's split evenly over the stages; coupled, stage 0 also runs the vision
    forward and backward of its micro-batch; decoupled, the step's images are spread over the ``stages`` GPUs
    (:func:`balance_media`) for a no-grad forward before the pipeline and a recompute forward + backward after.
    Efficiency = useful FLOPs per second relative to a text-only step of the same tokens (recompute is not
    useful work). Returns the step times, the efficiencies, and stage 0's share of the coupled step.
    """
    for name, v in (("stages", stages), ("micro_batches", micro_batches), ("seq_len", seq_len),
                    ("max_images", max_images)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be an int > 0, got {v!r}")
    if not 0 <= image_prob <= 1:
        raise ValueError(f"image_prob must be in [0, 1], got {image_prob!r}")
    lo, hi = patch_range
    if not 0 < lo <= hi:
        raise ValueError(f"patch_range must be (lo, hi) with 0 < lo <= hi, got {patch_range!r}")
    if cfg.vision is None:
        raise ValueError("cfg has no vision tower (cfg.vision is None)")
    g = torch.Generator().manual_seed(seed)
    tok_f = flops_per_token(cfg, seq_len)
    text_stage = seq_len * tok_f / stages
    vis = []  # per micro-batch: list of image forward FLOPs
    for _ in range(micro_batches):
        imgs = []
        if float(torch.rand((), generator=g)) < image_prob:
            for _ in range(int(torch.randint(1, max_images + 1, (), generator=g))):
                n = int(torch.randint(lo, hi + 1, (), generator=g))
                imgs.append(n * vision_flops_per_patch(cfg, n))
        vis.append(imgs)
    vis_mb = [sum(v) for v in vis]
    text_f = [[text_stage] * micro_batches for _ in range(stages)]
    text_b = [[2 * text_stage] * micro_batches for _ in range(stages)]
    t_text = simulate_pipeline(text_f, text_b)
    cf = [row[:] for row in text_f]
    cb = [row[:] for row in text_b]
    cf[0] = [text_stage + v for v in vis_mb]
    cb[0] = [2 * text_stage + 2 * v for v in vis_mb]
    t_coupled = simulate_pipeline(cf, cb)
    flat = [c for v in vis for c in v]
    shares = balance_media(flat, stages)
    per_gpu = max(sum(flat[i] for i in s) for s in shares) if flat else 0.0
    t_dep = per_gpu + t_text + 3 * per_gpu  # phase 1 forward; pipeline; phase 3 forward + backward
    useful_text = 3 * micro_batches * seq_len * tok_f
    useful = useful_text + 3 * sum(vis_mb)
    rate_text = useful_text / t_text
    return {
        "t_text_only": t_text, "t_coupled": t_coupled, "t_dep": t_dep,
        "efficiency_coupled": useful / t_coupled / rate_text, "efficiency_dep": useful / t_dep / rate_text,
        "speedup_dep": t_coupled / t_dep, "vision_flop_share": 3 * sum(vis_mb) / useful,
        "images": float(len(flat)), "micro_batches_with_images": float(sum(1 for v in vis if v)),
        "stage0_max_over_mean": max(f + b for f, b in zip(cf[0], cb[0])) / (3 * text_stage),
    }
