"""Chapter 07's Toggle experiment: does alternating a length budget cut response tokens without costing accuracy?

K2.5 (arXiv 2602.02276 §4.4) reports that Toggle cuts output tokens by 25-30 % with a negligible effect on
accuracy. Here, on the world's arithmetic questions:

1. **Base with length room.** Chapter 06's zero-vision checkpoint gets a short SFT on worked solutions
   (:mod:`k25mini.sft.worked`) in three styles - ``verbose`` (restates the question), ``concise`` (the same two
   steps) and ``terse`` (the answer only) - mixed ``cfg.style_mix``. One SFT run (seed ``cfg.sft_seed``) is the
   start of every RL run; it is checkpointed and resumed like every training run.
2. **Budget**, in two scopes (``cfg.scopes``), measured once before training:

   * ``task``: per RL seed, ``cfg.budget_k`` samples of ``cfg.budget_items`` fresh train questions; one budget for
     the task type ``arith`` (the ``cfg.rho``-th percentile of the correct responses' lengths); every iteration
     draws fresh train questions;
   * ``prompt``: the paper's budget(x), per prompt. RL draws its questions from a fixed pool of ``cfg.pool_size``
     train questions (as a dataset revisited over epochs); each pool question gets ``cfg.budget_k`` samples from
     the SFT model once, and its own budget from its correct ones (a question never answered correctly gets no
     budget and is never shaped).
3. **RL**, three modes on matched budgets (the same iterations, prompts and sampler seeds): ``off`` (no length
   control), ``always`` (phase 0 forever: a rigid budget) and ``toggle`` (phase 0 / phase 1 alternating every
   ``cfg.m`` iterations, the group-mean-reward floor ``cfg.lam``). Outcome reward
   :func:`~k25mini.sft.worked.worked_reward`, group-mean advantages, the registry's K2.5 loss, MuonClip.
4. **Evaluation** on held-out questions frozen before any run (the ``eval`` split, drawn under their own rng tag,
   never used for a choice): greedy accuracy and response tokens at iterations 0 (the SFT model, once),
   ``cfg.eval_every``, ..., ``cfg.iterations``; and temperature-1 sampling at the end.

The headline is the change of response tokens and of accuracy of ``toggle`` and ``always`` against ``off`` at the
last iteration, per seed and mean ± std.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.stages import finished
from k25mini.experiments.ch06_zero_vision.run import new_model
from k25mini.experiments.ch07_clipped_rl.config import config_for as rl_config
from k25mini.experiments.ch07_clipped_rl.run import base_checkpoint
from k25mini.experiments.results import ROOT, read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.optim import build_optimizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.rl.iteration import answer_text, rl_iteration
from k25mini.rl.rollout import sample
from k25mini.rl.toggle import TOGGLE_MODES, Toggle, budgets_from_lengths
from k25mini.scale import current_scale, pick, validate_scale
from k25mini.sft.data import sft_batch, sft_loss
from k25mini.sft.worked import WORKED_STYLES, response_style, worked_reward, worked_trajectory
from k25mini.train import TrainConfig, latest_checkpoint, load_weights
from k25mini.train.checkpoint import resolve_checkpoint
from k25mini.train.data import media_shard_fn
from k25mini.train.job import JobParts, TrainJob, config_from_dict, launch
from k25mini.world import Item, World
from k25mini.world.rng import rng_for

__all__ = ["SCOPES", "pool_set", "pool_items", "prompt_budgets", "ToggleConfig", "toggle_config", "TOGGLE_PACKAGE",
           "TOGGLE_EXPERIMENT", "TOGGLE_PAPER", "sft_rows", "toggle_base", "eval_set", "train_set", "measure",
           "budget_for", "run_before", "run_mode", "run_toggle", "summarise_toggle", "run_file", "summary_file"]

TOGGLE_PACKAGE = "k25mini.experiments.ch07_clipped_rl.toggle"
TOGGLE_EXPERIMENT = "rl_toggle"
TOGGLE_PAPER = {"section": "arXiv 2602.02276 §4.4",
                "claim": "Toggle cuts output tokens by 25-30 % with a negligible effect on performance"}
SKILL = "arith"
#: where a budget applies: one per task type (fresh questions every iteration) or one per prompt (a fixed pool)
SCOPES: tuple[str, ...] = ("task", "prompt")


@dataclass(frozen=True)
class ToggleConfig:
    scale: str
    style_mix: tuple[tuple[str, float], ...] = (("verbose", 0.45), ("concise", 0.45), ("terse", 0.1))
    sft_rows: int = 2000
    sft_steps: int = 1200
    sft_batch: int = 16
    sft_lr: float = 1e-3
    iterations: int = 40
    items_per_iter: int = 8
    k: int = 8
    max_new_tokens: int = 72
    lr: float = 1e-4  # 3e-4 (Table 2's) lowered accuracy in every mode, even without a budget: docs/rl.md
    # rho, m and the cpu iteration count were chosen on train-split questions in session 16 (session 14's
    # 50 / 4 / 40 cut 16 % on the held-out questions; docs/rl.md, tools/ch07_toggle_sweep.py); lam is unchanged
    rho: float = 35.0
    lam: float = 0.25
    m: int = 10
    budget_items: int = 32
    budget_k: int = 8
    eval_items: int = 256
    eval_every: int = 20
    pool_size: int = 128
    modes: tuple[str, ...] = TOGGLE_MODES
    scopes: tuple[str, ...] = ("task", "prompt")
    seeds: tuple[int, ...] = (0, 1, 2)
    sft_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sft_rows", "sft_steps", "sft_batch", "iterations", "items_per_iter", "k", "max_new_tokens",
                     "m", "budget_items", "budget_k", "eval_items", "eval_every", "pool_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("sft_lr", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not 0 < self.rho <= 100:
            raise ValueError(f"rho must be a number in (0, 100], got {self.rho!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be a number in [0, 1], got {self.lam!r}")
        styles = [s for s, _ in self.style_mix]
        if (not self.style_mix or any(s not in WORKED_STYLES for s in styles) or len(set(styles)) != len(styles)
                or any(not (isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0)
                       for _, w in self.style_mix) or not sum(w for _, w in self.style_mix) > 0):
            raise ValueError(f"style_mix must be distinct (style, weight >= 0) pairs over {WORKED_STYLES} with a "
                             f"positive total, got {self.style_mix!r}")
        bad = [m for m in self.modes if m not in TOGGLE_MODES]
        if not self.modes or bad or "off" not in self.modes:
            raise ValueError(f"modes must be a subset of {TOGGLE_MODES} that includes 'off' (the reference), "
                             f"got {list(self.modes)}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of ints >= 0, got {self.seeds!r}")
        if not self.scopes or any(sc not in SCOPES for sc in self.scopes) or len(set(self.scopes)) != len(self.scopes):
            raise ValueError(f"scopes must be distinct values from {SCOPES}, got {list(self.scopes)}")
        if isinstance(self.sft_seed, bool) or not isinstance(self.sft_seed, int) or self.sft_seed < 0:
            raise ValueError(f"sft_seed must be an int >= 0, got {self.sft_seed!r}")

    def sft_key(self) -> str:
        d = {k: getattr(self, k) for k in ("scale", "style_mix", "sft_rows", "sft_steps", "sft_batch", "sft_lr",
                                           "sft_seed")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("seeds"), d.pop("modes"), d.pop("scopes")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["style_mix"] = [list(p) for p in self.style_mix]
        d["modes"], d["seeds"], d["scopes"] = list(self.modes), list(self.seeds), list(self.scopes)
        return d


def toggle_config(scale: str | None = None, **overrides: Any) -> ToggleConfig:
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    base = dict(sft_rows=pick(smoke=24, cpu=2000, gpu=4000, scale=sc),
                sft_steps=pick(smoke=2, cpu=1200, gpu=2000, scale=sc),
                sft_batch=pick(smoke=4, cpu=16, gpu=32, scale=sc),
                iterations=pick(smoke=2, cpu=60, gpu=100, scale=sc),
                items_per_iter=pick(smoke=2, cpu=8, gpu=16, scale=sc),
                k=pick(smoke=2, cpu=8, gpu=8, scale=sc),
                max_new_tokens=pick(smoke=12, cpu=72, gpu=72, scale=sc),
                budget_items=pick(smoke=2, cpu=32, gpu=64, scale=sc),
                budget_k=pick(smoke=2, cpu=8, gpu=8, scale=sc),
                eval_items=pick(smoke=4, cpu=512, gpu=1024, scale=sc),
                eval_every=pick(smoke=1, cpu=20, gpu=25, scale=sc),
                pool_size=pick(smoke=3, cpu=128, gpu=512, scale=sc))
    base.update(overrides)
    return ToggleConfig(scale=sc, **base)


def run_file(cfg: ToggleConfig, name: str, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / TOGGLE_EXPERIMENT / cfg.scale / f"{name}.json"


def summary_file(cfg: ToggleConfig, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / f"{TOGGLE_EXPERIMENT}_{cfg.scale}.json"


# ------------------------------------------------------------------------------------------------ data
def sft_rows(cfg: ToggleConfig) -> list:
    """The worked-solution SFT set: ``cfg.sft_rows`` train-split ``arith`` questions, each in one style drawn
    from ``cfg.style_mix``."""
    world = World(0, scale=cfg.scale)
    styles = [s for s, _ in cfg.style_mix]
    p = np.asarray([w for _, w in cfg.style_mix], dtype=float)
    p = p / p.sum()
    pick_rng = np.random.default_rng([cfg.sft_seed, 7707])
    rows = []
    for j in range(cfg.sft_rows):
        it = world.sample(SKILL, "train", rng_for(world.seed, "ch07-toggle-sft", cfg.sft_seed, j))
        rows.append(worked_trajectory(it, styles[int(pick_rng.choice(len(styles), p=p))]))
    return rows


def train_set(cfg: ToggleConfig, tag: str, seed: int, iteration: int, n: int) -> list[Item]:
    world = World(0, scale=cfg.scale)
    return [world.sample(SKILL, "train", rng_for(world.seed, tag, seed, iteration, j)) for j in range(n)]


def pool_set(cfg: ToggleConfig) -> list[Item]:
    """The ``prompt`` scope's fixed pool of train questions (shared by every seed and mode)."""
    return train_set(cfg, "ch07-toggle-pool", 0, 0, cfg.pool_size)


