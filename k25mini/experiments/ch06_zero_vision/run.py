"""Chapter 06's experiment: does text-only (zero-vision) SFT with a code tool activate visual tool use?

Five arms, all from chapter 05's early-fusion checkpoint (``early`` seed 0 of the ablation's config):

* ``no_sft`` (a): the checkpoint answers directly (greedy), as in chapter 05.
* ``zero_vision`` (b): SFT on text-only trajectories (:func:`k25mini.sft.data.build_sft_set`), then answers with
  the sandboxed code tool: the model reads the image as media tokens, the kernel gets it as ``image``.
* ``zero_vision_blank`` (b'): (b) with a quarter of the text twins shown after a blank picture (vision tokens of an
  empty canvas, none of the question's content; :func:`k25mini.sft.trajectories.blank_media`). A labelled
  deviation from strict text-only SFT: at this scale (b) does not carry its tool calls over to questions that
  follow vision tokens (docs/zero_vision_sft.md).
* ``text_visual`` (c): the same SFT budget with a quarter of the tool rows replaced by visual trajectories of
  two skills (count, compare) - the baseline the paper argues against.
* ``oracle`` (d): the scripted program for each question, run in the same tool (the upper bound of the tool
  route; questions with no program score 0).

Trained arms run once per seed (the SFT seed: which rows are drawn, their order); (a) and (d) are deterministic
and run once. SFT trains the language model only; the vision tower (encoder and projector) stays at chapter 05's
weights. Every model-written program runs in :class:`k25mini.tools.CodeTool`; results record its isolation label.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import config_for as fusion_config
from k25mini.experiments.ch05_fusion.stages import finished, joint_root, run_joint
from k25mini.experiments.ch06_zero_vision.config import (
    EXPERIMENT,
    LIFT,
    PACKAGE,
    TEXT_SUITES,
    TEXT_TOLERANCE,
    TRAINED_ARMS,
    VALID_CALL_TARGET,
    VISION_SKILLS,
    SFTConfig,
    arm_set,
)
from k25mini.experiments.results import ROOT, read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.diagnose import blind_baseline
from k25mini.pretrain.evaluate import greedy_answers
from k25mini.sft.data import build_sft_set, set_summary, sft_batch, sft_loss
from k25mini.sft.rollout import Episode, episode_stats, oracle_answers, solve_with_tool
from k25mini.tools import CodeTool
from k25mini.train import TrainConfig, latest_checkpoint, load_weights
from k25mini.train.checkpoint import resolve_checkpoint
from k25mini.train.data import media_shard_fn
from k25mini.train.job import JobParts, TrainJob, config_from_dict, launch
from k25mini.world import World, make_eval_suite, score
from k25mini.world.rng import rng_for
from k25mini.world.skills import SUITE_SKILLS

__all__ = ["eval_items", "base_checkpoint", "sft_train", "evaluate_arm", "run_arm", "run_experiment",
           "run_file", "summary_file", "new_model"]


def run_file(cfg: SFTConfig, arm: str, seed: int | None, results_dir: Path | None = None) -> Path:
    name = f"{arm}.json" if seed is None else f"{arm}-s{seed}.json"
    return resolve_results_dir(results_dir) / EXPERIMENT / cfg.scale / name


def summary_file(cfg: SFTConfig, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / f"{EXPERIMENT}_{cfg.scale}.json"


def eval_items(cfg: SFTConfig) -> dict[str, list]:
    """Held-out items: ``cfg.eval_per_skill`` per vision skill (frozen draws from the eval split) and
    ``cfg.text_eval_items`` per text suite (chapter 05's sets)."""
    world = World(0, scale=cfg.scale)
    out: dict[str, list] = {}
    if cfg.eval_split == "dev":  # train-split items under their own tag: for design work, never for claims
        for skill in VISION_SKILLS:
            out[skill] = [world.sample(skill, "train", rng_for(world.seed, "ch06-dev", skill, i))
                          for i in range(cfg.eval_per_skill)]
        for s in TEXT_SUITES:
            sk = SUITE_SKILLS[s]
            out[s] = [world.sample(sk[i % len(sk)], "train", rng_for(world.seed, "ch06-dev", s, i))
                      for i in range(cfg.text_eval_items)]
        return out
    # "ch06-final" replaced an earlier tag whose first 10 items per skill were looked at while the design was
    # being tried (docs/zero_vision_sft.md); these items were first scored by the committed run
    for skill in VISION_SKILLS:
        out[skill] = [world.sample(skill, "eval", rng_for(world.seed, "ch06-final", skill, i))
                      for i in range(cfg.eval_per_skill)]
    for s in TEXT_SUITES:
        out[s] = make_eval_suite(world, s, cfg.text_eval_items)
    return out


def new_model() -> K25ForConditionalGeneration:
    return K25ForConditionalGeneration(preset("nano"))


def base_checkpoint(cfg: SFTConfig, runs_dir: Path | None = None, log=print) -> Path:
    """Chapter 05's ``early`` run the SFT starts from; trained (stages A, B, joint, resumable) when missing.
    Its result file goes under the runs folder, never over the committed ablation results."""
    fcfg = fusion_config(cfg.scale)
    fruns = Path(runs_dir) / "fusion" if runs_dir is not None else None
    out = joint_root(fcfg, fruns) / "joint" / f"{cfg.fusion_schedule}-s{cfg.fusion_seed}"
    if not finished(out, fcfg.joint_steps):
        log(f"chapter 05's {cfg.fusion_schedule} seed-{cfg.fusion_seed} checkpoint is missing: training it")
        res_dir = (Path(runs_dir) if runs_dir is not None else ROOT / "runs") / "fusion_results"
        run_joint(fcfg, cfg.fusion_schedule, cfg.fusion_seed, runs_dir=fruns, results_dir=res_dir, log=log)
    ck = latest_checkpoint(out / "checkpoints")
    if ck is None:  # pragma: no cover - run_joint saves a final checkpoint
        raise RuntimeError(f"no checkpoint under {out}")
    return ck


def _runs_root(cfg: SFTConfig, runs_dir: Path | None) -> Path:
    return (Path(runs_dir) if runs_dir is not None else ROOT / "runs") / "zero_vision" / cfg.scale / cfg.key()


#: the job builder of the SFT stage (``python -m k25mini.train --job SFT_JOB --job-args ...``)
SFT_JOB = "k25mini.experiments.ch06_zero_vision.run:sft_job"


def batch_order(rows: list, draws: int, seed: int, stream: bool = False) -> np.ndarray:
    """Row indices for ``draws`` batch slots. Fixed set: a permutation of the slots over the set (every row
    ``draws / len(rows)`` times). Stream: every replay row (``meta["replay"]``) once and the other rows cycled in
    fresh permutations to fill the remaining slots, all shuffled together."""
    rng = np.random.default_rng([seed, 61])
    if not stream:
        return rng.permutation(draws) % len(rows)
    rep = np.array([k for k, t in enumerate(rows) if t.meta.get("replay")], dtype=np.int64)
    twin = np.array([k for k, t in enumerate(rows) if not t.meta.get("replay")], dtype=np.int64)
    n_twin = draws - len(rep)
    if n_twin < 0 or (n_twin > 0 and not len(twin)):
        raise ValueError(f"a stream of {len(rep)} replay rows and {len(twin)} other rows cannot fill {draws} slots")
    cycles = -(-n_twin // len(twin)) if n_twin else 0
    fill = np.concatenate([rng.permutation(twin) for _ in range(cycles)] or [np.zeros(0, np.int64)])[:n_twin]
    return rng.permutation(np.concatenate([fill, rep]))


def sft_job(cfg: dict[str, Any], arm: str, seed: int, base: str, out: str, progress: bool = False) -> JobParts:
    """The SFT stage as a job of the training entry point: the language model from ``base`` on ``arm``'s set
    (vision tower frozen); ``info["set"]`` summarises the set."""
    c = config_from_dict(SFTConfig, cfg)
    if arm not in TRAINED_ARMS:
        raise ValueError(f"arm must be one of {TRAINED_ARMS}, got {arm!r}")
    world, tok = World(0, scale=c.scale), Tokenizer()
    set_arm, contexts = arm_set(c, arm)
    draws = c.steps * c.batch
    n_stream = int(round(draws * c.replay_share)) if c.replay_stream else None
    rows = build_sft_set(world, set_arm, c.sft_rows, seed, c.replay_share, c.visual_share, c.visual_skills, contexts,
                         system=c.system, replay_rows=n_stream)
    torch.manual_seed(seed)
    model = new_model()
    load_weights(model, base)
    for p in model.vision_tower.parameters():
        p.requires_grad_(False)
    order = batch_order(rows, draws, seed, stream=c.replay_stream)

    def batch_at(i: int) -> dict[str, Any]:
        idx = order[i * c.batch : (i + 1) * c.batch]
        return sft_batch([rows[int(k)] for k in idx], tok, model.media_token_counts)

    tc = TrainConfig(steps=c.steps, lr=c.lr, warmup_steps=min(c.warmup, c.steps), optimizer=c.optimizer,
                     seed=seed, out_dir=str(out), ckpt_every=max(c.steps // 2, 1), keep_last=1,
                     log_every=max(c.steps // 20, 1), progress=progress)
    return JobParts(model, sft_loss, batch_at, tc, info={"set": set_summary(rows)},
                    shard_fn=media_shard_fn(model))


def sft_train(cfg: SFTConfig, arm: str, seed: int, base: Path, out: Path, progress: bool = False, nproc: int = 1
              ) -> tuple[K25ForConditionalGeneration, dict[str, Any]]:
    """SFT of the language model from ``base`` on ``arm``'s set, through the training entry point
    (:func:`sft_job`; ``nproc`` > 1: data parallel under torchrun); resumes a finished or interrupted run in
    ``out``. Returns the model and a record (set summary, loss curve, seconds)."""
    if arm not in TRAINED_ARMS:
        raise ValueError(f"arm must be one of {TRAINED_ARMS}, got {arm!r}")
    t0 = time.perf_counter()
    job = TrainJob(SFT_JOB, {"cfg": cfg.to_dict(), "arm": arm, "seed": seed, "base": str(base), "out": str(out),
                             "progress": progress})
    run = launch(job, nproc=nproc)
    model = run.model
    if model is None:  # trained in other processes: its final checkpoint
        model = new_model()
        load_weights(model, out)
    loss = [[r["step"], r["sft_loss"]] for r in run.history if r.get("split") == "train" and "sft_loss" in r]
    return model, {"set": run.info["set"], "loss_curve": loss, "train_s": time.perf_counter() - t0,
                   "resumed": bool(run.resumed)}


def _direct(model, tok, items) -> list[Episode]:
    return [Episode(answer=a, turns=1) for a in greedy_answers(model, tok, items, 28)]


def evaluate_arm(cfg: SFTConfig, arm: str, model, evals: dict[str, list], tool) -> dict[str, Any]:
    """Scores, tool statistics and a few transcripts per vision skill and text suite."""
    tok = Tokenizer()
    per: dict[str, Any] = {}
    for name, items in evals.items():
        if arm == "no_sft":
            eps = _direct(model, tok, items)
        elif arm == "oracle":
            if name in TEXT_SUITES:
                continue
            eps = oracle_answers(items, tool)
        else:
            eps = solve_with_tool(model, tok, items, tool, cfg.max_calls, cfg.max_new_tokens, system=cfg.system)
        scores = [float(score(it, e.answer)) for it, e in zip(items, eps)]
        other = [e.sandbox for e in eps if e.sandbox and e.sandbox.split(":")[0] != tool.label.split(":")[0]]
        if other:  # pragma: no cover - every call runs under the tool's one mode; anything else is a bug
            raise RuntimeError(f"a call ran under another isolation than {tool.label!r}: {other[0]!r}")
        per[name] = {"acc": float(np.mean(scores)), **episode_stats(eps),
                     "examples": [{"prompt": it.prompt[-80:], "gold": it.answer, **e.to_dict()}
                                  for it, e in list(zip(items, eps))[:2]]}
    # the isolation every call ran under (the per-kernel uid is random, so it is left out of results)
    return {"per": per, "sandbox": re.sub(r"uid [^,]+", "a fresh uid per kernel", tool.label)}


def run_arm(cfg: SFTConfig, arm: str, seed: int | None, runs_dir: Path | None = None,
            results_dir: Path | None = None, force: bool = False, log=print, progress: bool = False,
            base: Path | None = None, nproc: int = 1) -> dict[str, Any]:
    """One arm (one seed for trained arms; ``seed`` None otherwise) from ``base`` (default: chapter 05's run, see
    :func:`base_checkpoint`); reuses a saved result made with the same config key from the same checkpoint."""
    if (arm in TRAINED_ARMS) != (seed is not None):
        raise ValueError(f"trained arms take a seed, (a)/(d) take seed=None; got arm={arm!r}, seed={seed!r}")
    path = run_file(cfg, arm, seed, results_dir)
    t0 = time.perf_counter()
    base = resolve_checkpoint(base_checkpoint(cfg, runs_dir, log) if base is None else base)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        flag = staleness(old, PACKAGE)
        if flag:
            old["stale"] = flag
            log(f"reusing {path} - {flag}")
        return old
    evals = eval_items(cfg)
    record: dict[str, Any] = {}
    model = None
    if arm in TRAINED_ARMS:
        out = _runs_root(cfg, runs_dir) / f"{arm}-s{seed}"
        model, record = sft_train(cfg, arm, seed, base, out, progress, nproc)
    elif arm == "no_sft":
        model = new_model()
        load_weights(model, base)
    t1 = time.perf_counter()
    tool = CodeTool()
    try:
        ev = evaluate_arm(cfg, arm, model, evals, tool)
    finally:
        tool.close()
    t2 = time.perf_counter()
    result = {"arm": arm, "seed": seed, "scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(),
              "base_checkpoint": str(base), **record, **ev,
              "timing_s": {"total": t2 - t0, "train": t1 - t0, "eval": t2 - t1}}
    log(f"{arm}{'' if seed is None else f' s{seed}'}: " + ", ".join(
        f"{k} {100 * v['acc']:.0f}" for k, v in ev["per"].items()) + f" ({t2 - t0:.0f} s)")
    return write_result(path, result, experiment=f"{EXPERIMENT}/run", package=PACKAGE, wall_s=t2 - t0)


def _jobs(cfg: SFTConfig) -> list[tuple[str, int | None]]:
    jobs: list[tuple[str, int | None]] = []
    for arm in cfg.arms:
        if arm in TRAINED_ARMS:
            jobs += [(arm, s) for s in cfg.seeds]
        else:
            jobs.append((arm, None))
    return jobs


def _job(cfg, arm, seed, runs_dir, results_dir, force, threads, base, nproc=1):
    torch.set_num_threads(threads)
    return run_arm(cfg, arm, seed, runs_dir, results_dir, force, base=base, nproc=nproc)


def blind_by_skill(cfg: SFTConfig) -> dict[str, float]:
    """Best constant answer per kind of question, on each eval set (what a model that ignores the image gets)."""
    return {k: blind_baseline(v) for k, v in eval_items(cfg).items()}


def run_experiment(cfg: SFTConfig, runs_dir: Path | None = None, results_dir: Path | None = None,
                   workers: int = 1, force: bool = False, log=print, nproc: int = 1) -> dict[str, Any]:
    """Every arm x seed (trained arms in ``workers`` processes, one torch thread each), then the summary.
    ``nproc`` > 1: each SFT trains data parallel under torchrun with that many processes."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    t0 = time.perf_counter()
    base = base_checkpoint(cfg, runs_dir, log)
    jobs = _jobs(cfg)
    if workers == 1:
        results = [run_arm(cfg, a, s, runs_dir, results_dir, force, log, base=base, nproc=nproc) for a, s in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = [ex.submit(_job, cfg, a, s, runs_dir, results_dir, force, 1, base, nproc) for a, s in jobs]
            results = [f.result() for f in futs]
    summary = summarise(cfg, results)
    return write_result(summary_file(cfg, results_dir), summary, experiment=EXPERIMENT, package=PACKAGE,
                        wall_s=time.perf_counter() - t0)


def _ms(vals: list[float]) -> dict[str, Any]:
    a = np.asarray(vals, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a),
            "values": [float(v) for v in a]}


def summarise(cfg: SFTConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm and eval set: accuracy and tool statistics over seeds; the acceptance checks per seed."""
    arms: dict[str, dict[str, Any]] = {}
    for r in results:
        a = arms.setdefault(r["arm"], {"runs": []})
        a["runs"].append({"seed": r["seed"], "per": {k: {m: v[m] for m in v if m != "examples"}
                                                     for k, v in r["per"].items()},
                          "sandbox": r.get("sandbox"), "stale": r.get("stale")})
    table: dict[str, dict[str, Any]] = {}
    for arm, a in arms.items():
        names = a["runs"][0]["per"].keys()
        table[arm] = {k: {m: _ms([run["per"][k][m] for run in a["runs"]])
                          for m in ("acc", "tool_call_rate", "valid_call_rate", "code_error_rate", "steps_per_answer")}
                      for k in names}
    checks = acceptance(table, arms)
    checks_blank = acceptance(table, arms, "zero_vision_blank")
    blind = blind_by_skill(cfg)
    return {"scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(), "table": table,
            "runs": {k: v["runs"] for k, v in arms.items()}, "blind": blind, "checks": checks,
            "checks_blank": checks_blank,
            "sandboxes": sorted({run["sandbox"] for a in arms.values() for run in a["runs"] if run["sandbox"]}),
            "text_twins": next((r["set"]["tool_twin_skills"] for r in results if r.get("set")), None),
            "sets": {r["arm"]: r.get("set") for r in results if r.get("set") and r.get("seed") == cfg.seeds[0]}}


def acceptance(table: dict[str, Any], arms: dict[str, Any], arm: str = "zero_vision") -> dict[str, Any]:
    """The issue's acceptance on these results for ``arm`` ((b), or (b') for ``checks_blank``): vision skills lifted
    >= ``LIFT`` over (a) on EVERY seed, valid-call rate >= ``VALID_CALL_TARGET``, text suites within
    ``TEXT_TOLERANCE`` of (a) or better (by the mean)."""
    if "no_sft" not in table or arm not in table:
        return {}
    base = table["no_sft"]
    runs = arms[arm]["runs"]
    lifted = []
    for k in VISION_SKILLS:
        if k in base and all(run["per"][k]["acc"] - base[k]["acc"]["mean"] >= LIFT for run in runs):
            lifted.append(k)
    calls = sum(run["per"][k]["calls"] for run in runs for k in run["per"])
    valid = sum(run["per"][k]["calls"] * run["per"][k]["valid_call_rate"] for run in runs for k in run["per"])
    text = {s: table[arm][s]["acc"]["mean"] - base[s]["acc"]["mean"] for s in TEXT_SUITES if s in base}
    out = {"lifted_skills_every_seed": lifted, "two_skills_lifted": len(lifted) >= 2,
           "valid_call_rate": valid / calls if calls else None, "text_delta": text,
           "text_within_2": all(v >= -TEXT_TOLERANCE for v in text.values())}
    out["valid_ok"] = bool(calls) and out["valid_call_rate"] >= VALID_CALL_TARGET
    if "text_visual" in table:
        out["zero_vs_text_visual"] = {k: table[arm][k]["acc"]["mean"] - table["text_visual"][k]["acc"]["mean"]
                                      for k in table[arm] if k in table["text_visual"]}
    return out
