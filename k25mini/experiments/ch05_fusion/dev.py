"""Chapter 05's development suites: choose designs without looking at the held-out items (DESIGN §8).

    python -m k25mini.experiments.ch05_fusion.dev NAME SCHEDULE SEED [--set k=v ...] [--items N] [--threads T]

A *dev probe* trains one joint run of the cpu-scale config with the ``--set`` overrides (reusing the ablation's
finished checkpoint when the config is the ablation's own) and scores it on **dev items**: fresh items from the
*train* side of the world's held-out split, drawn under their own tag (``ch05-dev``), so that no held-out item is
scored or tracked: the run trains without the text-suite tracking (which reads held-out text items), and a dev
probe's only numbers are dev numbers. Results: ``results/fusion_ablation/dev/<NAME>.json``.

What the dev items measure, suite by suite (measured on world seed 0, cpu scale, 400 draws per skill):

* VisReason (count, compare, locate, box, chart, motion) and the Code skills: every draw a distinct scene or
  program, so dev items are new to the model in all but name: a fair proxy for the held-out suite.
* OCR and TextReason: the train side's pool is smaller (about 250 distinct strings in 400 draws), so dev items
  repeat each other and likely some training items; read their dev numbers as an upper bound.
* VisKnow and TextKnow ask about train-split entity–image pairs and facts that the model was trained on: their
  dev items measure recall of trained pairs, not the held-out generalisation. They are not scored by default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import k25mini.experiments.ch05_fusion.stages as _stages
from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import FusionConfig, config_for
from k25mini.experiments.ch05_fusion.evaluation import score_suites
from k25mini.experiments.ch05_fusion.stages import (
    _check_data_version,
    _parts,
    finished,
    joint_root,
    joint_schedule,
    new_model,
    stage_job,
    stage_vit,
    train_config,
)
from k25mini.experiments.results import ROOT, read_json, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.pretrain.diagnose import blind_baseline
from k25mini.pretrain.docs import doc_stream, item_to_doc
from k25mini.pretrain.fusion_schedule import SCHEDULES, token_plan
from k25mini.pretrain.packing import Doc, MixedPacker
from k25mini.train import load_weights
from k25mini.train.job import JobParts, TrainJob, config_from_dict, launch
from k25mini.world import SUITE_SKILLS, SUITES, TEXT_CORPORA, VISION_CORPORA, World, corpus_item
from k25mini.world.rng import rng_for

__all__ = ["DEV_TAG", "DEV_SUITES", "PACKAGE", "dev_suite", "dev_sets", "check_mix", "mixed_vision_stream",
           "widened", "lm_width", "dev_joint_job", "dev_probe", "dev_path", "main"]

DEV_TAG = "ch05-dev"
#: scored by default: the suites whose dev items are new to the model (see the module doc)
DEV_SUITES: tuple[str, ...] = ("VisReason", "OCR", "TextReason", "Code")
PACKAGE = "k25mini.experiments.ch05_fusion.dev"
DEV_JOB = "k25mini.experiments.ch05_fusion.dev:dev_joint_job"


def dev_suite(world: World, suite: str, n: int) -> list:
    """``n`` dev items of ``suite``: train-side items under the ``ch05-dev`` tag, skills round-robin as in the
    held-out suite, unique by (content key, prompt) where the pool allows."""
    if suite not in SUITE_SKILLS:
        raise ValueError(f"suite must be one of {list(SUITE_SKILLS)}, got {suite!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    skills = SUITE_SKILLS[suite]
    items, seen = [], set()
    for i in range(int(n)):
        skill = skills[i % len(skills)]
        for attempt in range(20):
            item = world.sample(skill, "train", rng_for(world.seed, DEV_TAG, suite, i, attempt))
            ident = (item.meta["key"], item.prompt)
            if ident not in seen:
                break
        seen.add(ident)
        item.suite = suite
        item.meta["index"] = i
        items.append(item)
    return items


def dev_sets(cfg: FusionConfig, n: int, suites: tuple[str, ...] = DEV_SUITES) -> dict[str, list]:
    """suite -> ``n`` dev items (a pure function of the world seed)."""
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise ValueError(f"suites must be a non-empty subset of {list(SUITES)}, got {list(suites)!r}")
    world = World(cfg.world_seed, scale=cfg.scale)
    return {s: dev_suite(world, s, n) for s in suites}


def check_mix(mix: dict[str, float] | None) -> dict[str, float]:
    """A vision mix: vision corpus -> how many of its rows per epoch, relative to the ablation's (1.0 each);
    corpora not named keep 1.0. ``{}`` / None: the ablation's mix."""
    if mix is None:
        return {}
    if not isinstance(mix, dict):
        raise ValueError(f"vision_mix must be a dict of vision corpus -> weight, got {type(mix).__name__}")
    bad = [k for k in mix if k not in VISION_CORPORA]
    if bad:
        raise ValueError(f"vision_mix: {bad} are not vision corpora (they are {list(VISION_CORPORA)})")
    for k, v in mix.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 20:
            raise ValueError(f"vision_mix[{k!r}] must be a number in [0, 20], got {v!r}")
    if all(mix.get(c, 1.0) == 0 for c in VISION_CORPORA):
        raise ValueError("vision_mix leaves no vision corpus")
    return {k: float(v) for k, v in sorted(mix.items()) if float(v) != 1.0}