def pool_items(cfg: ToggleConfig, pool: list[Item], seed: int, iteration: int) -> list[Item]:
    """The iteration's questions in the ``prompt`` scope: ``cfg.items_per_iter`` distinct pool questions."""
    rng = rng_for(0, "ch07-toggle-pool-draw", seed, iteration)
    return [pool[int(i)] for i in rng.choice(len(pool), size=min(cfg.items_per_iter, len(pool)), replace=False)]


def eval_set(cfg: ToggleConfig) -> list[Item]:
    """The frozen held-out questions (``eval`` split, their own rng tag)."""
    world = World(0, scale=cfg.scale)
    return [world.sample(SKILL, "eval", rng_for(world.seed, "ch07-toggle-eval", j)) for j in range(cfg.eval_items)]


# ------------------------------------------------------------------------------------------------ base
def _sft_root(cfg: ToggleConfig, runs_dir: Path | None) -> Path:
    return (Path(runs_dir) if runs_dir is not None else ROOT / "runs") / "rl_toggle_sft" / cfg.scale / cfg.sft_key()


#: the job builder of the worked-solution SFT (``python -m k25mini.train --job TOGGLE_SFT_JOB --job-args ...``)
TOGGLE_SFT_JOB = "k25mini.experiments.ch07_clipped_rl.toggle:toggle_sft_job"


