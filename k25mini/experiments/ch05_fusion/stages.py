"""The Table 1 experiment in miniature: text stage -> ViT stage -> joint pre-training per fusion schedule.

Stages (paper Table 3, shrunk):

* **A, text** - the K2 backbone pre-trained on the text corpora only (the "near-end K2 checkpoint").
* **B, ViT** - the vision tower trained with a caption loss (next-token loss on the text of caption-style
  image-text documents), in the paper's two steps: **B1** aligns ViT + projector to a *caption decoder* (a
  trainable copy of A's language model, thrown away afterwards - the paper aligns its ViT to another LLM,
  Moonlight), then **B2** trains only the projector into A's frozen language model. ``vit_align="frozen"``
  instead trains ViT + projector directly through A's frozen language model (the first design: a ~0.5M
  text-only LM is too weak a decoder for that, see docs/reproduction.md).
* **joint** - from B, everything trained on a fixed token budget mixed by a
  :class:`~k25mini.pretrain.fusion_schedule.FusionSchedule` (early / mid / late, identical totals).

A and B are trained once per scale and shared by every schedule and seed; a run's seed changes the data
order of the joint stage. Every stage is a job of the training entry point (:func:`stage_job`, run by
:func:`k25mini.train.job.launch`: in this process, or ``torchrun -m k25mini.train --job`` with ``nproc > 1``),
trained by :class:`k25mini.train.Trainer` (checkpoints, JSONL metrics, bit-exact resume); its packed batches are
computed up front so ``batch_at(i)`` is a pure function of the step. Each finished run writes
``results/fusion_ablation/<scale>/<schedule>-s<seed>.json`` (:mod:`.evaluation` joins them). Checkpoints live
under ``runs/fusion/<scale>/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import (
    TEXT_SUITES,
    VISION_DOCS_VERSION,
    VIT_CORPORA,
    VIT_QA_CORPORA,
    VIT_QA_SKILLS,
    VIT_SKILLS,
    FusionConfig,
    config_for,
)
from k25mini.experiments.ch05_fusion.evaluation import (
    PACKAGE,
    aggregate,
    eval_sets,
    run_file,
    score_suites,
)
from k25mini.experiments.results import ROOT, read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import doc_stream
from k25mini.pretrain.evaluate import teacher_forced_exact
from k25mini.pretrain.fusion_schedule import SCHEDULES, FusionSchedule, schedule_for_share, token_plan
from k25mini.pretrain.packing import IGNORE, MixedPacker, PackedStep
from k25mini.train import TrainConfig, latest_checkpoint, load_weights
from k25mini.train.data import media_shard_fn
from k25mini.train.job import JobParts, JobRun, TrainJob, config_from_dict, launch
from k25mini.world import TEXT_CORPORA, VISION_CORPORA, World

__all__ = ["packed_steps", "pack_vision_only", "batch_from", "lm_loss", "stage_dir", "joint_root", "train_config",
           "finished", "new_model", "b_steps", "vit_docs", "stage_text", "stage_vit", "run_joint", "run_ablation",
           "run_probe", "stage_job", "STAGE_JOB", "joint_schedule", "tracker"]

#: the job builder every stage runs through (``python -m k25mini.train --job STAGE_JOB --job-args ...``)
STAGE_JOB = "k25mini.experiments.ch05_fusion.stages:stage_job"


def packed_steps(
    cfg: FusionConfig, schedule: FusionSchedule, steps: int, seed: int, tag: str, world: World, tok: Tokenizer,
    counts_fn, vision_corpora: tuple[str, ...] = VISION_CORPORA, vision_skills: frozenset[str] | None = None,
) -> list[PackedStep]:
    """All packed steps of one stage, computed up front (so a batch is a pure function of the step)."""
    plan = token_plan(schedule, steps, cfg.tokens_per_step)
    text = doc_stream(world, TEXT_CORPORA, tok, counts_fn, seed, tag=f"{tag}-text")
    vision = (doc_stream(world, vision_corpora, tok, counts_fn, seed, max_len=cfg.seq_len, skills=vision_skills,
                         tag=f"{tag}-vision") if plan[:, 0].any() else iter(()))
    packer = MixedPacker(text, vision, plan, cfg.rows, cfg.seq_len, tok.media_pad_id, tok.media_begin_id,
                         tok.media_end_id)
    return list(packer)


def pack_vision_only(docs, steps: int, rows: int, seq_len: int, pad_id: int, media_pad_id: int) -> list[PackedStep]:
    """ViT-stage batches: whole image-text documents first-fit into rows, the tail of a row padded (no loss).

    (The mixed packer fills gaps with the text stream; with a frozen language model those tokens would teach
    nothing, so the caption stage pads instead.)"""
    out: list[PackedStep] = []
    pending = None
    for _ in range(steps):
        ids = np.full((rows, seq_len), pad_id, np.int64)
        dids = np.zeros((rows, seq_len), np.int64)
        media: list = []
        used = 0
        for r in range(rows):
            col, d = 0, 0
            while True:
                doc = pending if pending is not None else next(docs)
                pending = None
                n = len(doc.ids)
                if col + n > seq_len:
                    pending = doc
                    break
                ids[r, col : col + n] = doc.ids
                dids[r, col : col + n] = d
                media += doc.media
                col, d, used = col + n, d + 1, used + n
            dids[r, col:] = d  # the padding is its own document
        starts = np.concatenate([np.ones((rows, 1), bool), dids[:, 1:] != dids[:, :-1]], axis=1)
        idx = np.broadcast_to(np.arange(seq_len), (rows, seq_len))
        pos = idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
        labels = np.full((rows, seq_len), IGNORE, np.int64)
        nxt = ids[:, 1:]
        ok = (dids[:, 1:] == dids[:, :-1]) & (nxt != media_pad_id) & (nxt != pad_id)
        labels[:, :-1] = np.where(ok, nxt, IGNORE)
        out.append(PackedStep(ids, labels, dids, pos, media, used, 0))
    return out


def batch_from(step: PackedStep) -> dict[str, Any]:
    return {
        "input_ids": torch.from_numpy(step.input_ids),
        "labels": torch.from_numpy(step.labels),
        "doc_ids": torch.from_numpy(step.doc_ids),
        "position_ids": torch.from_numpy(step.position_ids),
        "media": step.media,
        "vision_tokens": step.vision_tokens,
        "text_tokens": step.text_tokens,
    }


def lm_loss(model: K25ForConditionalGeneration, batch: dict[str, Any]):
    """Next-token loss on text targets (labels already shifted) + the MoE sequence-level aux loss."""
    loss = model.loss(batch["input_ids"], batch["labels"], media=batch["media"] or None,
                      doc_ids=batch["doc_ids"], position_ids=batch["position_ids"])
    aux = model.moe_aux_loss().to(loss.device)
    return loss + aux, {"lm_loss": loss.detach(), "vision_tokens": float(batch["vision_tokens"])}


# ----------------------------------------------------------------------------------------------- stages
def joint_root(cfg: FusionConfig, runs_dir: Path | None) -> Path:
    return (Path(runs_dir) if runs_dir is not None else ROOT / "runs" / "fusion") / cfg.scale / cfg.key()


def stage_dir(cfg: FusionConfig, stage: str, runs_dir: Path | None) -> Path:
    root = (Path(runs_dir) if runs_dir is not None else ROOT / "runs" / "fusion") / cfg.scale / "stages"
    return root / f"{stage}-{cfg.stage_key(stage)}"


def train_config(cfg: FusionConfig, steps: int, lr: float, seed: int, out_dir: Path, progress: bool = False,
                 **kw: Any) -> TrainConfig:
    """The Trainer config every stage uses (4 checkpoints per stage, the last kept; a progress bar if asked)."""
    return TrainConfig(steps=steps, lr=lr, warmup_steps=min(cfg.warmup, steps), optimizer=cfg.optimizer,
                       seed=seed, out_dir=str(out_dir), ckpt_every=max(steps // 4, 1), keep_last=1,
                       log_every=max(steps // 20, 1), progress=progress, **kw)


def latest_checkpoint_of(out_dir: Path) -> Path | None:
    return latest_checkpoint(out_dir / "checkpoints") if (out_dir / "checkpoints").is_dir() else None


def finished(out_dir: Path, steps: int) -> bool:
    ck = latest_checkpoint(out_dir / "checkpoints") if (out_dir / "checkpoints").is_dir() else None
    return ck is not None and json.loads((ck / "state.json").read_text()).get("step") == steps


def model_config(cfg: FusionConfig, text_only: bool = False):
    """The preset with the config's vision-tower options (stage A, text only, never builds ``grid_pos``)."""
    mc = preset(cfg.preset)
    if cfg.grid_pos and not text_only:
        mc = dataclasses.replace(mc, vision=dataclasses.replace(mc.vision, grid_pos_emb=True))
    return mc