def mixed_vision_stream(world: World, mix: dict[str, float], tok, counts_fn, seed: int, max_len: int,
                        tag: str) -> Iterator[Doc]:
    """Endless vision documents in which corpus ``c`` contributes ``round(mix[c] * corpus_rows)`` distinct rows
    per epoch (rows past ``corpus_rows`` are fresh rows of the same train-side generators), reshuffled every
    epoch. Within the fixed vision share it changes *which* vision documents are read, not how many tokens."""
    mix = check_mix(mix)
    rows = world.sizes.corpus_rows
    pairs = [(c, r) for c in VISION_CORPORA for r in range(int(round(mix.get(c, 1.0) * rows)))]
    epoch = 0
    while True:
        for k in rng_for(seed, "fusion-docs-mix", tag, json.dumps(mix, sort_keys=True), epoch).permutation(len(pairs)):
            c, r = pairs[int(k)]
            doc = item_to_doc(corpus_item(world, c, r), tok, counts_fn)
            if len(doc.ids) <= max_len:
                yield doc
        epoch += 1


def widened(mc, width: int):
    """The model config ``mc`` with a language model ``width`` wide: the nano preset's shape scaled with the
    width (FFN 3×, experts' FFN 0.75×, one head per 16, q/kv latent ranks width/2; head dims, depth, experts and
    the vision tower unchanged). A dev-only probe of capacity, not a preset."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 16 or width % 16:
        raise ValueError(f"lm_width must be an int >= 16 and a multiple of 16, got {width!r}")
    t = dataclasses.replace(mc.text, hidden_size=width, intermediate_size=3 * width,
                            moe_intermediate_size=3 * width // 4, num_attention_heads=width // 16,
                            q_lora_rank=width // 2, kv_lora_rank=width // 2)
    return dataclasses.replace(mc, text=t)


@contextlib.contextmanager
def lm_width(width: int | None):
    """Within the block, every chapter-05 model of this process is built with a ``width``-wide language model
    (None: unchanged). Dev probes only: the stages' checkpoints then live in their own runs folder."""
    if width is None:
        yield
        return
    widened(_stages.preset("nano"), width)  # validate before patching
    original = _stages.model_config
    _stages.model_config = lambda cfg, text_only=False: widened(original(cfg, text_only), width)
    try:
        yield
    finally:
        _stages.model_config = original