def toggle_sft_job(cfg: dict[str, Any], start: str, out: str) -> JobParts:
    """The worked-solution SFT as a job of the training entry point: from ``start`` (chapter 06's checkpoint),
    vision tower frozen."""
    c = config_from_dict(ToggleConfig, cfg)
    tok, rows = Tokenizer(), sft_rows(c)
    torch.manual_seed(c.sft_seed)
    model = new_model()
    load_weights(model, start)
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    order = np.random.default_rng([c.sft_seed, 7708]).permutation(c.sft_steps * c.sft_batch) % len(rows)

    def batch_at(i: int) -> dict[str, Any]:
        idx = order[i * c.sft_batch : (i + 1) * c.sft_batch]
        return sft_batch([rows[int(k)] for k in idx], tok, model.media_token_counts)

    tc = TrainConfig(steps=c.sft_steps, lr=c.sft_lr, warmup_steps=min(50, c.sft_steps), optimizer="muonclip",
                     seed=c.sft_seed, out_dir=str(out), ckpt_every=max(c.sft_steps // 2, 1), keep_last=1,
                     log_every=max(c.sft_steps // 20, 1))
    return JobParts(model, sft_loss, batch_at, tc,
                    shard_fn=media_shard_fn(model))


def toggle_base(cfg: ToggleConfig, runs_dir: Path | None = None, log=print, nproc: int = 1) -> Path:
    """The worked-solution SFT checkpoint every RL run starts from (trained, resumably, when missing, through the
    training entry point: :func:`toggle_sft_job`; ``nproc`` > 1: data parallel under torchrun)."""
    out = _sft_root(cfg, runs_dir)
    if finished(out, cfg.sft_steps):
        return resolve_checkpoint(latest_checkpoint(out / "checkpoints"))
    start = base_checkpoint(rl_config(cfg.scale, sft_seed=cfg.sft_seed), runs_dir, log)
    log(f"worked-solution SFT ({cfg.sft_steps} steps) from {start}")
    launch(TrainJob(TOGGLE_SFT_JOB, {"cfg": cfg.to_dict(), "start": str(start), "out": str(out)}), nproc=nproc)
    ck = latest_checkpoint(out / "checkpoints")
    if ck is None:  # pragma: no cover - fit saves a final checkpoint
        raise RuntimeError(f"no checkpoint under {out}")
    return resolve_checkpoint(ck)


def _load(path: Path):
    model = new_model()
    load_weights(model, path)
    return model


# ------------------------------------------------------------------------------------------------ measuring
@torch.no_grad()
def measure(model, items: list[Item], *, temperature: float = 0.0, k: int = 1, max_new_tokens: int = 72,
            generator: torch.Generator | None = None) -> dict[str, Any]:
    """Accuracy (:func:`worked_reward`), mean response tokens, and the share of each response style."""
    tok = Tokenizer()
    was = model.training
    model.eval()
    prompts = [prompt_ids(it, tok, model.media_token_counts) for it in items]
    groups = sample(model, prompts, [[] for _ in items], k=k, temperature=temperature, max_new_tokens=max_new_tokens,
                    generator=generator)
    acc, lens, styles = [], [], Counter()
    for it, g in zip(items, groups):
        for s in g:
            text = answer_text(tok, s.tokens)
            acc.append(worked_reward(it, text))
            lens.append(len(s.tokens))
            styles[response_style(text)] += 1
    model.train(was)
    n = len(acc)
    return {"acc": float(np.mean(acc)), "tokens": float(np.mean(lens)),
            "styles": {s: styles[s] / n for s in (*WORKED_STYLES, "other")}}


def budget_for(cfg: ToggleConfig, model, seed: int) -> dict[str, Any]:
    """The ``rho``-th percentile of correct response lengths on ``cfg.budget_items`` train questions."""
    tok = Tokenizer()
    items = train_set(cfg, "ch07-toggle-budget", seed, 0, cfg.budget_items)
    model.eval()
    with torch.no_grad():
        groups = sample(model, [prompt_ids(it, tok, model.media_token_counts) for it in items],
                        [[] for _ in items], k=cfg.budget_k, max_new_tokens=cfg.max_new_tokens,
                        generator=torch.Generator().manual_seed(50_000 + seed))
    model.train()
    correct = [len(s.tokens) for it, g in zip(items, groups) for s in g
               if worked_reward(it, answer_text(tok, s.tokens))]
    budgets = budgets_from_lengths({SKILL: correct}, cfg.rho)
    return {"budgets": budgets, "n_correct": len(correct), "n": cfg.budget_items * cfg.budget_k,
            "correct_mean_tokens": float(np.mean(correct)) if correct else None}


def prompt_budgets(cfg: ToggleConfig, model) -> dict[str, Any]:
    """Per-prompt budgets for the pool: ``cfg.budget_k`` samples of each pool question from ``model`` (fixed
    generator), the ``cfg.rho``-th percentile of its correct responses' lengths; keyed by the prompt text."""
    tok = Tokenizer()
    pool = pool_set(cfg)
    model.eval()
    with torch.no_grad():
        groups = sample(model, [prompt_ids(it, tok, model.media_token_counts) for it in pool], [[] for _ in pool],
                        k=cfg.budget_k, max_new_tokens=cfg.max_new_tokens,
                        generator=torch.Generator().manual_seed(60_000))
    model.train()
    correct = {it.prompt: [len(s.tokens) for s in g if worked_reward(it, answer_text(tok, s.tokens))]
               for it, g in zip(pool, groups)}
    budgets = budgets_from_lengths(correct, cfg.rho)
    vals = sorted(budgets.values())
    return {"budgets": budgets, "n_prompts": len(pool), "n_with_budget": len(budgets),
            "budget_min": vals[0] if vals else None, "budget_median": vals[len(vals) // 2] if vals else None,
            "budget_max": vals[-1] if vals else None}


# ------------------------------------------------------------------------------------------------ runs
def run_before(cfg: ToggleConfig, base: Path, results_dir: Path | None = None, force: bool = False,
               log=print) -> dict[str, Any]:
    """The SFT model's greedy and sampled scores on the frozen questions (once: every mode starts here)."""
    path = run_file(cfg, "before", results_dir)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        return old
    t0 = time.perf_counter()
    model, items = _load(base), eval_set(cfg)
    greedy = measure(model, items, max_new_tokens=cfg.max_new_tokens)
    sampled = measure(model, items, temperature=1.0, max_new_tokens=cfg.max_new_tokens,
                      generator=torch.Generator().manual_seed(90_000))
    log(f"toggle base: greedy acc {100 * greedy['acc']:.1f} tokens {greedy['tokens']:.1f}")
    res = {"scale": cfg.scale, "config_key": cfg.key(), "base_checkpoint": str(base), "greedy": greedy,
           "sampled": sampled}
    return write_result(path, res, experiment=f"{TOGGLE_EXPERIMENT}/before", package=TOGGLE_PACKAGE,
                        wall_s=time.perf_counter() - t0)


def _run_name(mode: str, seed: int, scope: str) -> str:
    return f"{mode}-s{seed}" if scope == "task" else f"{mode}-{scope}-s{seed}"


def run_mode(cfg: ToggleConfig, mode: str, seed: int, base: Path, results_dir: Path | None = None,
             force: bool = False, log=print, scope: str = "task",
             budgets: dict[str, Any] | None = None) -> dict[str, Any]:
    """RL in ``mode`` from ``base`` with ``seed`` and budgets of ``scope`` (``prompt``: pass the pool's
    :func:`prompt_budgets`); reuses a saved result of the same config and base."""
    if mode not in TOGGLE_MODES:
        raise ValueError(f"mode must be one of {TOGGLE_MODES}, got {mode!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "prompt" and budgets is None:
        raise ValueError("scope='prompt' needs budgets=prompt_budgets(cfg, model) of the SFT base")
    path = run_file(cfg, _run_name(mode, seed, scope), results_dir)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        flag = staleness(old, TOGGLE_PACKAGE)
        if flag:
            old["stale"] = flag
            log(f"reusing {path} - {flag}")
        return old
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = _load(base)
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    budget = budget_for(cfg, model, seed) if scope == "task" else budgets
    tg = Toggle(budget["budgets"], lam=cfg.lam, m=cfg.m, mode=mode)
    pool = pool_set(cfg) if scope == "prompt" else None
    key_fn = (lambda it: it.meta.get("skill")) if scope == "task" else (lambda it: it.prompt)
    rl = rl_config(cfg.scale)
    opt = build_optimizer(model, rl.optimizer, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    items = eval_set(cfg)
    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for t in range(cfg.iterations):
        batch = (train_set(cfg, "ch07-toggle-rl", seed, t, cfg.items_per_iter) if pool is None
                 else pool_items(cfg, pool, seed, t))
        st = rl_iteration(model, opt, batch, k=cfg.k, key_fn=key_fn,
                          reward_fn=worked_reward, shape=lambda key, r, n, t=t: tg.shape(t, key, r, n),
                          loss=rl.loss, loss_kwargs=rl.loss_kwargs(), max_new_tokens=cfg.max_new_tokens,
                          generator=gen)
        curve.append({"it": t, "phase": tg.phase(t), **{k: round(float(st[k]), 5) for k in
                     ("reward", "shaped_reward", "response_tokens", "zero_std_frac", "grad_norm") if k in st}})
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.iterations:
            evals.append({"it": t + 1, **measure(model, items, max_new_tokens=cfg.max_new_tokens)})
    t1 = time.perf_counter()
    sampled = measure(model, items, temperature=1.0, max_new_tokens=cfg.max_new_tokens,
                      generator=torch.Generator().manual_seed(90_000))
    t2 = time.perf_counter()
    last = evals[-1]
    log(f"toggle {mode} ({scope}) seed {seed}: acc {100 * last['acc']:.1f} tokens {last['tokens']:.1f} "
        f"({t2 - t0:.0f} s)")
    res = {"mode": mode, "seed": seed, "scope": scope, "scale": cfg.scale, "config_key": cfg.key(),
           "config": cfg.to_dict(), "base_checkpoint": str(base), "budget": _budget_record(budget), "curve": curve,
           "evals": evals, "sampled": sampled, "timing_s": {"total": t2 - t0, "rl_and_evals": t1 - t0}}
    return write_result(path, res, experiment=f"{TOGGLE_EXPERIMENT}/run", package=TOGGLE_PACKAGE, wall_s=t2 - t0)


def _budget_record(budget: dict[str, Any]) -> dict[str, Any]:
    """What a run file keeps of its budgets: all of a task budget; a prompt budget's summary (the pool's
    per-prompt values are in the experiment's summary once)."""
    if "n_prompts" not in budget:
        return budget
    return {k: v for k, v in budget.items() if k != "budgets"}


def _job(cfg, mode, seed, base, results_dir, force, threads, scope="task", budgets=None):
    torch.set_num_threads(threads)
    if mode is None:
        return run_before(cfg, base, results_dir, force)
    return run_mode(cfg, mode, seed, base, results_dir, force, scope=scope, budgets=budgets)


def run_toggle(cfg: ToggleConfig, runs_dir: Path | None = None, results_dir: Path | None = None, workers: int = 1,
               force: bool = False, log=print, nproc: int = 1) -> dict[str, Any]:
    """The worked-solution SFT base, the base's scores and every (mode, seed) RL run, then the summary.
    ``nproc`` > 1: the SFT base trains data parallel under torchrun with that many processes."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # one thread, as every worker: two threads on a busy machine are slower than one
    base = toggle_base(cfg, runs_dir, log, nproc)
    pb = prompt_budgets(cfg, _load(base)) if "prompt" in cfg.scopes else None
    jobs: list[tuple[str | None, int | None, str]] = [(None, None, "task")] + [
        (m, s, sc) for sc in cfg.scopes for s in cfg.seeds for m in cfg.modes]
    if workers == 1:
        got = [run_before(cfg, base, results_dir, force, log) if m is None
               else run_mode(cfg, m, s, base, results_dir, force, log, scope=sc, budgets=pb) for m, s, sc in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = [ex.submit(_job, cfg, m, s, base, results_dir, force, 1, sc, pb) for m, s, sc in jobs]
            got = [f.result() for f in futs]
    summary = summarise_toggle(cfg, got[0], got[1:], pb)
    summary["wall_s"] = time.perf_counter() - t0
    return write_result(summary_file(cfg, results_dir), summary, experiment=TOGGLE_EXPERIMENT,
                        package=TOGGLE_PACKAGE, wall_s=summary["wall_s"])


def _ms(vals: list[float]) -> dict[str, Any]:
    a = np.asarray(vals, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a),
            "values": [float(v) for v in a]}


def summarise_toggle(cfg: ToggleConfig, before: dict[str, Any], runs: list[dict[str, Any]],
                     prompt_budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``task`` scope's table at the top level (see :func:`_scope_table`), each other scope's under its name
    (``"prompt"``: also the pool's budget summary)."""
    task = [r for r in runs if r.get("scope", "task") == "task"]
    out = _scope_table(cfg, before, task)
    for sc in SCOPES[1:]:
        rs = [r for r in runs if r.get("scope") == sc]
        if rs:
            out[sc] = _scope_table(cfg, before, rs)
            if sc == "prompt" and prompt_budget is not None:
                out[sc]["pool_budget"] = {k: v for k, v in prompt_budget.items() if k != "budgets"}
    out["runs"] = [{"mode": r["mode"], "seed": r["seed"], "scope": r.get("scope", "task"), "stale": r.get("stale"),
                    "timing_s": r.get("timing_s")} for r in runs]
    return out


def _scope_table(cfg: ToggleConfig, before: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: final greedy accuracy and tokens (mean ± std over seeds, per-seed values); for ``always`` and
    ``toggle`` the per-seed change against ``off`` of the same seed (tokens in %, accuracy in points)."""
    by = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    modes = [m for m in cfg.modes if all((m, s) in by for s in seeds)]
    if "off" not in modes:
        raise ValueError("runs must include the 'off' mode for every seed")
    table: dict[str, Any] = {}
    for m in modes:
        fin = [by[(m, s)]["evals"][-1] for s in seeds]
        row = {"acc": _ms([f["acc"] for f in fin]), "tokens": _ms([f["tokens"] for f in fin]),
               "sampled_acc": _ms([by[(m, s)]["sampled"]["acc"] for s in seeds]),
               "sampled_tokens": _ms([by[(m, s)]["sampled"]["tokens"] for s in seeds]),
               "styles": {k: _ms([f["styles"][k] for f in fin])["mean"] for k in fin[0]["styles"]}}
        if m != "off":
            off = [by[("off", s)]["evals"][-1] for s in seeds]
            row["token_change_pct"] = _ms([100 * (f["tokens"] / o["tokens"] - 1) for f, o in zip(fin, off)])
            row["acc_change_pts"] = _ms([100 * (f["acc"] - o["acc"]) for f, o in zip(fin, off)])
            offs = [by[("off", s)]["sampled"] for s in seeds]
            row["sampled_token_change_pct"] = _ms([100 * (by[(m, s)]["sampled"]["tokens"] / o["tokens"] - 1)
                                                   for s, o in zip(seeds, offs)])
            row["sampled_acc_change_pts"] = _ms([100 * (by[(m, s)]["sampled"]["acc"] - o["acc"])
                                                 for s, o in zip(seeds, offs)])
        table[m] = row
    curves = {m: {str(s): [{"it": 0, "acc": before["greedy"]["acc"], "tokens": before["greedy"]["tokens"]}]
                  + [{"it": e["it"], "acc": e["acc"], "tokens": e["tokens"]} for e in by[(m, s)]["evals"]]
                  for s in seeds} for m in modes}
    return {"scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(), "before": before,
            "table": table, "curves": curves, "budgets": {str(s): by[("off", s)]["budget"] for s in seeds},
            "paper": TOGGLE_PAPER, "base_checkpoint": before["base_checkpoint"]}