def new_model(cfg: FusionConfig, seed: int, text_only: bool = False) -> K25ForConditionalGeneration:
    torch.manual_seed(seed)
    return K25ForConditionalGeneration(model_config(cfg, text_only))


def load_text_stage(model: K25ForConditionalGeneration, cfg: FusionConfig, a: str | Path) -> None:
    """Load stage A's checkpoint into ``model``; with ``grid_pos`` the grid tables (absent from A) keep their
    fresh initialisation, and nothing else may be missing."""
    if not cfg.grid_pos:
        load_weights(model, a)
        return
    plain = K25ForConditionalGeneration(model_config(cfg, text_only=True))
    load_weights(plain, a)
    res = model.load_state_dict(plain.state_dict(), strict=False)
    missing = [k for k in res.missing_keys if ".grid_pos." not in k]
    if missing or res.unexpected_keys:
        raise ValueError(f"stage A checkpoint {str(a)!r} does not fit: missing {missing}, "
                         f"unexpected {res.unexpected_keys}")


def _check_data_version(cfg: FusionConfig) -> None:
    if cfg.data_version != VISION_DOCS_VERSION:
        raise ValueError(f"cfg.data_version is {cfg.data_version}, but this checkout's world makes version "
                         f"{VISION_DOCS_VERSION} documents: results of other versions can be read, not recomputed")


