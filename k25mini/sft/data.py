"""Chapter 06's SFT sets and batches.

:func:`build_sft_set` draws a set for one arm of the experiment from the world's *train* split (eval items,
scenes and charts stay held out):

* ``zero_vision``: text only. Text twins of the tool skills (count, compare, locate, chart, motion: a program on
  the kernel's array; half concise and half verbose; half with the picture described in text before the
  question, half with the question alone), the same skills' questions that no program answers as direct
  answers from the description (shape counts), and text replay: rows of chapter 05's text pre-training
  corpora (a third each of ``text_knowledge``, ``text_reasoning`` and ``code``; encyclopedia pages are whole
  documents with every token trained, questions are answered directly) so what pre-training taught is kept.
* ``text_visual``: the same set with a share of its tool rows replaced by *visual* trajectories - the same
  calls on real images seen as media tokens - covering a narrow subset of the skills (``visual_skills``,
  default count and compare). Same number of rows, so both arms train on matched budgets.

:func:`sft_batch` pads a list of trajectories into one batch (labels already shifted; ``-100`` on the prompt,
the tool results and the padding) and :func:`sft_loss` is the Trainer's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.sft.programs import program_for
from k25mini.sft.trajectories import (
    CONTEXTS,
    Trajectory,
    direct,
    document,
    encode_trajectory,
    local_runner,
    run_programs,
    text_twin,
    visual_trajectory,
    with_system,
)
from k25mini.world import TEXT_CORPORA, World, corpus_item
from k25mini.world.rng import rng_for

__all__ = ["ARMS", "SFT_DATA_VERSION", "TOOL_SKILLS", "REPLAY_CORPORA", "build_sft_set", "sft_batch", "sft_loss",
           "set_summary"]

ARMS = ("zero_vision", "text_visual")
#: bump when what build_sft_set draws changes (chapter 06's run keys include it, so old checkpoints are not reused)
SFT_DATA_VERSION = 4  # 4: replay = pre-training text corpora (pages as documents); "video" stubs
TOOL_SKILLS: tuple[str, ...] = ("count", "compare", "locate", "chart", "motion")
#: replay: rows of chapter 05's text pre-training corpora (encyclopedia pages and fact questions, text reasoning,
#: code), so what pre-training taught from text is not forgotten
REPLAY_CORPORA: tuple[str, ...] = TEXT_CORPORA


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def build_sft_set(world: World, arm: str, n: int, seed: int = 0, replay_share: float = 0.4,
                  visual_share: float = 0.25, visual_skills: Sequence[str] = ("count", "compare"),
                  contexts: Sequence[str] = ("describe", "none", "stub"), runner=local_runner,
                  system: str = "", replay_rows: int | None = None) -> list[Trajectory]:
    """``n`` trajectories for ``arm`` (see the module docstring), deterministic in (world, arm-independent
    draws, ``seed``): both arms share every text row; ``text_visual`` swaps some tool rows for visual ones.
    ``system`` (e.g. :data:`~k25mini.sft.trajectories.TOOLS_SYSTEM`) goes before the prompt of every row but the
    replayed documents: the tool is available in every conversation of the set.

    The set holds ``n - round(n * replay_share)`` twin rows and ``replay_rows`` replay rows (default
    ``round(n * replay_share)``, i.e. ``n`` rows in all); more replay rows leave the twin rows unchanged, so a
    training loop can stream replay (each replay row once) while it repeats the twins. Replay rows carry
    ``meta["replay"] = True``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    n = _check_int("n", n, 1)
    if not 0.0 <= replay_share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share!r}")
    if not 0.0 <= visual_share <= 1.0:
        raise ValueError(f"visual_share must be in [0, 1], got {visual_share!r}")
    if not contexts or any(c not in CONTEXTS for c in contexts) or "describe" not in contexts:
        raise ValueError(f"contexts must be a subset of {CONTEXTS} that includes 'describe', got {list(contexts)}")
    bad = [s for s in visual_skills if s not in TOOL_SKILLS]
    if bad or not visual_skills:
        raise ValueError(f"visual_skills must be a non-empty subset of {TOOL_SKILLS}, got {list(visual_skills)}")
    n_twin = n - int(round(n * replay_share))
    n_replay = n - n_twin if replay_rows is None else _check_int("replay_rows", replay_rows, 0)
    rows: list[Trajectory] = []
    i = 0
    while len(rows) < n_twin:  # twins (tool rows and direct description answers), round-robin by skill
        skill = TOOL_SKILLS[i % len(TOOL_SKILLS)]
        item = world.sample(skill, "train", rng_for(world.seed, "sft", "twin", seed, i))
        rnd = i // len(TOOL_SKILLS)
        style = "verbose" if rnd % 2 else "concise"
        context = contexts[(rnd // 2) % len(contexts)] if program_for(item.prompt) is not None else "describe"
        i += 1
        t = text_twin(item, style, context)
        t.meta["image_item"] = item
        kept = run_programs([t], runner)
        rows.extend(kept)
    picks = rng_for(world.seed, "sft", "replay", seed).integers(world.sizes.corpus_rows, size=n_replay)
    for j in range(n_replay):  # chapter 05's text corpora, a third each, trained as pre-training trained them
        item = corpus_item(world, REPLAY_CORPORA[j % len(REPLAY_CORPORA)], int(picks[j]))
        r = document(item) if not item.answer else direct(item, "replay")
        r.meta["replay"] = True
        rows.append(r)
    if arm == "text_visual":
        tool_rows = [k for k, t in enumerate(rows) if t.uses_tool]
        n_vis = int(round(len(tool_rows) * visual_share))
        rng = np.random.default_rng([world.seed, seed, 6])
        swap = sorted(rng.choice(tool_rows, size=n_vis, replace=False).tolist()) if n_vis else []
        j = 0
        for k in swap:
            while True:  # a fresh train image of a visual skill whose program matches
                skill = visual_skills[j % len(visual_skills)]
                item = world.sample(skill, "train", rng_for(world.seed, "sft", "visual", seed, j))
                j += 1
                try:
                    v = visual_trajectory(item, rows[k].meta["style"])
                except ValueError:  # no program for this question form (e.g. a shape count)
                    continue
                kept = run_programs([v], runner)
                if kept:
                    rows[k] = kept[0]
                    break
    for t in rows:
        t.meta.pop("image_item", None)
        if t.meta.get("kind") != "document":
            t.item = with_system(t.item, system)
    order = np.random.default_rng([world.seed, seed, 7]).permutation(len(rows))
    return [rows[int(k)] for k in order]


def set_summary(rows: Sequence[Trajectory]) -> dict[str, Any]:
    """Counts by source and kind, and which skills have text twins / visual rows (the report states them)."""
    by: dict[str, int] = {}
    for t in rows:
        key = f"{t.meta.get('source')}:{t.meta.get('kind')}"
        by[key] = by.get(key, 0) + 1
    twins = sorted({t.meta.get("skill") for t in rows if t.meta.get("source") == "text_twin" and t.uses_tool})
    vis = sorted({t.meta.get("skill") for t in rows if t.meta.get("source") == "visual"})
    return {"rows": len(rows), "by_source_kind": dict(sorted(by.items())), "tool_twin_skills": twins,
            "visual_skills": vis, "images": sum(len(t.item.images) for t in rows)}


def sft_batch(trajs: Sequence[Trajectory], tok: Tokenizer, counts_fn, max_len: int | None = None) -> dict[str, Any]:
    """Right-padded ``input_ids`` [B, S] and next-token ``labels`` [B, S] (``-100`` where the next token is not the
    assistant's, and on padding), ``media`` in row-major order."""
    if not trajs:
        raise ValueError("trajs must be a non-empty sequence of trajectories")
    enc = [encode_trajectory(t, tok, counts_fn) for t in trajs]
    S = max(len(ids) for ids, _, _ in enc)
    if max_len is not None and S > max_len:
        raise ValueError(f"a trajectory has {S} tokens, more than max_len={max_len}")
    ids_t = torch.full((len(enc), S), tok.pad_id, dtype=torch.long)
    labels = torch.full((len(enc), S), -100, dtype=torch.long)
    media: list[np.ndarray] = []
    for r, (ids, train, m) in enumerate(enc):
        ids_t[r, : len(ids)] = torch.tensor(ids)
        nxt = torch.tensor(ids[1:])
        keep = torch.tensor(train[1:], dtype=torch.bool)
        labels[r, : len(ids) - 1] = torch.where(keep, nxt, torch.full_like(nxt, -100))
        media.extend(m)
    return {"input_ids": ids_t, "labels": labels, "media": media,
            "assistant_tokens": int((labels != -100).sum())}


def sft_loss(model, batch: dict[str, Any]):
    """Cross-entropy on the assistant's tokens (+ the MoE aux loss)."""
    loss = model.loss(batch["input_ids"], batch["labels"], media=batch["media"] or None)
    aux = model.moe_aux_loss().to(loss.device)
    return loss + aux, {"sft_loss": loss.detach()}
