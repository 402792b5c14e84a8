"""Chapter 08's experiment: single agent vs PARL-trained swarm on toy WideSearch, writing results/swarm_<scale>.json.

Per seed: (1) the single-agent LM: SFT on scripted traces, a little RL, then frozen - it is both the
single-agent baseline and every subagent; (2) the orchestrator LM: SFT on mostly-serial scripted traces
(parallel tools on ~25% of tasks, fanning out to 6 or 8 subagents), then PARL RL in the configured variants
(full, no r_parallel, no r_finish, no anneal); (3) held-out evaluation (a world with another seed) on wide and
deep tasks: item-F1, success, critical / total steps, simulated wall-clock, parallelism, unfinished subtasks;
(4) item-F1 against the critical-steps budget (Fig. 8 shape); the RL histories are the Fig. 4 curves.

``run_experiment(recompute=False)`` reuses the JSON when its config and seeds match (flagged when the code
that made it differs from the current code).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from k25mini.config import preset
from k25mini.experiments.ch08_swarm.config import EXPERIMENT, PACKAGE, PAPER, VARIANTS, ExperimentConfig, default_config
from k25mini.experiments.ch08_swarm.evaluation import evaluate, summarize
from k25mini.experiments.results import read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.rl import PARLConfig
from k25mini.swarm.env import make_runtime, run_episodes
from k25mini.swarm.policy import LMPolicy, ScriptedSwarmPolicy
from k25mini.swarm.tasks import make_swarm_tasks
from k25mini.swarm.train import build_lm, collect_sft_pairs, frozen_copy, rl_train, sft
from k25mini.train import load_weights
from k25mini.world import World

__all__ = ["run_seed", "run_experiment", "results_path", "lm_from_checkpoint"]


def lm_from_checkpoint(path: str | Path, preset_name: str = "nano") -> nn.Module:
    """The language model (a :class:`~k25mini.model.K2ForCausalLM`) of a K2.5 checkpoint made with config preset
    ``preset_name``, as a swarm LM (the vision tower is dropped)."""
    model = K25ForConditionalGeneration(preset(preset_name))
    load_weights(model, path)
    return model.language_model


def _initial_lm(cfg: ExperimentConfig, seed: int) -> nn.Module:
    """A fresh swarm LM (``cfg.init_from`` None) or the pretrained language model of ``cfg.init_from``."""
    if cfg.init_from is None:
        return build_lm(seed)
    torch.manual_seed(seed)
    return lm_from_checkpoint(cfg.init_from, cfg.init_preset)


def _worlds(seed: int, cfg: ExperimentConfig) -> tuple[World, World]:
    return (World(seed, n_entities=cfg.env.n_entities, scale=cfg.scale),
            World(10_000 + seed, n_entities=cfg.env.n_entities, scale=cfg.scale))


def run_seed(seed: int, cfg: ExperimentConfig, log: Callable[[str], None] = print,
             keep_models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything for one seed (see the module docstring). ``keep_models``: filled with the trained models."""
    torch.manual_seed(seed)
    env = cfg.env
    world, held = _worlds(seed, cfg)
    train = make_swarm_tasks(world, cfg.n_train_wide, cfg.n_train_deep, env.min_rows, env.max_rows)
    evals = make_swarm_tasks(held, cfg.n_eval_wide, cfg.n_eval_deep, env.min_rows, env.max_rows)
    t0 = time.time()
    # 1. single agent: SFT on scripted traces (single-agent episodes at many budgets + subagent runs)
    teacher = ScriptedSwarmPolicy("worker")
    eps = []
    for b in (None, 4, 6, 8, 10, 14, 20):
        eps += run_episodes(make_runtime(world, teacher, None, env, swarm=False, budget=b), train, "sw")
    fan = ScriptedSwarmPolicy("orchestrator", seed=seed, p_parallel=1.0, fanout=(2, 3, 4, 6, 8, 12, 24))
    for b in (10, 14, None):
        eps += run_episodes(make_runtime(world, fan, teacher, env, swarm=True, budget=b), train, "sf")
    worker = _initial_lm(cfg, seed)
    wl = sft(worker, collect_sft_pairs(eps, ("main", "subagent")), cfg.worker_sft_steps, seed=seed)
    wrl = rl_train(worker, world, [t for t in train if t.kind == "wide"] + train, env,
                   replace(cfg.rl, iterations=cfg.worker_rl_iterations, parl=PARLConfig(0.0, 0.0)),
                   swarm=False, seed=seed)
    sub_model = frozen_copy(worker)
    log(f"[seed {seed}] single agent trained ({time.time() - t0:.0f}s)")
    # 2. orchestrator warm start: mostly serial traces
    eps = []
    for b in (None, 6, 8, 10, 12, 16):
        t = ScriptedSwarmPolicy("orchestrator", seed=seed * 31 + (b or 0), p_parallel=cfg.warm_p_parallel,
                                fanout=cfg.warm_fanout)
        eps += run_episodes(make_runtime(world, t, teacher, env, swarm=True, budget=b), train, "so")
    orch = _initial_lm(cfg, seed + 1)
    ol = sft(orch, collect_sft_pairs(eps, ("main",), unique=True), cfg.orch_sft_steps, seed=seed)
    warm = {k: v.clone() for k, v in orch.state_dict().items()}
    log(f"[seed {seed}] orchestrator warm start ({time.time() - t0:.0f}s)")

    def sub_policy() -> LMPolicy:
        return LMPolicy(sub_model, frozen=True)

    single = LMPolicy(sub_model)
    res: dict[str, Any] = {
        "sft_loss": {"worker": wl[-1], "orchestrator": ol[-1]},
        "worker_rl": wrl,
        "single": evaluate(held, evals, single, None, env, False, "train"),
        "single_unbounded": evaluate(held, evals, single, None, env, False, None),
        "swarm_warm": evaluate(held, evals, LMPolicy(orch), sub_policy(), env, True, "train"),
        "variants": {},
    }
    for name in cfg.variants:
        orch.load_state_dict(warm)
        rl = replace(cfg.rl, parl=replace(cfg.rl.parl, **VARIANTS[name]))
        hist = rl_train(orch, world, train, env, rl, subagent=sub_policy(), seed=seed)
        res["variants"][name] = {"history": hist,
                                 "eval": evaluate(held, evals, LMPolicy(orch), sub_policy(), env, True, "train")}
        if name == "full":
            sweep_s, sweep_w = {}, {}
            for b in cfg.budgets:
                key = "none" if b is None else str(b)
                sweep_s[key] = evaluate(held, evals, single, None, env, False, b)["wide"]
                sweep_w[key] = evaluate(held, evals, LMPolicy(orch), sub_policy(), env, True, b)["wide"]
            res["budget_sweep"] = {"single": sweep_s, "swarm": sweep_w}
            if keep_models is not None:
                keep_models.update(orchestrator=orch.state_dict(), worker=sub_model.state_dict())
        last = hist[-1]
        log(f"[seed {seed}] {name}: train item_f1 {last['item_f1']:.2f} parallel {last['avg_parallel']:.1f} "
            f"({time.time() - t0:.0f}s)")
    return res