def stage_text(cfg: FusionConfig, runs_dir: Path | None = None, callbacks=(), progress: bool = False,
               nproc: int = 1) -> Path:
    """Stage A: text-only pre-training from scratch; returns its out_dir (the checkpoint others start from)."""
    out = stage_dir(cfg, "A", runs_dir)
    if finished(out, cfg.text_steps):
        return out
    _launch(cfg, "A", out, callbacks, progress, nproc)
    return out


def vit_docs(cfg: FusionConfig, world: World, tok: Tokenizer, counts_fn, steps: int, tag: str):
    corpora, skills = (VIT_QA_CORPORA, VIT_QA_SKILLS) if cfg.vit_qa else (VIT_CORPORA, VIT_SKILLS)
    docs = doc_stream(world, corpora, tok, counts_fn, cfg.stage_seed, max_len=cfg.seq_len, skills=skills, tag=tag)
    return pack_vision_only(docs, steps, cfg.rows, cfg.seq_len, tok.pad_id, tok.media_pad_id)


def _launch(cfg: FusionConfig, stage: str, out: Path, callbacks=(), progress: bool = False, nproc: int = 1,
            **kw: Any) -> JobRun:
    """Train one stage through the entry point (:func:`stage_job`; ``python -m k25mini.train --job ...``)."""
    args = {"cfg": cfg.to_dict(), "stage": stage, "out": str(out), "progress": progress,
            **{k: v for k, v in kw.items() if v is not None}}
    return launch(TrainJob(STAGE_JOB, args), nproc=nproc, callbacks=callbacks)


