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
  :class:`~k25mini.pretrain.schedule.FusionSchedule` (early / mid / late, identical totals).

A and B are trained once per scale and shared by every schedule and seed; a run's seed changes the data
order of the joint stage. Every stage goes through :class:`k25mini.train.Trainer` (checkpoints, JSONL
metrics, bit-exact resume), and its packed batches are computed up front so ``batch_at(i)`` is a pure
function of the step. Each finished run writes ``results/fusion_ablation/<scale>/<schedule>-s<seed>.json``;
:func:`aggregate` joins them into ``results/fusion_ablation.json`` (``_<scale>`` suffix off the cpu scale).

    python -m k25mini.pretrain.fusion                 # the whole ablation at K25_SCALE
    python -m k25mini.pretrain.fusion --runs early:0 mid:1 --threads 1
    python -m k25mini.pretrain.fusion --probe NAME early 0 --set proj_steps=1000 proj_lr=0.01
    python -m k25mini.pretrain.fusion --diagnose 1500     # does each model read the image? (loss gap)
    python -m k25mini.pretrain.fusion --skills 60         # VisReason + text twins skill by skill, answer prior
    python -m k25mini.pretrain.fusion --fields 100        # which caption facts are read off the pixels
    python -m k25mini.pretrain.fusion --vision-probe 1600 # which facts are linearly in the vision tokens
    python -m k25mini.pretrain.fusion --vision-budget 25 50 100 400  # vision-only training: how much data is enough
    python -m k25mini.pretrain.fusion --blind             # blind baseline: best constant per kind of question
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.diagnose import image_reliance, mismatched_pairs
from k25mini.pretrain.docs import doc_stream
from k25mini.pretrain.evaluate import evaluate_items, teacher_forced_exact
from k25mini.pretrain.packing import IGNORE, MixedPacker, PackedStep
from k25mini.pretrain.schedule import SCHEDULES, FusionSchedule, schedule_for_share, token_plan
from k25mini.scale import current_scale, pick, validate_scale
from k25mini.train import TrainConfig, Trainer, latest_checkpoint, load_weights
from k25mini.world import (
    SUITES,
    TEXT_CORPORA,
    VISION_CORPORA,
    World,
    chance_baseline,
    chance_by_skill,
    corpus_item,
    make_eval_suite,
)

__all__ = [
    "FusionConfig",
    "config_for",
    "TEXT_SUITES",
    "VIT_CORPORA",
    "VIT_SKILLS",
    "packed_steps",
    "pack_vision_only",
    "batch_from",
    "lm_loss",
    "stage_text",
    "stage_vit",
    "run_joint",
    "run_ablation",
    "aggregate",
    "results_path",
    "load_results",
    "run_probe",
    "diagnose",
    "diagnostics_path",
    "perception_check",
    "skill_check",
    "vision_check",
    "vision_budget_check",
    "blind_check",
    "BUDGET_MIXES",
    "speedrun_stage",
]

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUITES: tuple[str, ...] = ("TextKnow", "TextReason", "Code")
# the ViT stage's "caption loss": caption-style rows only (what is in the picture), never Q&A
VIT_CORPORA: tuple[str, ...] = ("captions", "ocr", "charts", "video")
VIT_SKILLS = frozenset({"caption_entity", "caption_scene", "caption_ground", "chart_caption", "video_caption", "ocr"})
#: version of the world's vision documents (bump when a corpus changes: it invalidates stage B and every joint run)
#: 1: captions without positions; 2: + grounding captions (objects with cell and box) in stage B and the joint mix
DATA_VERSION = 2
VIT_ALIGN: tuple[str, ...] = ("decoder", "frozen")


