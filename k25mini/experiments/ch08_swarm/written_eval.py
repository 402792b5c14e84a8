"""Honest evaluation of the written swarm (issue #18, DESIGN §8): critical-step budget sweeps per policy, and
latency at matched item-F1.

A *curve* is one policy's sweep: for each critical-steps budget (``None``: unbounded), the mean item-F1 over the
tasks and the mean critical steps the episodes actually used (a cut-off episode counts the steps it ran and
scores 0). The headline comparison (:func:`matched_latency`) takes the single agent's best item-F1 over its
sweep as the target, and compares the fewest mean critical steps at which each policy reaches it.

Scripted baselines (:func:`scripted_curves`) run :class:`~k25mini.swarm.written.WrittenTeacher` at fixed
widths: ``0`` is a serial single agent, ``w > 0`` a swarm that fans out into ``w`` subagents, and the
unlimited-context single agent is the serial one with a window no task fills. They bound what the environment
allows: a learned policy writes the same kind of text, so the scripted ratios show how large a speed-up the
task sizes leave room for at all.

    python -m k25mini.experiments.ch08_swarm.written_eval --split dev [--window 1000 --rows 4 10 ...]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from k25mini.data.bpe import BPETokenizer
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch08_swarm.learned_seeds import DEV_WORLD_SEEDS, EVAL_WORLD_SEEDS, TRAIN_WORLD_SEEDS
from k25mini.model import K2ForCausalLM
from k25mini.swarm import make_swarm_tasks, score_answer
from k25mini.swarm.train import lm_config
from k25mini.swarm.written import (
    TextOnlyVLM,
    WrittenEnv,
    WrittenPolicy,
    WrittenTeacher,
    run_written,
    train_trace_tokenizer,
)
from k25mini.world import World

__all__ = ["DEFAULT_BUDGETS", "UNLIMITED_WINDOW", "budget_sweep", "steps_at_f1", "matched_latency",
           "scripted_curves", "learned_curves", "load_text_lm", "world_tasks"]

#: critical-steps budgets of a sweep (None: unbounded)
DEFAULT_BUDGETS: tuple[int | None, ...] = (4, 6, 8, 10, 12, 16, 24, None)
#: the context window of the unlimited-context single agent (no task of the written world comes near it)
UNLIMITED_WINDOW = 1_000_000


def _check_budgets(budgets: Sequence[int | None]) -> tuple[int | None, ...]:
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or not budgets:
        raise ValueError(f"budgets must be a non-empty sequence of ints >= 1 or None, got {budgets!r}")
    for b in budgets:
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"budgets must be ints >= 1 or None, got {b!r} in {budgets!r}")
    return tuple(budgets)


def world_tasks(world_seeds: Sequence[int], env: WrittenEnv, n_wide: int, n_deep: int = 0
                ) -> list[tuple[World, list[Any]]]:
    """The task set of each world: ``n_wide`` wide tasks sized by ``env`` (rows) and ``n_deep`` deep ones."""
    if not world_seeds:
        raise ValueError("world_seeds must not be empty")
    out = []
    for ws in world_seeds:
        w = World(seed=int(ws), n_entities=env.n_entities)
        out.append((w, make_swarm_tasks(w, n_wide, n_deep, min_rows=env.min_rows, max_rows=env.max_rows)))
    return out


def budget_sweep(task_sets: Sequence[tuple[World, Sequence[Any]]], main: Any, sub: Any, env: WrittenEnv, *,
                 swarm: bool, budgets: Sequence[int | None] = DEFAULT_BUDGETS, window: int | None = None,
                 tokenizer: Tokenizer | None = None) -> list[dict[str, Any]]:
    """One point per budget: mean item-F1 and mean critical steps per task kind (``wide``, ``deep``; every
    task of every world counted once), the share of finished episodes, errors counted by kind, and per-world
    means. ``window`` overrides the env's context window (the unlimited-context baseline); windows count
    ``tokenizer``'s tokens (bytes when None)."""
    budgets = _check_budgets(budgets)
    if not task_sets:
        raise ValueError("task_sets must not be empty")
    curve = []
    for b in budgets:
        rows: list[tuple[int, str, float, int, bool]] = []
        errors: dict[str, int] = {}
        for w, tasks in task_sets:
            eps, _ = run_written(w, tasks, main, sub, env, swarm=swarm, budget=b, window=window,
                                 prefix=f"w{w.seed}-b{b}", tokenizer=tokenizer)
            for t, e in zip(tasks, eps):
                rows.append((w.seed, t.kind, float(score_answer(t, e.answer)["item_f1"]), e.critical_steps,
                             bool(e.finished)))
                for k, v in e.errors.items():
                    errors[k] = errors.get(k, 0) + v
        point: dict[str, Any] = {"budget": b, "errors": errors, "episodes": len(rows)}
        for kind in ("wide", "deep"):
            rs = [r for r in rows if r[1] == kind]
            if not rs:
                continue
            point[kind] = {
                "item_f1": sum(r[2] for r in rs) / len(rs),
                "critical_steps": sum(r[3] for r in rs) / len(rs),
                "finished": sum(r[4] for r in rs) / len(rs),
                "per_world": {str(ws): {"item_f1": _mean([r[2] for r in rs if r[0] == ws]),
                                        "critical_steps": _mean([r[3] for r in rs if r[0] == ws])}
                              for ws in dict.fromkeys(r[0] for r in rs)},
            }
        curve.append(point)
    return curve


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def steps_at_f1(curve: Sequence[dict[str, Any]], target: float, kind: str = "wide", tol: float = 1e-9
                ) -> float | None:
    """The fewest mean critical steps among the curve's points whose mean item-F1 reaches ``target`` (None when
    no point does)."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be an item-F1 in [0, 1], got {target!r}")
    hits = [p[kind]["critical_steps"] for p in curve if kind in p and p[kind]["item_f1"] >= target - tol]
    return min(hits) if hits else None


def matched_latency(single: Sequence[dict[str, Any]], swarm: Sequence[dict[str, Any]], kind: str = "wide",
                    target: float | None = None) -> dict[str, Any]:
    """Latency at matched item-F1: ``target`` (default: the single agent's best mean item-F1 over its sweep),
    the fewest mean critical steps at which each reaches it, and their ratio (single / swarm; None when the
    swarm never reaches the target)."""
    if not single or not swarm:
        raise ValueError("single and swarm must be non-empty curves")
    best = max(p[kind]["item_f1"] for p in single if kind in p)
    t = best if target is None else float(target)
    s_single, s_swarm = steps_at_f1(single, t, kind), steps_at_f1(swarm, t, kind)
    ratio = s_single / s_swarm if s_single is not None and s_swarm else None
    return {"target_f1": t, "single_best_f1": best, "swarm_best_f1": max(p[kind]["item_f1"] for p in swarm
                                                                        if kind in p),
            "single_steps": s_single, "swarm_steps": s_swarm, "ratio": ratio}


def scripted_curves(task_sets: Sequence[tuple[World, Sequence[Any]]], env: WrittenEnv,
                    widths: Sequence[int] = (2, 4, 8), budgets: Sequence[int | None] = DEFAULT_BUDGETS,
                    seed: int = 0, tokenizer: Tokenizer | None = None) -> dict[str, list[dict[str, Any]]]:
    """The scripted baselines: ``single`` (serial, the env's window), ``single_unlimited`` (serial, a window no
    task fills) and ``swarm_w<width>`` for each width (the teacher's fan-out fixed to it). Windows count
    ``tokenizer``'s tokens (bytes when None)."""
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of ints >= 1, got {widths!r}")
    serial = WrittenTeacher(widths=(0,), seed=seed, tokenizer=tokenizer)
    out = {"single": budget_sweep(task_sets, serial, serial, env, swarm=False, budgets=budgets, tokenizer=tokenizer),
           "single_unlimited": budget_sweep(task_sets, serial, serial, env, swarm=False, budgets=budgets,
                                            window=UNLIMITED_WINDOW, tokenizer=tokenizer)}
    for w in widths:
        t = WrittenTeacher(widths=(w,), seed=seed, tokenizer=tokenizer)
        out[f"swarm_w{w}"] = budget_sweep(task_sets, t, t, env, swarm=True, budgets=budgets, tokenizer=tokenizer)
    return out


def learned_curves(task_sets: Sequence[tuple[World, Sequence[Any]]], env: WrittenEnv, main: Any, sub: Any,
                   budgets: Sequence[int | None] = DEFAULT_BUDGETS, tokenizer: Tokenizer | None = None
                   ) -> dict[str, list[dict[str, Any]]]:
    """A learned policy's sweeps in both modes: ``learned_single`` (``main`` alone, browse and finish only) and
    ``learned_swarm`` (``main`` as the orchestrator, ``sub`` as every subagent)."""
    kw = {"budgets": budgets, "tokenizer": tokenizer}
    return {"learned_single": budget_sweep(task_sets, main, sub, env, swarm=False, **kw),
            "learned_swarm": budget_sweep(task_sets, main, sub, env, swarm=True, **kw)}


def load_text_lm(path: str, hidden: int, layers: int, max_positions: int) -> TextOnlyVLM:
    """A text-only K2 state dict (e.g. ``model.pt`` of ``tools/ch08_written_probe.py``) as a greedy
    :class:`~k25mini.swarm.written.WrittenPolicy` backbone (:class:`~k25mini.swarm.written.TextOnlyVLM`). The
    vocabulary size is read off the state dict (512 for the byte tokenizer, more for a BPE one)."""
    state = torch.load(path, map_location="cpu")
    emb = state.get("model.embed_tokens.weight")
    cfg = replace(lm_config(hidden, layers), max_position_embeddings=max_positions)
    if emb is not None:
        cfg = replace(cfg, vocab_size=int(emb.shape[0]))
    lm = K2ForCausalLM(cfg)
    lm.load_state_dict(state)
    return TextOnlyVLM(lm.eval())


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _worlds(split: str, n: int) -> tuple[int, ...]:
    if split == "dev":
        return DEV_WORLD_SEEDS
    if split == "train":
        return tuple(TRAIN_WORLD_SEEDS[:n])
    return EVAL_WORLD_SEEDS


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Scripted budget sweeps of the written swarm and the latency at "
                                 "matched item-F1 they leave room for (issue #18).")
    ap.add_argument("--split", choices=("dev", "train", "eval"), default="dev",
                    help="dev: world 7; train: the first --n-worlds training worlds; eval: the frozen final "
                         "worlds (only with --final: never for a choice)")
    ap.add_argument("--final", action="store_true", help="allow --split eval")
    ap.add_argument("--n-worlds", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=8, help="wide tasks per world")
    ap.add_argument("--deep", type=int, default=0, help="deep tasks per world")
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--entities", type=int, default=None, help="entities per world (default: WrittenEnv's)")
    ap.add_argument("--rows", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--model", default=None, help="a text-only K2 state dict to sweep beside the scripted "
                    "baselines (orchestrator, subagents and single agent; greedy)")
    ap.add_argument("--hidden", type=int, default=64, help="--model's width")
    ap.add_argument("--layers", type=int, default=4, help="--model's depth")
    ap.add_argument("--tokenizer", default=None, help="a BPE tokenizer file (BPETokenizer.save; a probe's bpe.json): "
                    "windows count its tokens, and --model reads and writes with it (default: bytes)")
    ap.add_argument("--bpe", type=int, default=0, metavar="VOCAB",
                    help="train a BPE tokenizer of this vocabulary size on the teacher's traces of the first "
                         "--bpe-worlds training worlds (byte windows of this run's sizes) and count windows in its "
                         "tokens; --save-tokenizer keeps it")
    ap.add_argument("--bpe-worlds", type=int, default=480)
    ap.add_argument("--bpe-window", type=int, default=None,
                    help="byte window of the traces --bpe learns from (default: --window)")
    ap.add_argument("--save-tokenizer", default=None)
    ap.add_argument("--budgets", nargs="+", default=None, help="critical-steps budgets (ints; 'none': unbounded)")
    ap.add_argument("--json", default=None, help="write the curves and ratios to this file")
    a = ap.parse_args(argv)
    if a.split == "eval" and not a.final:
        ap.error("--split eval reads the frozen final worlds: pass --final, and never use it to choose anything")
    sizes: dict[str, int] = {}
    if a.entities is not None:
        sizes["n_entities"] = a.entities
    if a.rows:
        sizes.update(min_rows=a.rows[0], max_rows=a.rows[1])
    if a.window is not None or a.max_new_tokens is not None:
        base = WrittenEnv()
        sizes["window"] = a.window if a.window is not None else base.window
        sizes["max_new_tokens"] = a.max_new_tokens if a.max_new_tokens is not None else base.max_new_tokens
        sizes["max_positions"] = sizes["window"] + sizes["max_new_tokens"] + 2  # <|bos|>, final <|im_assistant|>
    env = WrittenEnv(**sizes)
    sets = world_tasks(_worlds(a.split, a.n_worlds), env, a.tasks, a.deep)
    budgets = DEFAULT_BUDGETS if a.budgets is None else tuple(
        None if b.lower() == "none" else int(b) for b in a.budgets)
    if a.tokenizer and a.bpe:
        ap.error("give --tokenizer or --bpe, not both")
    tok = BPETokenizer.load(a.tokenizer) if a.tokenizer else None
    if a.bpe:
        byte_env = replace(env, window=a.bpe_window or env.window,
                           max_positions=max(env.max_positions, (a.bpe_window or 0) + env.max_new_tokens + 2))
        tok = train_trace_tokenizer(byte_env, TRAIN_WORLD_SEEDS[: a.bpe_worlds], a.bpe)
        print(f"BPE: {len(tok.merges)} merges from {a.bpe_worlds} training worlds", flush=True)
        if a.save_tokenizer:
            tok.save(a.save_tokenizer)
    curves = scripted_curves(sets, env, a.widths, budgets, tokenizer=tok)
    if a.model:
        pol = WrittenPolicy(load_text_lm(a.model, a.hidden, a.layers, env.max_positions),
                            max_new_tokens=env.max_new_tokens, tokenizer=tok)
        curves.update(learned_curves(sets, env, pol, pol, budgets, tokenizer=tok))
    kinds = ["wide"] + (["deep"] if a.deep else [])
    print(f"scripted sweeps, split {a.split} ({len(sets)} worlds x {a.tasks} wide + {a.deep} deep tasks); "
          f"window {env.window} {'BPE' if tok else 'byte'} tokens, rows {env.min_rows}-{env.max_rows}")
    for kind in kinds:
        print(f"\n{kind}: item-F1 / mean critical steps per budget")
        print("| policy | " + " | ".join(str(p["budget"]) for p in curves["single"]) + " |")
        for name, c in curves.items():
            print(f"| {name} | " + " | ".join(f"{_fmt(p[kind]['item_f1'])} / {_fmt(p[kind]['critical_steps'], 1)}"
                                              for p in c) + " |")
        for name in [n for n in curves if n.startswith("learned")]:
            print(f"  {name} errors per budget: " + "; ".join(
                f"{p['budget']}: {sum(p['errors'].values())}" for p in curves[name]))
        print(f"\n{kind}: latency at matched item-F1 (target: the single agent's best)")
        pairs = [(ref, n) for ref in ("single", "single_unlimited") for n in curves if n.startswith("swarm")]
        if "learned_swarm" in curves:
            pairs += [("learned_single", "learned_swarm"), ("single", "learned_swarm"),
                      ("single_unlimited", "learned_swarm")]
        for ref, name in pairs:
            m = matched_latency(curves[ref], curves[name], kind)
            print(f"  {ref} vs {name}: target {_fmt(m['target_f1'])}, steps {_fmt(m['single_steps'], 1)} vs "
                  f"{_fmt(m['swarm_steps'], 1)}, ratio {_fmt(m['ratio'])}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": asdict(env), "tokenizer": a.tokenizer, "split": a.split,
                       "worlds": [w.seed for w, _ in sets], "curves": curves},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