def stage_job(cfg: dict[str, Any], stage: str, out: str, init: str | None = None, tower: str | None = None,
              schedule: str | None = None, seed: int | None = None, progress: bool = False) -> JobParts:
    """The job builder of every stage (what ``python -m k25mini.train --job`` calls with JSON arguments).

    ``stage``: ``"A"`` (from scratch), ``"B"`` (``vit_align="frozen"``: ViT + projector through the frozen LM of
    ``init``), ``"B1"`` (everything from ``init`` = A), ``"B2"`` (A's LM from ``init``, the vision tower from
    ``tower`` = B1, only the projector trains) or ``"joint"`` (everything from ``init`` = B, ``schedule`` and
    ``seed``; eval_fn = the text-suite tracking; ``info["tokens"]`` = the vision/text token totals)."""
    c = config_from_dict(FusionConfig, cfg)
    if stage not in ("A", "B", "B1", "B2", "joint"):
        raise ValueError(f"stage must be one of A, B, B1, B2, joint, got {stage!r}")
    if stage != "A" and init is None:
        raise ValueError(f"stage {stage!r} needs init (the checkpoint it starts from)")
    if stage == "B2" and tower is None:
        raise ValueError("stage 'B2' needs tower (the B1 checkpoint its vision tower comes from)")
    world, tok = World(c.world_seed, scale=c.scale), Tokenizer()
    if stage == "A":
        model = new_model(c, c.stage_seed, text_only=True)
        steps = packed_steps(c, FusionSchedule("text", 0.0, 0.0), c.text_steps, c.stage_seed, "A", world, tok,
                             model.media_token_counts)
        return _parts(model, steps, train_config(c, c.text_steps, c.text_lr, c.stage_seed, Path(out), progress))
    if stage in ("B", "B1"):
        _check_data_version(c)
        model = new_model(c, c.stage_seed)
        load_text_stage(model, c, init)
        if stage == "B":
            model.language_model.requires_grad_(False)
        steps = vit_docs(c, world, tok, model.media_token_counts, c.vit_steps, "B")
        return _parts(model, steps, train_config(c, len(steps), c.vit_lr, c.stage_seed, Path(out), progress))
    if stage == "B2":
        _check_data_version(c)
        model = new_model(c, c.stage_seed)
        load_text_stage(model, c, init)
        aligned = new_model(c, c.stage_seed)
        load_weights(aligned, tower)
        model.vision_tower.load_state_dict(aligned.vision_tower.state_dict())  # A's language model, B1's ViT
        model.requires_grad_(False)
        model.vision_tower.projector.requires_grad_(True)  # B2: only the projector moves
        lr = c.vit_lr if c.proj_lr is None else c.proj_lr
        steps = vit_docs(c, world, tok, model.media_token_counts, c.proj_steps, "B2")
        return _parts(model, steps, train_config(c, len(steps), lr, c.stage_seed, Path(out), progress))
    if schedule not in SCHEDULES or not isinstance(seed, int):
        raise ValueError(f"stage 'joint' needs schedule (one of {sorted(SCHEDULES)}) and an int seed, got "
                         f"{schedule!r}, {seed!r}")
    _check_data_version(c)
    model = new_model(c, seed)
    load_weights(model, init)
    sch = joint_schedule(c, schedule)
    steps = packed_steps(c, sch, c.joint_steps, seed, f"joint-{seed}", world, tok, model.media_token_counts)
    totals = {"vision": int(sum(s.vision_tokens for s in steps)), "text": int(sum(s.text_tokens for s in steps))}
    tc = train_config(c, c.joint_steps, c.joint_lr, seed, Path(out), progress, eval_every=c.track_every,
                      eval_at_end=True)
    return _parts(model, steps, tc, eval_fn=tracker(c, tok, eval_sets(c)), info={"tokens": totals})


def _parts(model, steps: list[PackedStep], tc: TrainConfig, **kw: Any) -> JobParts:
    return JobParts(model, lm_loss, lambda i: batch_from(steps[i]), tc, **kw,
                    shard_fn=media_shard_fn(model))