@dataclass(frozen=True)
class FusionConfig:
    """Everything that shapes the ablation's numbers (its hash decides whether saved results are reused)."""

    scale: str
    preset: str = "nano"
    rows: int = 4  # sequences per step
    seq_len: int = 256
    text_steps: int = 1000  # stage A
    vit_steps: int = 300  # stage B
    joint_steps: int = 400  # the fixed joint budget = joint_steps * rows * seq_len tokens
    vision_share: float = 0.10  # total vision share of the joint budget (Table 1: 10 %)
    optimizer: str = "muonclip"
    text_lr: float = 4e-3
    vit_lr: float = 3e-3
    joint_lr: float = 2e-3
    warmup: int = 20
    track_every: int = 25  # text-suite curve during joint training
    eval_items: int = 64  # per suite, final eval (greedy generation)
    max_new_tokens: int = 28
    world_seed: int = 0
    stage_seed: int = 0  # seed of the shared stages A and B
    seeds: tuple[int, ...] = (0, 1, 2)
    schedules: tuple[str, ...] = ("early", "mid", "late")
    data_version: int = DATA_VERSION
    vit_align: str = "decoder"  # "decoder": B1 (ViT + projector via a trainable LM copy) + B2; "frozen": one step
    proj_steps: int = 300  # B2: projector-only steps into the frozen language model (vit_align="decoder")
    proj_lr: float | None = None  # B2's peak learning rate (None: vit_lr)

    def __post_init__(self) -> None:
        if self.vit_align not in VIT_ALIGN:
            raise ValueError(f"vit_align must be one of {VIT_ALIGN}, got {self.vit_align!r}")
        for name in ("text_steps", "vit_steps", "joint_steps", "proj_steps"):
            v = getattr(self, name)
            low = 1 if name != "proj_steps" or self.vit_align == "decoder" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.proj_lr is not None and (isinstance(self.proj_lr, bool) or not isinstance(self.proj_lr, (int, float))
                                         or not self.proj_lr > 0):
            raise ValueError(f"proj_lr must be None (use vit_lr) or a float > 0, got {self.proj_lr!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.rows * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"], d["schedules"] = list(self.seeds), list(self.schedules)
        return d

    def stage_key(self, stage: str) -> str:
        """Hash of the fields stage ``"A"`` (text), ``"B1"`` (ViT via the caption decoder) or ``"B"`` (the finished
        ViT stage) depends on (each includes the earlier ones'), so changing only the joint stage reuses the
        shared checkpoints."""
        d = self.to_dict()
        fields = ["scale", "preset", "rows", "seq_len", "text_steps", "optimizer", "text_lr", "warmup", "world_seed",
                  "stage_seed"]
        if stage in ("B", "B1"):
            fields += ["vit_steps", "vit_lr"] + (["data_version"] if d["data_version"] != 1 else [])
            if self.vit_align != "frozen":  # (frozen keys stay those of results made before the two-step stage)
                fields += ["vit_align"] + (["proj_steps"] if stage == "B" else [])
                if stage == "B" and self.proj_lr is not None:  # (keys made before the field existed stay valid)
                    fields.append("proj_lr")
        elif stage != "A":
            raise ValueError(f"stage must be 'A', 'B1' or 'B', got {stage!r}")
        return hashlib.sha256(json.dumps({k: d[k] for k in fields}, sort_keys=True).encode()).hexdigest()[:12]

    def key(self) -> str:
        """Hash of everything except the seed list (a run is reusable when key and seed match)."""
        d = self.to_dict()
        d.pop("seeds")
        if d["data_version"] == 1:  # keys of results made before the field existed stay valid
            d.pop("data_version")
        if d["proj_lr"] is None:
            d.pop("proj_lr")
        if d["vit_align"] == "frozen":
            d.pop("vit_align"), d.pop("proj_steps"), d.pop("proj_lr", None)
        d["schedule_defs"] = {s: [SCHEDULES[s].inject_at, SCHEDULES[s].vision_ratio] for s in self.schedules}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def config_for(scale: str | None = None, **overrides: Any) -> FusionConfig:
    """The ablation's config at ``scale`` (default: ``K25_SCALE``)."""
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    base = dict(
        rows=pick(smoke=2, cpu=4, gpu=16, scale=sc),
        seq_len=pick(smoke=160, cpu=256, gpu=512, scale=sc),
        text_steps=pick(smoke=4, cpu=3000, gpu=6000, scale=sc),
        vit_steps=pick(smoke=3, cpu=1500, gpu=1500, scale=sc),
        proj_steps=pick(smoke=2, cpu=300, gpu=300, scale=sc),
        joint_steps=pick(smoke=10, cpu=1000, gpu=4000, scale=sc),
        warmup=pick(smoke=1, cpu=20, gpu=100, scale=sc),
        track_every=pick(smoke=5, cpu=50, gpu=200, scale=sc),
        eval_items=pick(smoke=4, cpu=128, gpu=256, scale=sc),
        max_new_tokens=pick(smoke=4, cpu=28, gpu=28, scale=sc),
    )
    base.update(overrides)
    return FusionConfig(scale=sc, **base)


# ----------------------------------------------------------------------------------------------- data
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
def _dirs(cfg: FusionConfig, runs_dir: Path | None) -> Path:
    return (Path(runs_dir) if runs_dir is not None else ROOT / "runs" / "fusion") / cfg.scale / cfg.key()


def _stage_dir(cfg: FusionConfig, stage: str, runs_dir: Path | None) -> Path:
    root = (Path(runs_dir) if runs_dir is not None else ROOT / "runs" / "fusion") / cfg.scale / "stages"
    return root / f"{stage}-{cfg.stage_key(stage)}"