#: the single agent must answer (not be cut off) on at least this share of held-out wide tasks for the
#: critical-steps ratio to count
MIN_FINISH_RATE = 0.9


def results_path(scale: str, out_dir: str | Path | None = None) -> Path:
    """``results/swarm_<scale>.json``."""
    return resolve_results_dir(out_dir) / f"swarm_{scale}.json"


def _run_seed_process(seed: int, cfg: ExperimentConfig) -> dict[str, Any]:
    """One seed in a worker process: one intra-op thread, so seeds share the cores instead of fighting."""
    torch.set_num_threads(1)
    return run_seed(seed, cfg, log=lambda m: print(m, flush=True))


def run_experiment(cfg: ExperimentConfig | None = None, out_dir: str | Path | None = None, recompute: bool = False,
                   log: Callable[[str], None] = print, workers: int = 1) -> dict[str, Any]:
    """Run (or reuse) the whole experiment; writes ``results/swarm_<scale>.json`` and returns its content.

    ``workers`` > 1 runs the seeds in that many spawned processes (each a plain :func:`run_seed`, one
    thread); the JSON is written only once every seed has finished, atomically."""
    cfg = cfg or default_config()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    path = results_path(cfg.scale, out_dir)
    want = json.loads(json.dumps(cfg.to_dict()))
    old = None if recompute else read_json(path)
    if old is not None and old.get("config") == want:
        flag = staleness(old, PACKAGE)
        if flag:
            old["stale"] = flag
        log(f"reusing {path} (config and seeds match; recompute=True to rerun)" + (f" - {flag}" if flag else ""))
        return old
    t0 = time.time()
    note = None
    if workers > 1 and len(cfg.seeds) > 1:
        n = min(workers, len(cfg.seeds))
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
            futures = {s: ex.submit(_run_seed_process, s, cfg) for s in cfg.seeds}
            per_seed = {str(s): f.result() for s, f in futures.items()}
        note = (f"seeds run in {n} concurrent processes of run_seed (one thread each); seconds = wall-clock of the "
                f"whole experiment on a {mp.cpu_count()}-core machine")
    else:
        per_seed = {str(s): run_seed(s, cfg, log) for s in cfg.seeds}
    out = {"scale": cfg.scale, "config": want, "seeds": cfg.seeds, "per_seed": per_seed,
           "summary": summarize(per_seed), "paper": PAPER, "seconds": time.time() - t0, "torch": torch.__version__}
    if note:
        out["note"] = note
    return write_result(path, out, experiment=EXPERIMENT, package=PACKAGE, wall_s=out["seconds"])