def joint_schedule(cfg: FusionConfig, schedule: str) -> FusionSchedule:
    """The schedule a joint run uses: ``schedule``'s injection point at ``cfg.vision_share``."""
    sch = SCHEDULES[schedule]
    if not math.isclose(sch.vision_share, cfg.vision_share):  # same injection point, another total vision share
        sch = schedule_for_share(sch.inject_at, cfg.vision_share, schedule)
    return sch


def tracker(cfg: FusionConfig, tok: Tokenizer, evals: dict[str, list]):
    """The joint stage's eval function: teacher-forced exact match on every text suite."""
    track = {s: evals[s] for s in TEXT_SUITES}

    def track_fn(m) -> dict[str, float]:
        return {f"tf_{s}": teacher_forced_exact(m, tok, items) for s, items in track.items()}

    return track_fn


def b_steps(cfg: FusionConfig) -> int:
    """Steps of the checkpoint that finishes stage B."""
    return cfg.vit_steps if cfg.vit_align == "frozen" else cfg.proj_steps


def stage_vit(cfg: FusionConfig, runs_dir: Path | None = None, callbacks=(), progress: bool = False,
              nproc: int = 1) -> Path:
    """Stage B from A: the ViT trained with a caption loss (see the module doc for the two ``vit_align`` forms);
    returns the out_dir of a checkpoint holding A's language model and the trained vision tower + projector."""
    _check_data_version(cfg)
    a = stage_text(cfg, runs_dir, progress=progress, nproc=nproc)
    out = stage_dir(cfg, "B", runs_dir)
    if finished(out, b_steps(cfg)):
        return out
    if cfg.vit_align == "frozen":
        _launch(cfg, "B", out, callbacks, progress, nproc, init=str(a))
        return out
    b1 = stage_dir(cfg, "B1", runs_dir)
    if not finished(b1, cfg.vit_steps):  # B1: everything trains; the language model copy is the caption decoder
        _launch(cfg, "B1", b1, callbacks, progress, nproc, init=str(a))
    _launch(cfg, "B2", out, callbacks, progress, nproc, init=str(a), tower=str(b1))
    return out