def _train_config(cfg: FusionConfig, steps: int, lr: float, seed: int, out_dir: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, warmup_steps=min(cfg.warmup, steps), optimizer=cfg.optimizer,
                       seed=seed, out_dir=str(out_dir), ckpt_every=max(steps // 4, 1), keep_last=1,
                       log_every=max(steps // 20, 1), progress=False, **kw)


def _finished(out_dir: Path, steps: int) -> bool:
    ck = latest_checkpoint(out_dir / "checkpoints") if (out_dir / "checkpoints").is_dir() else None
    return ck is not None and json.loads((ck / "state.json").read_text()).get("step") == steps


def _new_model(cfg: FusionConfig, seed: int) -> K25ForConditionalGeneration:
    torch.manual_seed(seed)
    return K25ForConditionalGeneration(preset(cfg.preset))


def _check_data_version(cfg: FusionConfig) -> None:
    if cfg.data_version != DATA_VERSION:
        raise ValueError(f"cfg.data_version is {cfg.data_version}, but this checkout's world makes version "
                         f"{DATA_VERSION} documents: results of other versions can be read, not recomputed")


def stage_text(cfg: FusionConfig, runs_dir: Path | None = None, callbacks=()) -> Path:
    """Stage A: text-only pre-training from scratch; returns its out_dir (the checkpoint others start from)."""
    out = _stage_dir(cfg, "A", runs_dir)
    if _finished(out, cfg.text_steps):
        return out
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    model = _new_model(cfg, cfg.stage_seed)
    text_only = FusionSchedule("text", 0.0, 0.0)
    steps = packed_steps(cfg, text_only, cfg.text_steps, cfg.stage_seed, "A", world, tok, model.media_token_counts)
    tr = Trainer(model, lm_loss, lambda i: batch_from(steps[i]),
                 _train_config(cfg, cfg.text_steps, cfg.text_lr, cfg.stage_seed, out), callbacks=callbacks)
    tr.resume()
    tr.fit()
    return out


def _vit_docs(cfg: FusionConfig, world: World, tok: Tokenizer, counts_fn, steps: int, tag: str):
    docs = doc_stream(world, VIT_CORPORA, tok, counts_fn, cfg.stage_seed, max_len=cfg.seq_len, skills=VIT_SKILLS,
                      tag=tag)
    return pack_vision_only(docs, steps, cfg.rows, cfg.seq_len, tok.pad_id, tok.media_pad_id)


def _fit(model, steps: list[PackedStep], cfg: FusionConfig, lr: float, out: Path, callbacks) -> None:
    tr = Trainer(model, lm_loss, lambda i: batch_from(steps[i]),
                 _train_config(cfg, len(steps), lr, cfg.stage_seed, out), callbacks=callbacks)
    tr.resume()
    tr.fit()


def _b_steps(cfg: FusionConfig) -> int:
    """Steps of the checkpoint that finishes stage B."""
    return cfg.vit_steps if cfg.vit_align == "frozen" else cfg.proj_steps


def stage_vit(cfg: FusionConfig, runs_dir: Path | None = None, callbacks=()) -> Path:
    """Stage B from A: the ViT trained with a caption loss (see the module doc for the two ``vit_align`` forms);
    returns the out_dir of a checkpoint holding A's language model and the trained vision tower + projector."""
    _check_data_version(cfg)
    a = stage_text(cfg, runs_dir)
    out = _stage_dir(cfg, "B", runs_dir)
    if _finished(out, _b_steps(cfg)):
        return out
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    model = _new_model(cfg, cfg.stage_seed)
    load_weights(model, a)
    if cfg.vit_align == "frozen":
        model.language_model.requires_grad_(False)
        _fit(model, _vit_docs(cfg, world, tok, model.media_token_counts, cfg.vit_steps, "B"), cfg, cfg.vit_lr, out,
             callbacks)
        return out
    b1 = _stage_dir(cfg, "B1", runs_dir)
    if not _finished(b1, cfg.vit_steps):  # B1: everything trains; the language model copy is the caption decoder
        _fit(model, _vit_docs(cfg, world, tok, model.media_token_counts, cfg.vit_steps, "B"), cfg, cfg.vit_lr, b1,
             callbacks)
        model = _new_model(cfg, cfg.stage_seed)
        load_weights(model, a)
    aligned = _new_model(cfg, cfg.stage_seed)
    load_weights(aligned, b1)
    model.vision_tower.load_state_dict(aligned.vision_tower.state_dict())  # A's language model, B1's ViT
    model.requires_grad_(False)
    model.vision_tower.projector.requires_grad_(True)  # B2: only the projector moves
    lr = cfg.vit_lr if cfg.proj_lr is None else cfg.proj_lr
    _fit(model, _vit_docs(cfg, world, tok, model.media_token_counts, cfg.proj_steps, "B2"), cfg, lr, out,
         callbacks)
    return out


def _eval_sets(cfg: FusionConfig) -> dict[str, list]:
    world = World(cfg.world_seed, scale=cfg.scale)
    return {s: make_eval_suite(world, s, cfg.eval_items) for s in SUITES}


def run_joint(cfg: FusionConfig, schedule: str, seed: int, runs_dir: Path | None = None,
              results_dir: Path | None = None, callbacks=(), force: bool = False) -> dict[str, Any]:
    """One joint pre-training run from the ViT-stage checkpoint; returns (and saves) its result dict."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    res_file = _run_file(cfg, schedule, seed, results_dir)
    if not force and res_file.is_file():
        old = json.loads(res_file.read_text())
        if old.get("config_key") == cfg.key():
            return old
    _check_data_version(cfg)
    t0 = time.perf_counter()
    b = stage_vit(cfg, runs_dir)
    out = _dirs(cfg, runs_dir) / "joint" / f"{schedule}-s{seed}"
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    model = _new_model(cfg, seed)
    load_weights(model, b)
    sch = SCHEDULES[schedule]
    if not math.isclose(sch.vision_share, cfg.vision_share):  # same injection point, another total vision share
        sch = schedule_for_share(sch.inject_at, cfg.vision_share, schedule)
    steps = packed_steps(cfg, sch, cfg.joint_steps, seed, f"joint-{seed}", world, tok, model.media_token_counts)
    totals = {"vision": int(sum(s.vision_tokens for s in steps)), "text": int(sum(s.text_tokens for s in steps))}
    evals = _eval_sets(cfg)
    track = {s: evals[s] for s in TEXT_SUITES}

    def track_fn(m) -> dict[str, float]:
        return {f"tf_{s}": teacher_forced_exact(m, tok, items) for s, items in track.items()}

    tr = Trainer(model, lm_loss, lambda i: batch_from(steps[i]),
                 _train_config(cfg, cfg.joint_steps, cfg.joint_lr, seed, out, eval_every=cfg.track_every,
                               eval_at_end=True), eval_fn=track_fn, callbacks=callbacks)
    resumed = tr.resume()
    step0 = None if resumed else {"step": 0, **track_fn(model)}
    t_train = time.perf_counter()
    tr.fit()
    t_eval = time.perf_counter()
    scored = {s: evaluate_items(model, tok, items, cfg.max_new_tokens) for s, items in evals.items()}
    final = {s: m for s, (m, _) in scored.items()}
    by_skill: dict[str, dict[str, float]] = {}
    for s, (_, per_item) in scored.items():
        groups: dict[str, list[float]] = {}
        for it, v in zip(evals[s], per_item):
            groups.setdefault(it.meta["skill"], []).append(v)
        by_skill[s] = {k: sum(v) / len(v) for k, v in groups.items()}
    t_end = time.perf_counter()
    curve = [r for r in tr.history if r.get("split") == "eval"]
    if step0 is None:  # resumed: step 0 was logged (if at all) by the first attempt; recompute from B's weights
        m0 = _new_model(cfg, seed)
        load_weights(m0, b)
        step0 = {"step": 0, **track_fn(m0)}
    curve = [step0] + [{"step": r["step"], **{k: r[k] for k in r if k.startswith("tf_")}} for r in curve]
    loss = [[r["step"], r["lm_loss"]] for r in tr.history if r.get("split") == "train" and "lm_loss" in r]
    result = {
        "schedule": schedule, "inject_at": sch.inject_at, "vision_ratio": sch.vision_ratio, "seed": seed,
        "scale": cfg.scale, "config_key": cfg.key(), "config": cfg.to_dict(), "tokens": totals,
        "final": final, "final_by_skill": by_skill, "text_curve": curve, "loss_curve": loss, "resumed": resumed,
        "timing_s": {"total": t_end - t0, "train": t_eval - t_train, "final_eval": t_end - t_eval},
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(res_file, result)
    return result


# ----------------------------------------------------------------------------------------------- results
def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: side-by-side writers never share it
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _results_dir(results_dir: Path | None) -> Path:
    return Path(results_dir) if results_dir is not None else ROOT / "results"


def _run_file(cfg: FusionConfig, schedule: str, seed: int, results_dir: Path | None) -> Path:
    return _results_dir(results_dir) / "fusion_ablation" / cfg.scale / f"{schedule}-s{seed}.json"


def results_path(scale: str, results_dir: Path | None = None) -> Path:
    """``results/fusion_ablation.json`` at cpu scale (the committed one), ``..._<scale>.json`` otherwise."""
    name = "fusion_ablation.json" if scale == "cpu" else f"fusion_ablation_{scale}.json"
    return _results_dir(results_dir) / name


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(cfg: FusionConfig, results_dir: Path | None = None) -> dict[str, Any]:
    """Join the finished runs of ``cfg`` into one JSON (mean and sample std over seeds) and write it."""
    runs = []
    for sch in cfg.schedules:
        for seed in cfg.seeds:
            f = _run_file(cfg, sch, seed, results_dir)
            if f.is_file():
                r = json.loads(f.read_text())
                if r.get("config_key") == cfg.key():
                    runs.append(r)
    table: dict[str, Any] = {}
    for sch in cfg.schedules:
        rs = [r for r in runs if r["schedule"] == sch]
        if not rs:
            continue
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "label": SCHEDULES[sch].label}
        for s in SUITES:
            m, sd = _mean_std([r["final"][s] for r in rs])
            row[s] = {"mean": m, "std": sd, "values": [r["final"][s] for r in rs]}
        if all("final_by_skill" in r for r in rs):  # per-skill scores (runs made before they were kept lack them)
            row["by_skill"] = {
                s: {k: dict(zip(("mean", "std"), _mean_std([r["final_by_skill"][s][k] for r in rs])))
                    for k in rs[0]["final_by_skill"][s]}
                for s in SUITES}
        row["tokens"] = rs[0]["tokens"]
        row["tokens_identical_across_seeds"] = all(r["tokens"] == rs[0]["tokens"] for r in rs)
        row["run_seconds"] = [r["timing_s"]["total"] for r in rs]
        table[sch] = row
    out = {
        "experiment": "fusion_ablation", "scale": cfg.scale, "config": cfg.to_dict(), "config_key": cfg.key(),
        "complete": len(runs) == len(cfg.schedules) * len(cfg.seeds), "n_runs": len(runs),
        "chance": {s: chance_baseline(s, cfg.world_seed, cfg.scale, cfg.eval_items) for s in SUITES},
        "chance_by_skill": {s: chance_by_skill(s, cfg.world_seed, cfg.scale, cfg.eval_items) for s in SUITES},
        "table": table,
        "runs": [{k: r[k] for k in ("schedule", "seed", "final", "tokens", "text_curve", "loss_curve", "timing_s",
                                    "torch_threads")} for r in runs],
    }
    _write_json(results_path(cfg.scale, results_dir), out)
    return out


def load_results(scale: str | None = None, results_dir: Path | None = None) -> dict[str, Any] | None:
    """The aggregated results at ``scale`` if they exist (None otherwise)."""
    p = results_path(current_scale() if scale is None else validate_scale(scale, "scale"), results_dir)
    return json.loads(p.read_text()) if p.is_file() else None


def _run_joint_process(cfg: FusionConfig, schedule: str, seed: int, runs_dir: Path | None, results_dir: Path | None,
                       force: bool, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_joint(cfg, schedule, seed, runs_dir, results_dir, force=force)


def run_ablation(cfg: FusionConfig | None = None, runs: list[tuple[str, int]] | None = None,
                 runs_dir: Path | None = None, results_dir: Path | None = None, force: bool = False,
                 callbacks=(), workers: int = 1, log=None) -> dict[str, Any]:
    """Every (schedule, seed) of ``cfg`` (or just ``runs``); finished runs with the same config are reused.

    ``workers`` > 1: stages A and B are trained first (once), then the joint runs go to that many spawned
    processes with one thread each (runs are independent and deterministic: the results equal one process's;
    ``callbacks`` are not sent to the workers)."""
    cfg = config_for() if cfg is None else cfg
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    todo = runs if runs is not None else [(s, k) for s in cfg.schedules for k in cfg.seeds]
    if workers == 1 or len(todo) < 2:
        for sch, seed in todo:
            r = run_joint(cfg, sch, seed, runs_dir, results_dir, callbacks=callbacks, force=force)
            if log is not None:
                log(sch, seed, r)
    else:
        stage_vit(cfg, runs_dir)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as ex:
            futures = [(sch, seed, ex.submit(_run_joint_process, cfg, sch, seed, runs_dir, results_dir, force, 1))
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
    out = _results_dir(results_dir) / "fusion_ablation" / "probes" / f"{name}.json"
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("config_key") == cfg.key() and old.get("seed") == seed and old.get("schedule") == schedule:
            return old
    with tempfile.TemporaryDirectory() as scratch:  # keep the probe's copy only
        r = run_joint(cfg, schedule, seed, runs_dir, Path(scratch), force=True)
    r["probe"], r["overrides"] = name, overrides
    _write_json(out, r)
    return r


VISION_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s not in TEXT_SUITES)
#: caption documents for the ViT-stage check come from corpus rows far beyond any stage's training rows
_DIAG_ROW0 = 10**6


def diagnostics_path(scale: str, results_dir: Path | None = None) -> Path:
    return _results_dir(results_dir) / "fusion_ablation" / f"diagnostics_{scale}.json"


def _reliance(model, tok: Tokenizer, items: list) -> dict[str, Any] | None:
    """image_reliance, or None when no two items' media have the same size (nothing to swap)."""
    return image_reliance(model, tok, items) if mismatched_pairs(items, model.media_token_counts) else None


def diagnose(cfg: FusionConfig, vit_steps: tuple[int, ...] = (), runs_dir: Path | None = None,
             results_dir: Path | None = None, n_items: int = 48) -> dict[str, Any]:
    """Does the model read the image (:func:`k25mini.pretrain.diagnose.image_reliance`)?

    * ``stage_B[<label>]``: the ViT-stage checkpoint of ``cfg`` with each listed ``vit_steps`` (when trained),
      on ``n_items`` unseen caption documents per ViT corpus; the label is the steps, plus the ``vit_align`` and
      data version off the first design; with ``vit_align="decoder"`` also B1 read by its own decoder;
    * ``joint[<schedule>-s<seed>]``: every finished joint run of ``cfg``, on the held-out vision suites.
    An entry is None when no two of its documents have same-sized media.
    Merged into ``results/fusion_ablation/diagnostics_<scale>.json`` (written atomically) and returned."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    path = diagnostics_path(cfg.scale, results_dir)
    out: dict[str, Any] = {}  # this call's rows, merged into the file at the end
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    for v in vit_steps:
        c = dataclasses.replace(cfg, vit_steps=int(v))
        d = _stage_dir(c, "B", runs_dir)
        if not _finished(d, _b_steps(c)):
            continue
        label = str(v)
        if (c.vit_align, c.data_version) != ("frozen", 1):
            label += f" ({c.vit_align}, data v{c.data_version})"
        todo = [(label, d, "B")]
        if c.vit_align == "decoder":  # B1 read by its own trainable decoder (the thrown-away LM copy)
            todo.insert(0, (f"{label} B1, own decoder", _stage_dir(c, "B1", runs_dir), "B1"))
        for name, ckpt, stage in todo:
            model = _new_model(c, c.stage_seed)
            load_weights(model, ckpt)
            row = {}
            for corpus in VIT_CORPORA:
                items = [corpus_item(world, corpus, _DIAG_ROW0 + i) for i in range(n_items)]
                items = [it for it in items if it.meta.get("skill") in VIT_SKILLS]
                row[corpus] = _reliance(model, tok, items)
            out.setdefault("stage_B", {})[name] = {"stage_key": c.stage_key(stage), **row}
    evals = _eval_sets(cfg)
    for sch in cfg.schedules:
        for seed in cfg.seeds:
            d = _dirs(cfg, runs_dir) / "joint" / f"{sch}-s{seed}"
            if not _finished(d, cfg.joint_steps):
                continue
            model = _new_model(cfg, seed)
            load_weights(model, d)
            out.setdefault("joint", {})[f"{sch}-s{seed}"] = {
                "config_key": cfg.key(), **{s: _reliance(model, tok, evals[s]) for s in VISION_SUITES}}
    merged = json.loads(path.read_text()) if path.is_file() else {}  # read late: other checks may have written
    for part, rows in out.items():
        merged.setdefault(part, {}).update(rows)
    _write_json(path, merged)
    return merged


def _check_targets(cfg: FusionConfig, runs: list[tuple[str, int]] | None, extra: dict[str, Path] | None,
                   runs_dir: Path | None, stages: tuple[tuple[str, str], ...] = ()) -> dict[str, tuple[Path, dict]]:
    """name -> (checkpoint folder, key fields) for a check: the finished shared ``stages`` ((stage, label) pairs;
    B1 only with the two-step ViT stage), the finished joint runs of ``cfg`` (``runs``: (schedule, seed) pairs,
    default all) and ``extra`` checkpoints (name -> folder, e.g. a probe's)."""
    steps = {"A": cfg.text_steps, "B1": cfg.vit_steps, "B": _b_steps(cfg)}
    todo: dict[str, tuple[Path, dict]] = {}
    for stage, label in stages:
        d = _stage_dir(cfg, stage, runs_dir)
        if (stage != "B1" or cfg.vit_align == "decoder") and _finished(d, steps[stage]):
            todo[label] = (d, {"stage_key": cfg.stage_key(stage)})
    for sch, seed in runs if runs is not None else [(a, b) for a in cfg.schedules for b in cfg.seeds]:
        d = _dirs(cfg, runs_dir) / "joint" / f"{sch}-s{seed}"
        if _finished(d, cfg.joint_steps):
            todo[f"{sch}-s{seed}"] = (d, {"config_key": cfg.key()})
    for name, d in (extra or {}).items():
        todo[name] = (Path(d), {"config_key": None})
    return todo


def _check_each(cfg: FusionConfig, todo: dict[str, tuple[Path, dict]], where: tuple[str, ...], measure,
                results_dir: Path | None) -> dict[str, Any]:
    """Load each checkpoint of ``todo``, ``measure(model) -> row``, and merge the row into the diagnostics JSON
    under ``where + (name,)`` after each model (re-read first: several checks may run side by side, and a long
    check keeps what it has measured). Returns the file's content."""
    path = diagnostics_path(cfg.scale, results_dir)
    out = json.loads(path.read_text()) if path.is_file() else {}
    for name, (d, key) in todo.items():
        model = _new_model(cfg, 0)
        load_weights(model, d)
        row = measure(model)
        out = json.loads(path.read_text()) if path.is_file() else {}
        node = out
        for k in where:
            node = node.setdefault(k, {})
        node[name] = {**key, "checkpoint": str(d), **row}
        _write_json(path, out)
    return out


def skill_check(cfg: FusionConfig, n_per_skill: int, runs: list[tuple[str, int]] | None = None,
                extra: dict[str, Path] | None = None, suite: str = "VisReason", runs_dir: Path | None = None,
                results_dir: Path | None = None) -> dict[str, Any]:
    """Per-skill greedy scores with chance (:func:`k25mini.pretrain.diagnose.skill_scores`, ``n_per_skill`` items
    per skill) of the finished joint runs of ``cfg`` (``runs``: (schedule, seed) pairs, default all) and of
    ``extra`` checkpoints (name -> run folder, e.g. a probe's). Merged into the diagnostics JSON under
    ``skills[suite][name]`` and returned."""
    from k25mini.pretrain.diagnose import skill_scores

    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    return _check_each(cfg, _check_targets(cfg, runs, extra, runs_dir), ("skills", suite),
                       lambda m: skill_scores(m, tok, world, suite, n_per_skill, cfg.max_new_tokens), results_dir)


def perception_check(cfg: FusionConfig, n_items: int, runs: list[tuple[str, int]] | None = None,
                     extra: dict[str, Path] | None = None, runs_dir: Path | None = None,
                     results_dir: Path | None = None) -> dict[str, Any]:
    """What each model reads off the pixels, fact by fact (:func:`k25mini.pretrain.diagnose.caption_fields`:
    teacher-forced field accuracy with the own image and with another one) on unseen caption rows (``n_items``
    rows per ViT corpus): the ViT stage (B1 read by its own caption decoder, and B), the finished joint runs of
    ``cfg`` (``runs``: (schedule, seed) pairs, default all) and ``extra`` checkpoints (name -> folder). Merged into
    the diagnostics JSON under ``fields[name]`` and returned."""
    from k25mini.pretrain.diagnose import CAPTION_FIELDS, caption_fields

    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    items = [corpus_item(world, c, _DIAG_ROW0 + i) for c in VIT_CORPORA for i in range(n_items)]
    by_skill: dict[str, list] = {}
    for it in items:
        if it.meta.get("skill") in CAPTION_FIELDS:
            by_skill.setdefault(it.meta["skill"], []).append(it)

    def measure(model) -> dict[str, Any]:
        return {"n_rows": n_items, **{sk: caption_fields(model, tok, its) for sk, its in sorted(by_skill.items())
                                      if mismatched_pairs(its, model.media_token_counts)}}

    todo = _check_targets(cfg, runs, extra, runs_dir, (("B1", "B1 (own decoder)"), ("B", "B")))
    return _check_each(cfg, todo, ("fields",), measure, results_dir)


def vision_check(cfg: FusionConfig, n: int, runs: list[tuple[str, int]] | None = None,
                 extra: dict[str, Path] | None = None, runs_dir: Path | None = None,
                 results_dir: Path | None = None) -> dict[str, Any]:
    """Linear probes of the vision tokens (:func:`k25mini.pretrain.diagnose.vision_probe`, ``n`` single-object
    scenes) for the untrained tower (A's checkpoint: the ViT there is still its initialisation), B1, B, the finished
    joint runs of ``cfg`` (``runs``: (schedule, seed) pairs, default all) and ``extra`` checkpoints. Merged into the
    diagnostics JSON under ``vision_probe[name]`` and returned."""
    from k25mini.pretrain.diagnose import vision_probe

    todo = _check_targets(cfg, runs, extra, runs_dir, (("A", "untrained (A)"), ("B1", "B1"), ("B", "B")))
    return _check_each(cfg, todo, ("vision_probe",), lambda m: {"n": n, **vision_probe(m, n, seed=cfg.world_seed)},
                       results_dir)


def blind_check(cfg: FusionConfig, results_dir: Path | None = None) -> dict[str, Any]:
    """Each suite's blind baseline on ``cfg``'s eval items (the best constant answer per kind of question,
    :func:`k25mini.pretrain.diagnose.blind_baseline`), merged into the diagnostics JSON under ``best_constant``
    with the config key; returns the file's content."""
    from k25mini.pretrain.diagnose import blind_baseline

    path = diagnostics_path(cfg.scale, results_dir)
    row = {"config_key": cfg.key(), **{s: blind_baseline(items) for s, items in _eval_sets(cfg).items()}}
    cur = json.loads(path.read_text()) if path.is_file() else {}
    cur["best_constant"] = row
    _write_json(path, cur)
    return cur


#: vision-only training mixes of :func:`vision_budget_check`: the joint stage's whole vision mix, and the corpora
#: that train each vision suite alone (VisKnow, VisReason, OCR)
BUDGET_MIXES: dict[str, tuple[str, ...]] = {"all": VISION_CORPORA, "know": ("vis_knowledge", "interleaved"),
                                            "reason": ("vis_reasoning", "charts", "video"), "ocr": ("ocr",)}


def vision_budget_check(cfg: FusionConfig, steps: tuple[int, ...], mixes: tuple[str, ...] = ("all", "reason"),
                        seeds: tuple[int, ...] = (0,), runs_dir: Path | None = None,
                        results_dir: Path | None = None) -> dict[str, Any]:
    """How much vision data does the model need? From the ViT-stage checkpoint (B) of ``cfg``, train on image-text
    documents only (no text stream: rows packed whole and padded, as the ViT stage) for each of ``steps`` with
    each of ``mixes`` (:data:`BUDGET_MIXES`) and data ``seeds``, at the joint stage's learning rate, then score the
    three held-out vision suites as the ablation does (greedy, per skill too). ``tokens`` is the number of
    document tokens trained on (padding excluded), to set beside a joint run's vision budget. Each row is merged
    into the diagnostics JSON under ``vision_budget["<mix>-<steps>-s<seed>"]`` as soon as it is measured, with
    the reference row ``"B1 (own decoder)"`` (two-step ViT stage: B1's ViT read by the caption decoder it was
    trained with, on the ViT stage's tokens), and ``best_constant[suite]``: the blind baseline of each suite (the best
    constant answer per kind of question, :func:`k25mini.pretrain.diagnose.blind_baseline`). Returns the file's
    content. The trained weights are not kept."""
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"steps must be a non-empty sequence of ints >= 1, got {steps!r}")
    if not mixes or any(m not in BUDGET_MIXES for m in mixes):
        raise ValueError(f"mixes must name mixes from {sorted(BUDGET_MIXES)}, got {mixes!r}")
    if not seeds or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints >= 0, got {seeds!r}")
    b = stage_vit(cfg, runs_dir)
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    evals = _eval_sets(cfg)
    path = diagnostics_path(cfg.scale, results_dir)
    out = json.loads(path.read_text()) if path.is_file() else {}

    def score(model) -> dict[str, Any]:
        row: dict[str, Any] = {"final": {}, "final_by_skill": {}}
        for suite in VISION_SUITES:
            mean, per = evaluate_items(model, tok, evals[suite], cfg.max_new_tokens)
            groups: dict[str, list[float]] = {}
            for it, v in zip(evals[suite], per):
                groups.setdefault(it.meta["skill"], []).append(v)
            row["final"][suite] = mean
            row["final_by_skill"][suite] = {k: sum(v) / len(v) for k, v in groups.items()}
        return row

    def save(name: str, row: dict[str, Any]) -> dict[str, Any]:
        cur = json.loads(path.read_text()) if path.is_file() else {}  # re-read: other checks may write
        cur.setdefault("vision_budget", {})[name] = row
        _write_json(path, cur)
        return cur

    blind_check(cfg, results_dir)
    old_b1 = out.get("vision_budget", {}).get("B1 (own decoder)", {})
    # reference: B1 read by its own caption decoder (trained on ViT-stage rows); scored once per B1 checkpoint
    if cfg.vit_align == "decoder" and old_b1.get("stage_key") != cfg.stage_key("B1"):
        t0 = time.perf_counter()
        model = _new_model(cfg, cfg.stage_seed)
        load_weights(model, _stage_dir(cfg, "B1", runs_dir))
        packed = _vit_docs(cfg, world, tok, model.media_token_counts, cfg.vit_steps, "B")
        out = save("B1 (own decoder)", {"mix": "B1", "corpora": list(VIT_CORPORA), "steps": cfg.vit_steps,
                                        "seed": cfg.stage_seed, "stage_key": cfg.stage_key("B1"), "lr": cfg.vit_lr,
                                        "tokens": int(sum(s.vision_tokens for s in packed)), **score(model),
                                        "timing_s": time.perf_counter() - t0})
    for mix in mixes:
        for seed in seeds:
            for n in steps:
                t0 = time.perf_counter()
                model = _new_model(cfg, seed)
                load_weights(model, b)
                docs = doc_stream(world, BUDGET_MIXES[mix], tok, model.media_token_counts, seed, max_len=cfg.seq_len,
                                  tag=f"budget-{mix}")
                packed = pack_vision_only(docs, n, cfg.rows, cfg.seq_len, tok.pad_id, tok.media_pad_id)
                with tempfile.TemporaryDirectory() as scratch:
                    tr = Trainer(model, lm_loss, lambda i, p=packed: batch_from(p[i]),
                                 _train_config(cfg, n, cfg.joint_lr, seed, Path(scratch)))
                    tr.fit()
                row: dict[str, Any] = {"mix": mix, "corpora": list(BUDGET_MIXES[mix]), "steps": n, "seed": seed,
                                       "stage_key": cfg.stage_key("B"), "lr": cfg.joint_lr,
                                       "tokens": int(sum(s.vision_tokens for s in packed)), **score(model)}
                row["timing_s"] = time.perf_counter() - t0
                out = save(f"{mix}-{n}-s{seed}", row)
    return out


def speedrun_stage() -> dict[str, str]:
    """``make speedrun`` stage: the fusion ablation at the current scale (reusing matching results)."""
    cfg = config_for()
    t0 = time.perf_counter()
    res = run_ablation(cfg)
    lines = {"runs": f"{res['n_runs']} ({len(cfg.schedules)} schedules x seeds {list(cfg.seeds)}), "
                     f"{time.perf_counter() - t0:.0f} s this call"}
    for sch, row in res["table"].items():
        lines[sch] = "  ".join(f"{s} {100 * row[s]['mean']:.1f}±{100 * row[s]['std']:.1f}" for s in SUITES)
    lines["chance"] = "  ".join(f"{s} {100 * v:.1f}" for s, v in res["chance"].items())
    return lines


def _parse_override(cfg: FusionConfig, kv: str) -> tuple[str, Any]:
    """``"name=value"`` -> (name, value typed like the config field; ``None`` fields take ``none`` or a float)."""
    if "=" not in kv:
        raise ValueError(f"--set expects name=value, got {kv!r}")
    k, v = kv.split("=", 1)
    if k not in {f.name for f in dataclasses.fields(cfg)} or k == "scale":
        raise ValueError(f"--set: no config field {k!r} (fields: {', '.join(cfg.to_dict())})")
    cur = getattr(cfg, k)
    if cur is None or v.lower() == "none":
        return k, None if v.lower() == "none" else float(v)
    if isinstance(cur, tuple):
        return k, tuple(type(cur[0])(x) if cur else x for x in v.split(","))
    if isinstance(cur, bool):
        return k, v.lower() in ("1", "true", "yes")
    return k, type(cur)(v)


def _check_args(spec: list[str], runs: list[str] | None) -> tuple[int, list[tuple[str, int]] | None, dict[str, Path]]:
    """A check's CLI arguments: ``N [NAME=RUN_DIR ...]`` and ``--runs schedule:seed ...`` -> (N, runs, extra)."""
    extra = {k: Path(v) for k, v in (kv.split("=", 1) for kv in spec[1:])}
    sel = [(r.split(":")[0], int(r.split(":")[1])) for r in runs] if runs else None
    return int(spec[0]), sel, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", help="schedule:seed pairs (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1, help="joint runs in this many processes (one thread each)")
    ap.add_argument("--force", action="store_true", help="recompute runs even when results match")
    ap.add_argument("--stages-only", action="store_true", help="only train the shared stages A and B")
    ap.add_argument("--probe", nargs=3, metavar=("NAME", "SCHEDULE", "SEED"), help="an investigation run")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for --probe, e.g. joint_steps=800")
    ap.add_argument("--diagnose", nargs="*", type=int, metavar="VIT_STEPS",
                    help="image-reliance check of the ViT stages with these vit_steps and of the finished joint runs")
    ap.add_argument("--skills", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="per-skill VisReason and TextReason (the text twins) scores with N items per skill for "
                         "the finished joint runs (select with --runs) and any NAME=RUN_DIR checkpoints")
    ap.add_argument("--fields", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="perception check: caption facts (colour, shape, count, cell, box, value, motion) read off "
                         "the image, on N unseen rows per ViT corpus, for the ViT stage, the finished joint runs "
                         "(select with --runs) and any NAME=RUN_DIR checkpoints")
    ap.add_argument("--vision-probe", nargs="+", metavar="N_OR_NAME=RUN_DIR",
                    help="linear probes of the vision tokens for an object's cell, shape and colour on N single-object "
                         "scenes: untrained tower, ViT stage, finished joint runs (--runs), NAME=RUN_DIR checkpoints")
    ap.add_argument("--vision-budget", nargs="+", type=int, metavar="STEPS",
                    help="vision-only training from the ViT stage for these step counts, scored on the vision suites "
                         "(how much vision data the model needs; see --budget-mixes, --budget-seeds)")
    ap.add_argument("--budget-mixes", nargs="+", default=["all", "reason"], choices=sorted(BUDGET_MIXES))
    ap.add_argument("--budget-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--blind", action="store_true",
                    help="each suite's blind baseline (best constant answer per kind of question) into the diagnostics")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = config_for()
    print(f"fusion ablation at {cfg.scale}: key {cfg.key()}", flush=True)
    t0 = time.perf_counter()
    if a.stages_only:
        stage_vit(cfg)
        print(f"stages A+B done in {time.perf_counter() - t0:.0f} s", flush=True)
        return 0
    if a.diagnose is not None:
        d = diagnose(cfg, tuple(a.diagnose))
        for name, row in {**{f"B vit_steps={k}": v for k, v in d.get("stage_B", {}).items()},
                          **d.get("joint", {})}.items():
            print(name + ": " + "  ".join(f"{k} {r['matched']:.2f}/{r['mismatched']:.2f}" for k, r in row.items()
                                          if isinstance(r, dict)) + "  (nats/token, own/other image)", flush=True)
        print(f"wrote {diagnostics_path(cfg.scale)}", flush=True)
        return 0
    if a.blind:
        d = blind_check(cfg)["best_constant"]
        print("blind baseline: " + "  ".join(f"{s} {100 * d[s]:.1f}" for s in SUITES), flush=True)
        return 0
    if a.vision_budget:
        d = vision_budget_check(cfg, tuple(a.vision_budget), tuple(a.budget_mixes), tuple(a.budget_seeds))
        for name, row in d["vision_budget"].items():
            print(f"{name} ({row['tokens']} tokens): "
                  + "  ".join(f"{s} {100 * v:.1f}" for s, v in row["final"].items()), flush=True)
        return 0
    if a.vision_probe:
        n, sel, extra = _check_args(a.vision_probe, a.runs)
        d = vision_check(cfg, n, sel, extra)
        for name, row in d["vision_probe"].items():
            print(name + ": " + "  ".join(f"{t} {r['flat']:.2f}/{r['pooled']:.2f}" for t, r in row.items()
                                          if isinstance(r, dict)) + "  (flat/pooled accuracy)", flush=True)
        return 0
    if a.fields:
        n, sel, extra = _check_args(a.fields, a.runs)
        d = perception_check(cfg, n, sel, extra)
        for name, row in d["fields"].items():
            print(name + ": " + "  ".join(f"{sk}.{k} {v['acc']:.2f}/{v['blind']:.2f}" for sk, r in row.items()
                                          if isinstance(r, dict) for k, v in r.items()) + "  (own/other image)",
                  flush=True)
        return 0
    if a.skills:
        n, sel, extra = _check_args(a.skills, a.runs)
        for suite in ("VisReason", "TextReason"):  # the visual skills and their text twins
            d = skill_check(cfg, n, sel, extra, suite=suite)
        for suite, rows in d["skills"].items():
            for name, row in rows.items():
                print(f"{suite} {name}: " + "  ".join(f"{k} {v['score']:.2f}/{v['chance']:.2f}"
                                                      for k, v in row.items() if isinstance(v, dict))
                      + "  (score/chance)", flush=True)
        return 0
    if a.probe:
        over = dict(_parse_override(cfg, kv) for kv in a.set)
        r = run_probe(a.probe[0], a.probe[1], int(a.probe[2]), **over)
        print(f"probe {a.probe[0]}: " + " ".join(f"{s}={v:.3f}" for s, v in r["final"].items())
              + f"  ({r['timing_s']['total']:.0f} s)", flush=True)
        return 0
    todo = [(r.split(":")[0], int(r.split(":")[1])) for r in a.runs] if a.runs else None

    def show(sch: str, seed: int, r: dict[str, Any]) -> None:
        print(f"{sch} seed {seed}: " + " ".join(f"{s}={v:.3f}" for s, v in r["final"].items())
              + f"  ({r['timing_s']['total']:.0f} s)", flush=True)

    run_ablation(cfg, todo, force=a.force, workers=a.workers, log=show)  # writes the aggregated results too
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