def dev_joint_job(cfg: dict[str, Any], out: str, init: str, schedule: str, seed: int,
                  progress: bool = False, vision_mix: dict[str, float] | None = None) -> JobParts:
    """The joint stage's job (:func:`~k25mini.experiments.ch05_fusion.stages.stage_job`) without its text-suite
    tracking, which reads held-out items: the same data, model, optimizer and steps. With ``vision_mix`` the
    vision documents come from :func:`mixed_vision_stream` (same token plan, text stream and packer)."""
    mix = check_mix(vision_mix)
    if not mix:
        parts = stage_job(cfg, "joint", out, init=init, schedule=schedule, seed=seed, progress=progress)
        return dataclasses.replace(parts, eval_fn=None,
                                   config=dataclasses.replace(parts.config, eval_every=0, eval_at_end=False))
    c = config_from_dict(FusionConfig, cfg)
    _check_data_version(c)
    world, tok = World(c.world_seed, scale=c.scale), Tokenizer()
    model = new_model(c, seed)
    load_weights(model, init)
    tag = f"joint-{seed}"
    plan = token_plan(joint_schedule(c, schedule), c.joint_steps, c.tokens_per_step)
    text = doc_stream(world, TEXT_CORPORA, tok, model.media_token_counts, seed, tag=f"{tag}-text")
    vision = mixed_vision_stream(world, mix, tok, model.media_token_counts, seed, c.seq_len, f"{tag}-vision")
    steps = list(MixedPacker(text, vision, plan, c.rows, c.seq_len, tok.media_pad_id, tok.media_begin_id,
                             tok.media_end_id))
    totals = {"vision": int(sum(s.vision_tokens for s in steps)), "text": int(sum(s.text_tokens for s in steps))}
    tc = train_config(c, c.joint_steps, c.joint_lr, seed, Path(out), progress, eval_every=0, eval_at_end=False)
    return _parts(model, steps, tc, info={"tokens": totals})


def dev_path(name: str, results_dir: Path | None = None) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    return resolve_results_dir(results_dir) / "fusion_ablation" / "dev" / f"{name}.json"


