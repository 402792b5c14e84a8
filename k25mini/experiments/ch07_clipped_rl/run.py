"""Chapter 07's Table 2 experiment: does vision-only RL from chapter 06's checkpoint also move the text suites?

* **Base**: chapter 06's zero-vision SFT checkpoint (``zero_vision`` seed ``cfg.sft_seed``; trained, resumably,
  from chapter 05's ``early`` run when missing).
* **RL** (one run per seed; the seed sets which train items are drawn and the sampler's randomness):
  ``cfg.iterations`` iterations of :func:`k25mini.rl.iteration.rl_iteration` on ``cfg.items_per_iter`` items
  drawn from the *train* split of the three vision suites' skills, ``cfg.k`` samples each, the world's
  verifiable rewards (:func:`k25mini.rl.rewards.reward`), group-mean advantages and the K2.5 loss, MuonClip.
  The environment has no tool: the tool-call marker is never sampled (``cfg.ban_tool_call``). The vision tower
  stays at its chapter 05 weights, as in chapter 06's SFT; the language model is trained.
* **Evaluation**: all six suites on chapter 05's frozen held-out items (the same items as Table 1), greedy
  direct answers under the same ban, before (the base, once) and after RL (every seed).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.stages import finished
from k25mini.experiments.ch06_zero_vision.config import config_for as sft_config
from k25mini.experiments.ch06_zero_vision.run import _runs_root as sft_runs_root
from k25mini.experiments.ch06_zero_vision.run import base_checkpoint as fusion_checkpoint
from k25mini.experiments.ch06_zero_vision.run import new_model, sft_train
from k25mini.experiments.ch07_clipped_rl.config import (
    EXPERIMENT,
    PACKAGE,
    SUITES,
    TEXT_SUITES,
    VISION_SUITES,
    RLConfig,
)
from k25mini.experiments.results import read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.optim import build_optimizer
from k25mini.pretrain.diagnose import blind_baseline
from k25mini.pretrain.docs import prompt_ids
from k25mini.rl.iteration import answer_text, rl_iteration
from k25mini.rl.rollout import sample
from k25mini.train import latest_checkpoint, load_weights
from k25mini.train.checkpoint import resolve_checkpoint
from k25mini.world import Item, World, make_eval_suite, score
from k25mini.world.rng import rng_for
from k25mini.world.skills import SUITE_SKILLS

__all__ = ["base_checkpoint", "eval_items", "train_items", "evaluate", "run_before", "run_seed", "run_experiment",
           "summarise", "run_file", "summary_file"]


def run_file(cfg: RLConfig, name: str, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / EXPERIMENT / cfg.scale / f"{name}.json"


def summary_file(cfg: RLConfig, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / f"{EXPERIMENT}_{cfg.scale}.json"


def base_checkpoint(cfg: RLConfig, runs_dir: Path | None = None, log=print) -> Path:
    """Chapter 06's zero-vision SFT checkpoint (seed ``cfg.sft_seed``), trained when missing."""
    scfg = sft_config(cfg.scale)
    out = sft_runs_root(scfg, runs_dir) / f"zero_vision-s{cfg.sft_seed}"
    if not finished(out, scfg.steps):
        log(f"chapter 06's zero-vision seed-{cfg.sft_seed} checkpoint is missing: training it")
        base = fusion_checkpoint(scfg, runs_dir, log)
        sft_train(scfg, "zero_vision", cfg.sft_seed, base, out)
    ck = latest_checkpoint(out / "checkpoints")
    if ck is None:  # pragma: no cover - sft_train saves a final checkpoint
        raise RuntimeError(f"no checkpoint under {out}")
    return resolve_checkpoint(ck)


def eval_items(cfg: RLConfig) -> dict[str, list[Item]]:
    """Chapter 05's frozen held-out suites, ``cfg.eval_items`` each."""
    world = World(0, scale=cfg.scale)
    return {s: make_eval_suite(world, s, cfg.eval_items) for s in SUITES}


def train_items(cfg: RLConfig, seed: int, iteration: int) -> list[Item]:
    """The iteration's prompts: train-split items of the vision suites' skills (uniform over skills)."""
    world = World(0, scale=cfg.scale)
    skills = [sk for s in VISION_SUITES for sk in SUITE_SKILLS[s]]
    out = []
    for j in range(cfg.items_per_iter):
        rng = rng_for(world.seed, "ch07-rl", seed, iteration, j)
        out.append(world.sample(skills[int(rng.integers(len(skills)))], "train", rng))
    return out


def _ban(cfg: RLConfig, tok: Tokenizer) -> list[int]:
    return [tok.special_tokens[DEFAULT_FORMAT.call_begin]] if cfg.ban_tool_call else []


@torch.no_grad()
def evaluate(cfg: RLConfig, model, items: dict[str, list[Item]]) -> dict[str, Any]:
    """Greedy direct answers (tool call banned as in training): accuracy and mean answer tokens per suite."""
    tok = Tokenizer()
    out: dict[str, Any] = {}
    for name, its in items.items():
        prompts = [prompt_ids(it, tok, model.media_token_counts) for it in its]
        groups = sample(model, prompts, [it.images for it in its], temperature=0.0, max_new_tokens=28,
                        ban=_ban(cfg, tok))
        answers = [answer_text(tok, g[0].tokens) for g in groups]
        scores = [float(score(it, a)) for it, a in zip(its, answers)]
        out[name] = {"acc": float(np.mean(scores)), "tokens": float(np.mean([len(g[0].tokens) for g in groups])),
                     "examples": [{"gold": it.answer, "answer": a} for it, a in list(zip(its, answers))[:3]]}
    return out