def run_joint(cfg: FusionConfig, schedule: str, seed: int, runs_dir: Path | None = None,
              results_dir: Path | None = None, callbacks=(), force: bool = False, log=None,
              progress: bool = False, nproc: int = 1) -> dict[str, Any]:
    """One joint pre-training run from the ViT-stage checkpoint; returns (and saves) its result dict.

    A saved result with the same config key is reused unless ``force``; when the code that made it differs
    from the current code, the returned dict carries ``"stale"`` (the reason) and ``log`` (if given) says so."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    res_file = run_file(cfg, schedule, seed, results_dir)
    old = None if force else read_json(res_file)
    if old is not None and old.get("config_key") == cfg.key():
        flag = staleness(old, PACKAGE)
        if flag:
            old["stale"] = flag
            if log is not None:
                log(f"reusing {res_file} - {flag}")
        return old
    _check_data_version(cfg)
    t0 = time.perf_counter()
    b = stage_vit(cfg, runs_dir, progress=progress, nproc=nproc)
    out = joint_root(cfg, runs_dir) / "joint" / f"{schedule}-s{seed}"
    tok = Tokenizer()
    sch = joint_schedule(cfg, schedule)
    evals = eval_sets(cfg)
    track_fn = tracker(cfg, tok, evals)
    step0 = None
    if latest_checkpoint_of(out) is None:  # step 0 of the text-suite curve: B's weights, where the run starts
        m0 = new_model(cfg, seed)
        load_weights(m0, b)
        step0 = {"step": 0, **track_fn(m0)}
        del m0
    t_train = time.perf_counter()
    run = _launch(cfg, "joint", out, callbacks, progress, nproc, init=str(b), schedule=schedule, seed=seed)
    resumed = run.resumed
    totals = run.info["tokens"]
    model = run.model
    if model is None:  # trained in other processes: its final checkpoint
        model = new_model(cfg, seed)
        load_weights(model, out)
    t_eval = time.perf_counter()
    final, by_skill = score_suites(model, tok, evals, cfg.max_new_tokens)
    t_end = time.perf_counter()
    curve = [r for r in run.history if r.get("split") == "eval"]
    if step0 is None:  # resumed: step 0 was logged (if at all) by the first attempt; recompute from B's weights
        m0 = new_model(cfg, seed)
        load_weights(m0, b)
        step0 = {"step": 0, **track_fn(m0)}
    curve = [step0] + [{"step": r["step"], **{k: r[k] for k in r if k.startswith("tf_")}} for r in curve]
    loss = [[r["step"], r["lm_loss"]] for r in run.history if r.get("split") == "train" and "lm_loss" in r]
    result = {
        "schedule": schedule, "inject_at": sch.inject_at, "vision_ratio": sch.vision_ratio, "seed": seed,
        "scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(), "tokens": totals,
        "final": final, "final_by_skill": by_skill, "text_curve": curve, "loss_curve": loss, "resumed": resumed,
        "timing_s": {"total": t_end - t0, "train": t_eval - t_train, "final_eval": t_end - t_eval},
        "torch_threads": torch.get_num_threads(),
    }
    return write_result(res_file, result, experiment="fusion_ablation/run", package=PACKAGE, wall_s=t_end - t0)


def _run_joint_process(cfg: FusionConfig, schedule: str, seed: int, runs_dir: Path | None, results_dir: Path | None,
                       force: bool, threads: int, nproc: int = 1) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_joint(cfg, schedule, seed, runs_dir, results_dir, force=force, nproc=nproc)


def run_ablation(cfg: FusionConfig | None = None, runs: list[tuple[str, int]] | None = None,
                 runs_dir: Path | None = None, results_dir: Path | None = None, force: bool = False,
                 callbacks=(), workers: int = 1, log=None, nproc: int = 1) -> dict[str, Any]:
    """Every (schedule, seed) of ``cfg`` (or just ``runs``); finished runs with the same config are reused.
    ``nproc`` > 1: every training stage runs data parallel under ``torchrun`` with that many processes.

    ``workers`` > 1: stages A and B are trained first (once), then the joint runs go to that many spawned
    processes with one thread each (runs are independent and deterministic: the results equal one process's;
    ``callbacks`` are not sent to the workers)."""
    cfg = config_for() if cfg is None else cfg
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    todo = runs if runs is not None else [(s, k) for s in cfg.schedules for k in cfg.seeds]
    if workers == 1 or len(todo) < 2:
        for sch, seed in todo:
            r = run_joint(cfg, sch, seed, runs_dir, results_dir, callbacks=callbacks, force=force, nproc=nproc)
            if log is not None:
                log(sch, seed, r)
    else:
        stage_vit(cfg, runs_dir, nproc=nproc)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as ex:
            futures = [(sch, seed, ex.submit(_run_joint_process, cfg, sch, seed, runs_dir, results_dir, force, 1,
                                                nproc))
                       for sch, seed in todo]
            for sch, seed, f in futures:
                r = f.result()
                if log is not None:
                    log(sch, seed, r)
    return aggregate(cfg, results_dir)


def run_probe(name: str, schedule: str, seed: int, results_dir: Path | None = None, runs_dir: Path | None = None,
              **overrides: Any) -> dict[str, Any]:
    """An investigation run outside the ablation grid (e.g. a larger budget): the cpu-scale config with
    ``overrides``, saved as ``results/fusion_ablation/probes/<name>.json`` (reused when its config matches)."""
    cfg = config_for(**overrides)
    out = resolve_results_dir(results_dir) / "fusion_ablation" / "probes" / f"{name}.json"
    old = read_json(out)
    if old is not None:
        if old.get("config_key") == cfg.key() and old.get("seed") == seed and old.get("schedule") == schedule:
            return old
    with tempfile.TemporaryDirectory() as scratch:  # keep the probe's copy only
        r = run_joint(cfg, schedule, seed, runs_dir, Path(scratch), force=True)
    r["probe"], r["overrides"] = name, overrides
    return write_result(out, r, experiment="fusion_ablation/probe", package=PACKAGE,
                        wall_s=r["timing_s"]["total"])