def dev_probe(name: str, schedule: str, seed: int, n: int = 192, suites: tuple[str, ...] = DEV_SUITES,
              runs_dir: Path | None = None, results_dir: Path | None = None, force: bool = False,
              log=None, vision_mix: dict[str, float] | None = None, width: int | None = None,
              **overrides: Any) -> dict[str, Any]:
    """Train (or reuse) one joint run of ``config_for(**overrides)`` (vision documents per ``vision_mix``, see
    :func:`check_mix`; a ``width``-wide language model, see :func:`widened`, with every stage retrained in
    ``runs/fusion-lm<width>/``) and score it on ``n`` dev items per suite; saved as
    ``results/fusion_ablation/dev/<name>.json`` and reused while config, mix, width, run and items match."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    mix = check_mix(vision_mix)
    if width is not None:
        widened(_stages.preset("nano"), width)
        base = Path(runs_dir) if runs_dir is not None else ROOT / "runs" / "fusion"
        runs_dir = base.with_name(f"{base.name}-lm{width}")  # every stage retrained: never the nano checkpoints
    cfg = config_for(**overrides)
    _check_data_version(cfg)
    out_file = dev_path(name, results_dir)
    old = None if force else read_json(out_file)
    if old is not None and (old.get("config_key"), old.get("vision_mix"), old.get("lm_width"), old.get("schedule"),
                            old.get("seed"), old.get("dev_items"), old.get("suites")) == (
                                cfg.key(), mix, width, schedule, seed, n, list(suites)):
        return old
    with lm_width(width):
        return _dev_probe(name, cfg, mix, width, schedule, seed, n, suites, runs_dir, results_dir, log, overrides)


def _dev_probe(name, cfg, mix, width, schedule, seed, n, suites, runs_dir, results_dir, log, overrides):
    out_file = dev_path(name, results_dir)
    evals = dev_sets(cfg, n, suites)  # fail on bad suites before any training
    t0 = time.perf_counter()
    ablation_run = joint_root(cfg, runs_dir) / "joint" / f"{schedule}-s{seed}"
    trained, tokens = None, None
    if not mix and finished(ablation_run, cfg.joint_steps):  # the ablation's own run of this config: same training
        ckpt = ablation_run
    else:
        b = stage_vit(cfg, runs_dir)
        tail = f"-mix{hashlib.sha256(json.dumps(mix, sort_keys=True).encode()).hexdigest()[:8]}" if mix else ""
        ckpt = joint_root(cfg, runs_dir) / "dev" / f"{schedule}-s{seed}{tail}"
        if not finished(ckpt, cfg.joint_steps):
            t1 = time.perf_counter()
            run = launch(TrainJob(DEV_JOB, {"cfg": cfg.to_dict(), "out": str(ckpt), "init": str(b),
                                            "schedule": schedule, "seed": seed, "vision_mix": mix}))
            trained, tokens = time.perf_counter() - t1, run.info.get("tokens")
    if log is not None:
        log(f"scoring {ckpt} on {n} dev items per suite ({', '.join(suites)})")
    model = new_model(cfg, seed)
    load_weights(model, ckpt)
    t_eval = time.perf_counter()
    final, by_skill = score_suites(model, Tokenizer(), evals, cfg.max_new_tokens)
    t_end = time.perf_counter()
    result = {
        "probe": name, "schedule": schedule, "seed": seed, "overrides": overrides, "vision_mix": mix,
        "lm_width": width, "parameters": sum(p.numel() for p in model.parameters()),
        "config_key": cfg.key(),
        "config": cfg.to_dict(), "split": "train", "tag": DEV_TAG, "dev_items": n, "suites": list(suites),
        "final": final, "final_by_skill": by_skill,
        "blind": {s: blind_baseline(items) for s, items in evals.items()},
        "checkpoint": str(ckpt), "tokens": tokens, "reused_ablation_run": trained is None and ckpt == ablation_run,
        "timing_s": {"total": t_end - t0, "train": trained, "eval": t_end - t_eval},
        "torch_threads": torch.get_num_threads(),
    }
    return write_result(out_file, result, experiment="fusion_ablation/dev", package=PACKAGE, wall_s=t_end - t0)


def main(argv: list[str] | None = None) -> int:
    from k25mini.experiments.ch05_fusion.__main__ import parse_override

    ap = argparse.ArgumentParser(description="a chapter-05 dev probe: one joint run scored on train-side dev items")
    ap.add_argument("name")
    ap.add_argument("schedule", choices=sorted(SCHEDULES))
    ap.add_argument("seed", type=int)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. joint_steps=4000 grid_pos=true")
    ap.add_argument("--items", type=int, default=192, help="dev items per suite (default 192)")
    ap.add_argument("--suites", nargs="+", default=list(DEV_SUITES), choices=list(SUITES))
    ap.add_argument("--mix", nargs="*", default=[], metavar="CORPUS=W",
                    help="vision rows per epoch relative to the ablation's, e.g. vis_reasoning=3 ocr=0.5")
    ap.add_argument("--lm-width", type=int, default=None,
                    help="a wider (or narrower) language model, every stage retrained (nano: 64)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="recompute even when a saved result matches")
    a = ap.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    base = config_for()
    over = dict(parse_override(base, kv) for kv in a.set)
    mix = {}
    for kv in a.mix:
        k, sep, v = kv.partition("=")
        try:
            mix[k] = float(v) if sep else None
        except ValueError:
            mix[k] = v
        if not sep or not isinstance(mix[k], float):
            raise SystemExit(f"--mix expects CORPUS=NUMBER, got {kv!r}")
    r = dev_probe(a.name, a.schedule, a.seed, n=a.items, suites=tuple(a.suites), force=a.force,
                  log=lambda m: print(m, flush=True), vision_mix=mix or None, width=a.lm_width, **over)
    for s, v in r["final"].items():
        skills = ", ".join(f"{k} {100 * x:.1f}" for k, x in r["final_by_skill"][s].items())
        print(f"{s:>10}: {100 * v:5.1f} (blind {100 * r['blind'][s]:.1f})  [{skills}]")
    print(f"wrote {dev_path(a.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