def _load(base: Path):
    model = new_model()
    load_weights(model, base)
    return model


def run_before(cfg: RLConfig, base: Path, results_dir: Path | None = None, force: bool = False,
               log=print) -> dict[str, Any]:
    """The base checkpoint's scores (deterministic; once per config)."""
    path = run_file(cfg, "before", results_dir)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        return old
    t0 = time.perf_counter()
    ev = evaluate(cfg, _load(base), eval_items(cfg))
    log("before RL: " + ", ".join(f"{k} {100 * v['acc']:.1f}" for k, v in ev.items()))
    res = {"scale": cfg.scale, "config_key": cfg.key(), "base_checkpoint": str(base), "per": ev}
    return write_result(path, res, experiment=f"{EXPERIMENT}/before", package=PACKAGE,
                        wall_s=time.perf_counter() - t0)


def run_seed(cfg: RLConfig, seed: int, base: Path, results_dir: Path | None = None, force: bool = False,
             log=print) -> dict[str, Any]:
    """RL from ``base`` with ``seed``, then the six suites; reuses a saved result of the same config and base."""
    path = run_file(cfg, f"s{seed}", results_dir)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        flag = staleness(old, PACKAGE)
        if flag:
            old["stale"] = flag
            log(f"reusing {path} - {flag}")
        return old
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = _load(base)
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, cfg.optimizer, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    tok = Tokenizer()
    curve: list[dict[str, float]] = []
    for it in range(cfg.iterations):
        st = rl_iteration(model, opt, train_items(cfg, seed, it), k=cfg.k, loss=cfg.loss,
                          loss_kwargs=cfg.loss_kwargs(), max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, generator=gen, ban=_ban(cfg, tok))
        curve.append({"it": it, **{m: round(float(st[m]), 5) for m in
                                   ("reward", "response_tokens", "zero_std_frac", "grad_norm", "masked_frac",
                                    "loss") if m in st}})
    t1 = time.perf_counter()
    model.eval()
    ev = evaluate(cfg, model, eval_items(cfg))
    t2 = time.perf_counter()
    log(f"seed {seed}: " + ", ".join(f"{k} {100 * v['acc']:.1f}" for k, v in ev.items()) + f" ({t2 - t0:.0f} s)")
    res = {"seed": seed, "scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(),
           "base_checkpoint": str(base), "curve": curve, "per": ev,
           "timing_s": {"total": t2 - t0, "rl": t1 - t0, "eval": t2 - t1}}
    return write_result(path, res, experiment=f"{EXPERIMENT}/run", package=PACKAGE, wall_s=t2 - t0)


def _job(cfg, seed, base, results_dir, force, threads):
    torch.set_num_threads(threads)
    if seed is None:
        return run_before(cfg, base, results_dir, force)
    return run_seed(cfg, seed, base, results_dir, force)


def run_experiment(cfg: RLConfig, runs_dir: Path | None = None, results_dir: Path | None = None,
                   workers: int = 1, force: bool = False, log=print) -> dict[str, Any]:
    """The base's scores and every seed's RL run (in ``workers`` processes, one torch thread each), then the
    summary."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    t0 = time.perf_counter()
    base = base_checkpoint(cfg, runs_dir, log)
    jobs: list[int | None] = [None, *cfg.seeds]
    if workers == 1:
        got = [run_before(cfg, base, results_dir, force, log) if s is None
               else run_seed(cfg, s, base, results_dir, force, log) for s in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = [ex.submit(_job, cfg, s, base, results_dir, force, 1) for s in jobs]
            got = [f.result() for f in futs]
    summary = summarise(cfg, got[0], got[1:])
    summary["wall_s"] = time.perf_counter() - t0
    return write_result(summary_file(cfg, results_dir), summary, experiment=EXPERIMENT, package=PACKAGE,
                        wall_s=summary["wall_s"])


def _ms(vals: list[float]) -> dict[str, Any]:
    a = np.asarray(vals, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a),
            "values": [float(v) for v in a]}


def summarise(cfg: RLConfig, before: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite: before, after (mean ± std over seeds), the per-seed change; the RL reward curve's start and end;
    the direction on each text suite (``up`` / ``down`` / ``flat`` only when every seed agrees, else ``mixed``)."""
    if not runs:
        raise ValueError("runs must hold at least one seed's result")
    table: dict[str, Any] = {}
    for s in SUITES:
        b = before["per"][s]["acc"]
        after = [r["per"][s]["acc"] for r in runs]
        table[s] = {"before": b, "after": _ms(after), "delta": _ms([a - b for a in after]),
                    "tokens_after": _ms([r["per"][s]["tokens"] for r in runs])}
    direction = {}
    for s in TEXT_SUITES:
        d = table[s]["delta"]["values"]
        direction[s] = ("up" if all(x > 0 for x in d) else "down" if all(x < 0 for x in d)
                        else "flat" if all(x == 0 for x in d) else "mixed")
    w = max(1, min(10, cfg.iterations // 4))
    curve = {"first": _ms([float(np.mean([c["reward"] for c in r["curve"][:w]])) for r in runs]),
             "last": _ms([float(np.mean([c["reward"] for c in r["curve"][-w:]])) for r in runs]),
             "window": w}
    return {"scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(), "table": table,
            "text_direction": direction, "reward_curve": curve,
            "blind": {s: blind_baseline(v) for s, v in eval_items(cfg).items()},
            "runs": [{"seed": r["seed"], "stale": r.get("stale"), "timing_s": r.get("timing_s")} for r in runs],
            "base_checkpoint": before["base_checkpoint"]}
